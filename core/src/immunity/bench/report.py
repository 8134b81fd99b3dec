"""Readable tables of an aggregated closed-loop benchmark (see :func:`immunity.bench.harness.aggregate`)."""

from __future__ import annotations

from typing import Any

__all__ = ["felt_and_bandit", "render", "render_markdown"]


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
    lines.append("")
    lines += felt_and_bandit(summary, markdown=False)
    return "\n".join(lines)


def felt_and_bandit(summary: dict[str, Any], *, markdown: bool) -> list[str]:
    """Prevented vs flagged per arm; the bandit against the rules alone (``selector="default"``), its learning curve,
    evolved against hand-written hints, and the evolved variants' fate."""
    out: list[str] = []
    felt = summary.get("felt") or {}
    if felt:
        out.append("**What users feel** (harmful faults: the fault fired and the run without immunity did not succeed; "
                   "prevented: the user got a correct result; flagged: a failed verdict in the store at or after the "
                   "fault while the user still got a wrong or no result; broken: trials that succeed without "
                   "immunity and fail with it; 95% Wilson intervals)" if markdown else
                   "What users feel, on harmful faults (fault fired, failed without immunity): prevented = correct "
                   "result, flagged = verdict recorded but wrong/no result; broken = ok without, failed with")
        out.append("")
        if markdown:
            out.append("| arm | framework | harmful | prevented | flagged only | unnoticed | broken |")
            out.append("|---|---|---|---|---|---|---|")
        for label in sorted(felt):
            for fw, r in felt[label].items():
                if markdown:
                    row = [label, fw, str(r["harmful"]), _pct_ci(r["prevented"]), _pct_ci(r["flagged"]),
                           _pct_ci(r["unnoticed"]), _pct_ci(r["broken"])]
                    if fw == "all":
                        row = [f"**{x}**" for x in row]
                    out.append("| " + " | ".join(row) + " |")
                else:
                    out.append(f"  {label:<18} {fw:<14} n={r['harmful']:<4} prevented {_ci(r['prevented']):<16} "
                               f"flagged {_ci(r['flagged']):<16} unnoticed {_ci(r['unnoticed']):<16} "
                               f"broken {_ci(r['broken'])}")
        out.append("")
    bandit = summary.get("bandit") or {}
    for p, b in bandit.items():
        d = b["paired_vs_default"]
        diff = f"{100 * d['diff']:+.1f} pts [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], McNemar p={d['mcnemar_p']:.2g}"
        out.append(f"{'**' if markdown else ''}Bandit selector at p={p}{'**' if markdown else ''}: success "
                   f"{_pct_ci(b['success'])} vs the rules alone (selector default) {_pct_ci(b['default_success'])} on the same "
                   f"{d['n_pairs']} trials; paired difference {diff} ({d['only_bandit']} trials only the bandit got "
                   f"right, {d['only_default']} only the default). Hints: {b['hints']}, of which evolved variants "
                   f"{b['evolved_hints']}. Trials whose hints were all evolved: success {_pct_ci(b['evolved_trials'])} "
                   f"(n={b['evolved_trials']['n']}); all hand-written: {_pct_ci(b['hand_written_trials'])} "
                   f"(n={b['hand_written_trials']['n']}).")
        out.append("")
        if markdown:
            out.append("| trials (run order) | bandit success | rules alone (selector default), same trials |")
            out.append("|---|---|---|")
        else:
            out.append("  learning curve (success per block of trials, in run order):")
        for blk in b["learning_curve"]:
            lo, hi = blk["trials"]
            if markdown:
                out.append(f"| {lo + 1}-{hi} | {_pct_ci(blk['bandit'])} | {_pct_ci(blk['default'])} |")
            else:
                out.append(f"    trials {lo + 1:>4}-{hi:<4} bandit {_ci(blk['bandit']):<16} default {_ci(blk['default'])}")
        out.append("")
    lineage = summary.get("lineage") or {}
    for p, rows in lineage.items():
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        out.append(f"Evolved variants in the bandit's store at p={p}: "
                   + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for r in rows:
            if r["status"] != "candidate" or r["rewarded"]:
                out.append(f"{'- ' if markdown else '  '}{r['variant']} ({r['error_class']}, {r['status']}): "
                           f"{r['successes']}/{r['rewarded']} rewarded pulls ok, posterior mean {r['mean']:.2f} vs "
                           f"parent {r['parent']} {r['parent_mean']:.2f}")
        out.append("")
    return out


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
    out += felt_and_bandit(summary, markdown=True)
    return "\n".join(out)


def _caught(by: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by.items()) or "-"
