"""``immunity explain``: the step most likely to be the decisive error of a failed run.

With successful runs of the same task at hand, the answer is where the failed run diverges from
them (the alignment learning uses). Otherwise, with a pack, the run is scored and the answer is the
step where the risk rose the most, with the patterns that matched there. Without either, the run's
own signals answer: the *effect* is the first step where a problem shows (a failed step, a
traceback, "not found", a permission or HTTP error, a loop or repeated error, the agent apologising
or saying it cannot), and the decisive step is the last step before it that acted (anything but a
lookup), else the effect itself. Every answer is a cause -> effect pair: the decisive step, and the
step where its consequence showed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from immunity.learning.data import collect, outcome_label, score_items, task_key
from immunity.learning.evaluate import explain_step
from immunity.learning.learn import classify, divergence

_PROBLEM_FEATURES = ("c_traceback", "c_http_error", "c_not_found", "c_permission", "c_cannot", "c_apology")


def problem_steps(run: Any) -> list[int]:
    """Steps where a problem shows: the step failed, a strong signal fired (loop, repeated error,
    no progress), or its content shows a traceback, an HTTP/permission error, "not found", or the
    agent apologising or saying it cannot."""
    from immunity.learning.features import FEATURE_NAMES
    from immunity.learning.learn import _strong_signal

    cols = [FEATURE_NAMES.index(n) for n in _PROBLEM_FEATURES]
    out = []
    for k in range(run.n):
        sig = run.signal_dict(k)
        if sig["last_failed"] or _strong_signal(sig) or (run.numeric.shape[1] > max(cols) and
                                                          np.any(run.numeric[k, cols] > 0)):
            out.append(k)
    return out


def signal_cause(run: Any) -> tuple[int, int]:
    """(decisive step, effect step) from a run's own signals (see the module docstring)."""
    probs = problem_steps(run)
    if not probs:
        return run.n - 1, run.n - 1
    eff = probs[0]
    for k in range(eff - 1, -1, -1):
        if run.actions[k] != "SEARCH":
            return k, eff
    return eff, eff


def _effect(run: Any, step: int) -> int:
    """Where a decisive step's consequence shows: the first problem step at or after it, else the
    last step."""
    return next((k for k in problem_steps(run) if k >= step), run.n - 1)


def _find(run_id: str, items: list[Any]) -> Any:
    exact = [it for it in items if it.run.run_id == run_id]
    if exact:
        return exact[0]
    pref = [it for it in items if it.run.run_id.startswith(run_id)]
    if len(pref) == 1:
        return pref[0]
    if len(pref) > 1:
        raise LookupError(f"{run_id!r} is the prefix of {len(pref)} runs; give more of the id")
    raise LookupError(f"no run {run_id!r} in the input")


def _snippet(step: Any, limit: int = 300) -> str:
    if step is None:
        return ""
    parts = []
    if step.tool:
        parts.append(f"{step.tool}({str(step.arguments)[:150]})")
    if step.text:
        parts.append(step.text[:limit])
    if step.error:
        parts.append(f"error: {step.error[:150]}")
    elif step.result:
        parts.append(f"result: {step.result[:150]}")
    return " | ".join(parts)[:limit]


def explain_run(run_id: str, items: list[Any], packs: list[Any], *, domain: str | None = None,
                max_references: int = 10) -> dict[str, Any]:
    target = _find(run_id, items)
    key = task_key(target.run)
    refs = [it for it in items if it is not target and task_key(it.run) == key and outcome_label(it.run) == 0]
    runs, _emb = collect([target, *refs[:max_references]], domain=domain)
    me = runs[0]
    if me.n == 0:
        raise ValueError(f"run {target.run.run_id} has no steps")
    evidence: list[str] = []
    cls: str | None
    if refs:
        step, ref_tok, ended, _has = divergence(me, runs[1:])
        cls = classify(me.signal_dict(step), me.actions[step], ref_tok, ended, True)
        method = "alignment"
        evidence.append(f"aligned with {len(runs) - 1} successful run(s) of the same task; the first step not "
                        f"covered by the best alignment is {step}")
        if ref_tok:
            evidence.append(f"the successful run did {ref_tok} at this point; this run did "
                            f"{me.actions[step]}:{me.tools[step] or '-'}")
        if ended:
            evidence.append("this run stopped where the successful run went on")
    elif packs:
        scored = next(iter(score_items([target], packs, domain=domain)))
        risk = np.asarray([s.risk for s in scored.scores])
        step = explain_step(risk)
        s = scored.scores[step]
        cls = s.error_class
        method = "risk"
        before = float(risk[step - 1]) if step > 0 else None
        evidence.append(f"risk {'-' if before is None else f'{before:.3f}'} -> {s.risk:.3f} at this step "
                        f"(the largest rise in the run; alarm: {s.alarm})")
        if s.patterns:
            evidence.append(f"matched patterns: {', '.join(s.patterns[:5])}")
    else:
        step, eff = signal_cause(me)
        cls = classify(me.signal_dict(eff), me.actions[eff], None, eff == me.n - 1, False)
        method = "signals"
        evidence.append(f"no successful run of this task and no pack: the first problem shows at step {eff}; "
                        f"the last step that acted before it is {step}")
    effect = _effect(me, step)
    sig = me.signal_dict(step)
    shown = {k: v for k, v in sig.items() if v and k != "step"}
    evidence.append("signals at this step: " + (", ".join(f"{k}={v:g}" for k, v in shown.items()) or "none"))
    st = target.steps[step] if step < len(target.steps) else None
    return {"run_id": target.run.run_id, "outcome": target.run.outcome.value, "steps": me.n, "method": method,
            "step": int(step), "action_type": me.actions[step], "tool": me.tools[step], "error_class": cls,
            "effect_step": int(effect), "cause_effect": [int(step), int(effect)],
            "evidence": evidence, "snippet": _snippet(st), "labelled_failure_step": target.run.failure_step}
