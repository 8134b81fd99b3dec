"""Readable tables of an aggregated closed-loop benchmark (see :func:`immunity.bench.harness.aggregate`)."""

from __future__ import annotations

from typing import Any

__all__ = ["render", "render_markdown"]


def _pct(rate: dict[str, Any]) -> str:
    return "  -  " if rate.get("rate") is None else f"{100 * rate['rate']:4.0f}%"


def _ci(rate: dict[str, Any]) -> str:
    if rate.get("rate") is None:
        return "-"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}]"


def _diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    return f"{100 * d['diff']:+.0f} [{100 * lo:+.0f},{100 * hi:+.0f}] p={d['mcnemar_p']:.2g}"


def render(summary: dict[str, Any], *, header: str = "") -> str:
    ps = [str(p) for p in summary["ps"]]
    lines: list[str] = []
    if header:
        lines += [header, ""]
    plist = " / ".join(f"p={p}" for p in ps)
    lines.append("Outcome rates per framework and fault type: without immunity -> with immunity at " + plist)
    lines.append("(S = success, X = silent corruption; recall = a failed verdict at/after the fault, "
                 "FA = a failed verdict on a fault-free run; both with immunity at p=" + ps[0] + ")")
    head = f"{'framework':<14}{'fault':<15}{'n':>4}  {'S off':>6} {'S on':<{7 * len(ps)}} {'X off':>6} " \
           f"{'X on':<{7 * len(ps)}} {'recall':>7} {'FA':>6}"
    lines.append(head)
    lines.append("-" * len(head))
    for c in summary["cells"]:
        on = [c["on"][p] for p in ps]
        ver = on[0]["verifier"]
        det = _pct(ver["false_alarm"]) if c["fault"] == "none" else ""
        rec = _pct(ver["recall"]) if c["fault"] != "none" else ""
        if c["fault"] == "all":
            rec, det = _pct(ver["recall"]), _pct(ver["false_alarm"])
        s_on = " ".join(f"{_pct(o['success']):>6}" for o in on)
        x_on = " ".join(f"{_pct(o['silent_corruption']):>6}" for o in on)
        lines.append(f"{c['framework']:<14}{c['fault']:<15}{c['off']['n']:>4}  {_pct(c['off']['success']):>6} "
                     f"{s_on:<{7 * len(ps)}} {_pct(c['off']['silent_corruption']):>6} {x_on:<{7 * len(ps)}} "
                     f"{rec:>7} {det:>6}")
        if c["fault"] == "all":
            lines.append("")
    lines.append("")
    lines.append("Pooled over fault types (with 95% intervals): success and silent corruption, paired "
                 "difference with - without [bootstrap 95%] and McNemar p")
    for c in summary["cells"]:
        if c["fault"] != "all":
            continue
        lines.append(f"{c['framework']}: n={c['off']['n']} per arm; without immunity: success "
                     f"{_ci(c['off']['success'])}, caught {_ci(c['off']['caught_failure'])}, silent "
                     f"{_ci(c['off']['silent_corruption'])}")
        for p in ps:
            o = c["on"][p]
            lines.append(f"    with, p={p}: success {_ci(o['success'])} (diff {_diff(o['paired_success'])}); "
                         f"silent {_ci(o['silent_corruption'])} (diff {_diff(o['paired_silent'])}); "
                         f"caught by {o['caught_by'] or '-'}")
        ver = c["on"][ps[0]]["verifier"]
        lines.append(f"    at p={ps[0]}: verifier recall on fired faults {_ci(ver['recall'])}, acted (hint/block/stop/recovery) "
                     f"{_ci(ver['acted'])}, false alarms on fault-free runs {_ci(ver['false_alarm'])}")
    return "\n".join(lines)


def _pct_ci(rate: dict[str, Any]) -> str:
    if rate.get("rate") is None:
        return "-"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"


def render_markdown(summary: dict[str, Any]) -> str:
    """The same results as Markdown tables (what ``docs/benchmark.md`` shows)."""
    ps = [str(p) for p in summary["ps"]]
    cells = summary["cells"]
    out: list[str] = []

    def table(title: str, key: str) -> None:
        out.append(f"**{title}** (n: trials per arm)")
        out.append("")
        out.append("| framework | fault | n | without | " + " | ".join(f"with, p={p}" for p in ps) + " |")
        out.append("|---|---|---|---|" + "---|" * len(ps))
        for c in cells:
            row = [c["framework"], c["fault"], str(c["off"]["n"]), _pct(c["off"][key]).strip()]
            row += [_pct(c["on"][p][key]).strip() for p in ps]
            if c["fault"] == "all":
                row = [f"**{x}**" for x in row]
            out.append("| " + " | ".join(row) + " |")
        out.append("")

    table("Task success", "success")
    table("Silent corruption", "silent_corruption")
    table("Caught failure", "caught_failure")
    p0 = ps[0]
    out.append(f"**Verifier, measured** (with immunity at p={p0}; recall: a failed verdict at or after the fault, "
               "on trials whose fault fired; acted: a hint, block, stop or recovery at or after the fault; false "
               "alarm: a failed verdict on a fault-free trial; 95% Wilson intervals)")
    out.append("")
    out.append("| framework | fault | recall | acted | false alarm |")
    out.append("|---|---|---|---|---|")
    for c in cells:
        v = c["on"][p0]["verifier"]
        if c["fault"] == "none":
            out.append(f"| {c['framework']} | none | - | - | {_pct_ci(v['false_alarm'])} |")
        else:
            fa = _pct_ci(v["false_alarm"]) if c["fault"] == "all" else ""
            out.append(f"| {c['framework']} | {c['fault']} | {_pct_ci(v['recall'])} | {_pct_ci(v['acted'])} | {fa} |")
    out.append("")
    out.append("**Pooled over fault types**: rate (95% Wilson interval); paired difference with - without in "
               "percentage points (95% paired bootstrap interval; exact McNemar p)")
    out.append("")
    out.append("| framework | arm | success | diff | silent corruption | diff | caught by |")
    out.append("|---|---|---|---|---|---|---|")
    for c in cells:
        if c["fault"] != "all":
            continue
        off = c["off"]
        out.append(f"| {c['framework']} | without (n={off['n']}) | {_pct_ci(off['success'])} | | "
                   f"{_pct_ci(off['silent_corruption'])} | | {_caught(off['caught_by'])} |")
        for p in ps:
            o = c["on"][p]
            out.append(f"| | with, p={p} | {_pct_ci(o['success'])} | {_diff(o['paired_success'])} | "
                       f"{_pct_ci(o['silent_corruption'])} | {_diff(o['paired_silent'])} | "
                       f"{_caught(o['caught_by'])} |")
    out.append("")
    return "\n".join(out)


def _caught(by: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by.items()) or "-"
