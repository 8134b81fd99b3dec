"""What-if replay of stored runs, and step alignment of two runs.

:func:`what_if` re-feeds a stored run, step by step, through a fresh :class:`~immunity.runtime.Runtime`
with no store (nothing is written) and the verifiers, packs, selector and options you choose, and
reports per step what would have been flagged, injected, blocked or stopped, next to what was
flagged when the run really happened. Run it over many stored runs (:func:`try_on_runs`) to see
how often a new variant, ladder or pack would have acted, on failed and on successful runs, before
switching it on.

:func:`align` lines up the steps of two runs (same action type, tool and arguments) and shows
where they part.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from immunity.config import Config
from immunity.models import InterventionKind, Run, Step

__all__ = ["ReplayReport", "StepReport", "align", "imported_from_store", "try_on_runs", "what_if"]


def _short(value: Any, limit: int = 70) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_label(step: Step) -> str:
    if step.tool:
        return f"{step.action_type.value:<8} {step.tool}({_short(step.arguments, 50)})"
    return f"{step.action_type.value:<8} {_short(step.text, 60)!r}"


@dataclass
class StepReport:
    index: int
    label: str
    flagged: list[str] = field(default_factory=list)          # "class (plugin): message"
    interventions: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[str] = field(default_factory=list)
    blocked: bool = False
    stopped: bool = False
    reached: bool = True
    was_flagged: list[str] = field(default_factory=list)
    was_intervened: list[str] = field(default_factory=list)


@dataclass
class ReplayReport:
    run_id: str
    outcome: str
    task: str | None
    steps: list[StepReport]
    stop_step: int | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(1 for s in self.steps if s.flagged)

    @property
    def intervened(self) -> int:
        return sum(1 for s in self.steps for iv in s.interventions if iv["kind"] != InterventionKind.WARN.value)

    @property
    def first_flag(self) -> int | None:
        return next((s.index for s in self.steps if s.flagged), None)

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "outcome": self.outcome, "task": self.task, "stop_step": self.stop_step,
                "flagged_steps": self.flagged, "interventions": self.intervened, "first_flag": self.first_flag,
                "errors": self.errors, "steps": [asdict(s) for s in self.steps]}

    def render(self) -> str:
        lines = [f"replay of {self.run_id} ({self.outcome}): {_short(self.task, 80)}"]
        for s in self.steps:
            mark = " " if s.reached else "x"
            lines.append(f"{mark}{s.index:>4}  {s.label}")
            if not s.reached:
                continue
            for f in s.flagged:
                lines.append(f"        flag    {f}")
            for iv in s.interventions:
                lines.append(f"        {iv['kind']:<7} {_short(iv['text'], 150)}"
                             + (f"  [{iv['variant']}]" if iv.get("variant") else ""))
            for r in s.recoveries:
                lines.append(f"        recover {r}")
            if s.blocked:
                lines.append("        -> the call would not have run")
            if s.stopped:
                lines.append("        -> the run would have stopped here")
            if s.was_flagged and not s.flagged:
                lines.append(f"        (flagged when it ran: {', '.join(s.was_flagged)})")
        lines.append(f"{self.flagged} step(s) flagged, {self.intervened} intervention(s)"
                     + (f", stopped at step {self.stop_step}" if self.stop_step is not None else "")
                     + ("; steps marked x would not have been reached" if self.stop_step is not None else ""))
        for e in self.errors:
            lines.append(f"plugin error: {e}")
        return "\n".join(lines)


def imported_from_store(store: Any, run_id: str) -> Any:
    """A stored run as an :class:`~immunity.importers.ImportedRun` (a unique prefix of the id is enough)."""
    from immunity.importers import ImportedRun

    run = store.get_run(run_id)
    if run is None:
        raise LookupError(f"no run {run_id!r} in the store (or the prefix is not unique)")
    steps = store.steps(run.run_id)
    for s in steps:
        s.data.pop("flagged", None)
    return ImportedRun(run=run, steps=steps, source=str(getattr(store, "path", "store")), mapped=True)


def _runtime(run: Run, *, verifiers: list[str] | None, packs: list[str] | None, selector: str | None,
             options: dict[str, Any] | None) -> Any:
    from immunity.runtime import Runtime

    return Runtime(domain=run.domain, store=None, step_budget_ms=0.0, verifiers=list(verifiers or []),
                   selector=selector or Config().selector, packs=list(packs or []), **dict(options or {}))


def what_if(imported: Any, *, verifiers: list[str] | None = None, packs: list[str] | None = None,
            selector: str | None = None, options: dict[str, Any] | None = None, store: Any = None,
            runtime: Any = None) -> ReplayReport:
    """Replay ``imported`` through a fresh runtime (or ``runtime``) and report what it would have done."""
    from immunity.importers.replay import replay_run

    run = imported.run
    rt = runtime or _runtime(run, verifiers=verifiers, packs=packs, selector=selector, options=options)
    try:
        session, fed = replay_run(imported, rt, run_id=f"whatif-{run.run_id}")
        session.end(run.outcome)
    finally:
        if runtime is None:
            rt.close()
    was_flagged: dict[int, list[str]] = {}
    was_iv: dict[int, list[str]] = {}
    if store is not None:
        for v in store.verdicts(run.run_id):
            if not v.ok and v.step is not None:
                was_flagged.setdefault(v.step, []).append(v.error_class or "?")
        for iv in store.interventions(run.run_id):
            if iv.step is not None:
                was_iv.setdefault(iv.step, []).append(iv.kind.value)
    steps: list[StepReport] = []
    stop_step: int | None = None
    for i, item in enumerate(fed):
        rep = StepReport(index=i, label=step_label(item.step), reached=stop_step is None,
                         was_flagged=sorted(set(was_flagged.get(i, []))), was_intervened=was_iv.get(i, []))
        if stop_step is None:
            seen: set[tuple[str, str]] = set()
            for d in item.decisions:
                for v in d.verdicts:
                    key = (v.error_class or "?", v.message)
                    if not v.ok and key not in seen:
                        seen.add(key)
                        rep.flagged.append(f"{v.error_class} ({v.plugin}): {_short(v.message, 110)}")
                iv = d.intervention
                if iv is not None:
                    rep.interventions.append({"kind": iv.kind.value, "text": iv.text, "variant": iv.variant,
                                              "error_class": iv.error_class})
                if d.recovery is not None:
                    rec = d.recovery
                    rep.recoveries.append(f"{rec.kind.value}: {rec.reason}" + (f" / hint: {_short(rec.hint, 100)}"
                                                                                if rec.hint else ""))
                rep.blocked = rep.blocked or d.block
                if d.stop:
                    rep.stopped = True
            if rep.stopped:
                stop_step = i
        steps.append(rep)
    errors = [f"{e['plugin']} in {e['hook']}: {e['error']}" for e in session.run.metadata.get("plugin_errors", [])]
    return ReplayReport(run_id=run.run_id, outcome=run.outcome.value, task=run.task, steps=steps, stop_step=stop_step,
                        errors=errors)


def try_on_runs(store: Any, *, limit: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Replay every stored run (or the ``limit`` newest) and summarise how many each configuration
    would have flagged and intervened on, split by outcome."""
    rows = []
    totals: dict[str, dict[str, int]] = {}
    for run in store.runs(limit=limit):
        if run.run_id.startswith("whatif-"):
            continue
        rep = what_if(imported_from_store(store, run.run_id), store=store, **kwargs)
        row = {"run_id": run.run_id, "outcome": rep.outcome, "steps": len(rep.steps), "flagged_steps": rep.flagged,
               "interventions": rep.intervened, "first_flag": rep.first_flag, "stop_step": rep.stop_step,
               "errors": len(rep.errors)}
        rows.append(row)
        t = totals.setdefault(rep.outcome, {"runs": 0, "flagged": 0, "intervened": 0, "stopped": 0})
        t["runs"] += 1
        t["flagged"] += int(rep.flagged > 0)
        t["intervened"] += int(rep.intervened > 0)
        t["stopped"] += int(rep.stop_step is not None)
    return {"runs": rows, "by_outcome": totals}


def _signature(step: Step) -> str:
    if step.tool:
        return f"{step.action_type.value}|{step.tool}|{json.dumps(step.arguments, sort_keys=True, default=str)}"
    return f"{step.action_type.value}|{' '.join((step.text or '').split())[:200]}"


def align(steps_a: list[Step], steps_b: list[Step]) -> dict[str, Any]:
    """Line up two runs' steps (same action type, tool and arguments, or the same text) and find
    where they part. Rows are ``{"op": "=" | "~" | "-" | "+", "a": i | None, "b": j | None, ...}``:
    ``=`` the same step (``same_result`` says whether the results match too), ``~`` different steps
    at the same place, ``-`` only in the first run, ``+`` only in the second."""
    sa, sb = [_signature(s) for s in steps_a], [_signature(s) for s in steps_b]
    rows: list[dict[str, Any]] = []
    diverge: tuple[int, int] | None = None
    matcher = difflib.SequenceMatcher(None, sa, sb, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for k in range(i2 - i1):
                a, b = steps_a[i1 + k], steps_b[j1 + k]
                same = (a.result or "", a.error or "") == (b.result or "", b.error or "")
                rows.append({"op": "=", "a": i1 + k, "b": j1 + k, "label": step_label(a), "same_result": same})
                if not same and diverge is None:
                    diverge = (i1 + k, j1 + k)
            continue
        if diverge is None:
            diverge = (i1, j1)
        n = max(i2 - i1, j2 - j1)
        for k in range(n):
            ia, jb = i1 + k, j1 + k
            sa_k: Step | None = steps_a[ia] if ia < i2 else None
            sb_k: Step | None = steps_b[jb] if jb < j2 else None
            code = "~" if sa_k is not None and sb_k is not None else ("-" if sa_k is not None else "+")
            rows.append({"op": code, "a": ia if sa_k is not None else None, "b": jb if sb_k is not None else None,
                         "label_a": step_label(sa_k) if sa_k is not None else None,
                         "label_b": step_label(sb_k) if sb_k is not None else None})
    return {"rows": rows, "diverge_at": diverge, "common": sum(1 for r in rows if r["op"] == "="),
            "ratio": round(matcher.ratio(), 4)}


def render_alignment(run_a: Run, run_b: Run, result: dict[str, Any]) -> str:
    lines = [f"A: {run_a.run_id} ({run_a.outcome.value}, {run_a.steps} steps)",
             f"B: {run_b.run_id} ({run_b.outcome.value}, {run_b.steps} steps)"]
    for r in result["rows"]:
        a = "" if r["a"] is None else r["a"]
        b = "" if r["b"] is None else r["b"]
        if r["op"] == "=":
            note = "" if r["same_result"] else "   (results differ)"
            lines.append(f"  = {a!s:>4} {b!s:>4}  {r['label']}{note}")
        elif r["op"] == "~":
            lines.append(f"  ~ {a!s:>4} {b!s:>4}  A: {r['label_a']}")
            lines.append(f"  {'':>12}  B: {r['label_b']}")
        elif r["op"] == "-":
            lines.append(f"  - {a!s:>4} {'':>4}  A: {r['label_a']}")
        else:
            lines.append(f"  + {'':>4} {b!s:>4}  B: {r['label_b']}")
    d = result["diverge_at"]
    lines.append(f"{result['common']} step(s) in common (similarity {result['ratio']:.2f}); "
                 + (f"the runs part at step {d[0]} of A / step {d[1]} of B" if d else "the runs do not part"))
    return "\n".join(lines)
