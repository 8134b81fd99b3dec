"""Cross-checks for wrong-but-plausible tool outputs: a total that is not the sum of its parts.

A tool result that *looks* right (a well-formed order, a report with a total) but carries a wrong
number passes every shape check; the only thing that can catch it without ground truth is the
output's own arithmetic. :func:`sum_mismatches` finds, anywhere in a JSON value, an object with a
total-like field (``total``, ``grand_total``, ``sum``, ``total_amount``...) next to its parts (a
list of line items ``price x quantity`` or ``amount``, or a mapping of named numbers), plus
``shipping`` / ``tax`` / ``fees`` and minus ``discount`` when present, and reports the ones that do
not add up. Domains register :func:`make_check` (support: order totals; data: sums against parts).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from immunity import taxonomy as tx
from immunity.models import Event, EventKind, Run, Severity, Step, Verdict

INCONSISTENT_OUTPUT = "inconsistent_output"

tx.register_class(
    INCONSISTENT_OUTPUT,
    "A tool result that contradicts itself: a total that is not the sum of its parts (a wrong-but-plausible output).",
    "immunity chaos experiments (wrong_output faults); data-quality practice (totals reconcile with line items)",
    "Do not act on this result: look it up again, or use the parts and say the total did not reconcile.",
)

TOTAL_KEYS = ("total", "grand_total", "total_amount", "amount_total", "order_total", "sum", "total_sum")
PART_KEYS = ("items", "line_items", "lines", "parts", "rows", "values", "breakdown", "components")
ADD_KEYS = ("shipping", "tax", "fees", "fee", "shipping_cost")
SUB_KEYS = ("discount", "discounts")


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    return None


def _part_value(p: Any) -> float | None:
    if _num(p) is not None:
        return _num(p)
    if not isinstance(p, dict):
        return None
    price = _num(p.get("price", p.get("unit_price")))
    if price is not None:
        qty = _num(p.get("quantity", p.get("qty", 1)))
        return price * (qty if qty is not None else 1.0)
    for k in ("amount", "value", "total", "subtotal"):
        if _num(p.get(k)) is not None:
            return _num(p.get(k))
    return None


def _parts_sum(parts: Any) -> float | None:
    vals = list(parts.values()) if isinstance(parts, dict) else parts if isinstance(parts, list) else None
    if not vals:
        return None
    nums = [_part_value(v) for v in vals]
    if any(n is None for n in nums):
        return None
    return float(sum(n for n in nums if n is not None))


def sum_mismatches(data: Any, *, path: str = "$", limit: int = 5) -> list[str]:
    """Every object in ``data`` whose total is not the sum of its parts (a description each)."""
    out: list[str] = []
    if isinstance(data, dict):
        tkey = next((k for k in TOTAL_KEYS if _num(data.get(k)) is not None), None)
        pkey = next((k for k in PART_KEYS if k in data), None)
        if tkey and pkey:
            s = _parts_sum(data[pkey])
            if s is not None:
                s += sum(_num(data.get(k)) or 0.0 for k in ADD_KEYS) - sum(_num(data.get(k)) or 0.0 for k in SUB_KEYS)
                total = _num(data[tkey])
                assert total is not None
                if abs(s - total) > max(0.011, 1e-6 * abs(total)):
                    out.append(f"{path}.{tkey} is {total:g} but its {pkey} add up to {s:g}")
        for k, v in data.items():
            if len(out) < limit and isinstance(v, dict | list):
                out += sum_mismatches(v, path=f"{path}.{k}", limit=limit - len(out))
    elif isinstance(data, list):
        for i, v in enumerate(data[:200]):
            if len(out) >= limit:
                break
            if isinstance(v, dict | list):
                out += sum_mismatches(v, path=f"{path}[{i}]", limit=limit - len(out))
    return out


def make_check(tools: str | None = None, *, name: str = "sum_check") -> Callable[..., Verdict | None]:
    """A domain check: on a tool's result (``tool_end``), a total that does not add up is an
    ``inconsistent_output`` verdict (not blocked: the call already ran; the hint goes to the next
    model call). ``tools`` is a regular expression of the tool names to check (default: all)."""
    pattern = re.compile(tools) if tools else None

    def check(event: Event, step: Step | None, run: Run, state: Any) -> Verdict | None:
        if event.kind != EventKind.TOOL_END or step is None or not step.tool or step.error:
            return None
        if pattern is not None and not pattern.fullmatch(step.tool):
            return None
        text = step.result if isinstance(step.result, str) else None
        if not text or text.lstrip()[:1] not in ("{", "[") or len(text) > 200_000:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        problems = sum_mismatches(data)
        if not problems:
            return None
        return Verdict(ok=False, error_class=INCONSISTENT_OUTPUT, severity=Severity.ERROR,
                       message=f"{step.tool} returned figures that do not add up: {problems[0]}",
                       hint=f"[immunity] The result of {step.tool} does not add up ({problems[0]}). Do not act "
                            f"on it: call {step.tool} again, or ask before going on.",
                       evidence={"tool": step.tool, "problems": problems})

    check.__name__ = check.__qualname__ = name
    return check
