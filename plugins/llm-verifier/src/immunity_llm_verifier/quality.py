"""Measuring the verifier: precision and recall per error class on labelled steps.

A labelled case is one JSON object per line::

    {"id": "support-wrong-params-1", "domain": "support", "task": "...",
     "steps": [{"tool": "get_reservation_details", "arguments": {...}, "result": "...", "action": "SEARCH",
                "verified": true}, {"text": "...", "action": "PLAN"}],
     "check": {"tool": "cancel_reservation", "arguments": {...}, "action": "EDIT", "side_effect": true},
     "phase": "before", "tier": "L3", "label": "wrong_parameters", "why": "..."}

``phase`` is ``before`` (the call has not run: no result), ``after`` or ``final``; ``tier`` picks the
tier's settings (model, context); ``label`` is one of :data:`~immunity_llm_verifier.contract.ERROR_CLASSES`.

:func:`evaluate` runs a verifier over the cases and :func:`metrics` scores the answers. A case the
verifier could not answer (timeout, HTTP error, unparseable reply) is counted as ``no_answer``: it
is a miss for its label and never a hit for any class.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from immunity.models import ActionType, Step

from immunity_llm_verifier.contract import ERROR_CLASSES
from immunity_llm_verifier.transport import VerifierProblem
from immunity_llm_verifier.verifier import LLMVerifier

__all__ = ["NO_ANSWER", "case_steps", "evaluate", "load_cases", "metrics"]

NO_ANSWER = "no_answer"

_FIELDS = ("tool", "arguments", "result", "error", "return_code", "text", "agent")


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    """Read labelled cases from a JSONL file (blank lines and ``//`` comment lines are skipped)."""
    cases: list[dict[str, Any]] = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        case = json.loads(line)
        if case.get("label") not in ERROR_CLASSES:
            raise ValueError(f"{path}:{n}: label {case.get('label')!r} is not one of {ERROR_CLASSES}")
        if case.get("phase") not in ("before", "after", "final"):
            raise ValueError(f"{path}:{n}: phase must be before, after or final")
        cases.append(case)
    return cases


def _step(raw: dict[str, Any], index: int) -> Step:
    data = {k: raw[k] for k in _FIELDS if k in raw}
    return Step(index=index, action_type=ActionType.parse(raw.get("action")), side_effect=bool(raw.get("side_effect")),
                **data)


def case_steps(case: dict[str, Any]) -> tuple[list[tuple[Step, bool]], Step]:
    """A case's context as ``(step, verified)`` pairs and the step to check."""
    context = [(_step(s, i), bool(s.get("verified"))) for i, s in enumerate(case.get("steps") or [])]
    check = _step(case["check"], len(context))
    if case["phase"] == "final":
        check.action_type = ActionType.DONE
    return context, check


def evaluate(verifier: LLMVerifier, cases: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Ask ``verifier`` about every case; returns :func:`metrics` plus each case's answer and the
    latency and tokens of the calls that were answered."""
    pairs: list[tuple[str, str]] = []
    rows: list[dict[str, Any]] = []
    latencies: list[float] = []
    tokens = 0
    for case in cases:
        context, step = case_steps(case)
        tier = case.get("tier") or "L2"
        problem: str | None = None
        t0 = time.perf_counter()
        try:
            parsed, reply, _messages = verifier.assess(task=case.get("task"), context=context, step=step, tier=tier,
                                                       phase=case["phase"])
        except VerifierProblem as exc:
            predicted, problem = NO_ANSWER, f"{type(exc).__name__}: {exc}"
        else:
            predicted = "none" if parsed.ok else parsed.error_class or "unclassified"
            latencies.append(time.perf_counter() - t0)
            tokens += reply.tokens or 0
        pairs.append((case["label"], predicted))
        rows.append({"id": case.get("id"), "label": case["label"], "predicted": predicted,
                     **({"problem": problem} if problem else {})})
    report = metrics(pairs)
    latencies.sort()
    report["cases"] = rows
    report["answered"] = len(latencies)
    report["tokens"] = tokens
    report["latency_ms_p50"] = round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None
    report["latency_ms_max"] = round(latencies[-1] * 1000, 1) if latencies else None
    return report


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def metrics(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Precision, recall and F1 per class, detection (any problem vs ``none``) and accuracy, from
    ``(label, predicted)`` pairs. A ratio with an empty denominator is ``None`` (not 0, not 1)."""
    pairs = list(pairs)
    classes = sorted({lbl for lbl, _ in pairs} | {p for _, p in pairs if p != NO_ANSWER})
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        tp = sum(1 for lbl, p in pairs if lbl == c and p == c)
        fp = sum(1 for lbl, p in pairs if lbl != c and p == c)
        fn = sum(1 for lbl, p in pairs if lbl == c and p != c)
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = round(2 * prec * rec / (prec + rec), 4) if prec and rec else (0.0 if prec == 0 or rec == 0 else None)
        per_class[c] = {"support": tp + fn, "predicted": tp + fp, "tp": tp, "fp": fp, "fn": fn,
                        "precision": prec, "recall": rec, "f1": f1}
    # detection: does the verifier flag a step that has a problem, whatever the class?
    pos = [(lbl != "none", p not in ("none", NO_ANSWER)) for lbl, p in pairs]
    dtp = sum(1 for y, yhat in pos if y and yhat)
    dfp = sum(1 for y, yhat in pos if not y and yhat)
    dfn = sum(1 for y, yhat in pos if y and not yhat)
    confusion: dict[str, dict[str, int]] = {}
    for (lbl, p), n in Counter(pairs).items():
        confusion.setdefault(lbl, {})[p] = n
    scored = [c for c in per_class if c != "none" and per_class[c]["support"]]
    recalls = [per_class[c]["recall"] for c in scored if per_class[c]["recall"] is not None]
    return {
        "n": len(pairs),
        "accuracy": _ratio(sum(1 for lbl, p in pairs if lbl == p), len(pairs)),
        "no_answer": sum(1 for _, p in pairs if p == NO_ANSWER),
        "detection": {"precision": _ratio(dtp, dtp + dfp), "recall": _ratio(dtp, dtp + dfn), "tp": dtp, "fp": dfp,
                      "fn": dfn},
        "macro_recall": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "per_class": per_class,
        "confusion": confusion,
    }


def format_report(report: dict[str, Any]) -> str:
    """The per-class table as text."""
    lines = [f"{'class':<20} {'support':>7} {'pred':>5} {'precision':>9} {'recall':>7} {'f1':>6}"]
    for c, m in sorted(report["per_class"].items()):
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.2f}"
        lines.append(f"{c:<20} {m['support']:>7} {m['predicted']:>5} {f(m['precision']):>9} {f(m['recall']):>7} "
                     f"{f(m['f1']):>6}")
    d = report["detection"]
    lines.append(f"cases {report['n']}, answered {report.get('answered', '-')}, no answer {report['no_answer']}, "
                 f"accuracy {report['accuracy']}, detection precision {d['precision']} recall {d['recall']}, "
                 f"macro recall {report['macro_recall']}")
    return "\n".join(lines)
