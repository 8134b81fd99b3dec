"""immunity-billing: a complete custom domain for immunity in one module.

It has the three parts every domain has:

1. a mapping table (``RULES``): native tool names (and their arguments) -> universal action types;
2. checks: functions ``check(event, step, run, state) -> Verdict | None`` that immunity calls for
   every event of a ``billing`` run;
3. one hook that registers the domain, found through the ``immunity`` entry point in pyproject.toml.

Use it with ``Runtime(domain="billing")`` or ``immunity.protect(agent, domain="billing")``.
"""

from __future__ import annotations

import json
from typing import Any

from immunity import hookimpl, taxonomy
from immunity.domain import Domain, Rule
from immunity.models import EventKind, Severity, Verdict

# 1. The mapping table. Rules are tried in order; the first match wins. ``tool`` is an exact name
#    or a regular expression; ``when`` is a regular expression on the arguments rendered as text.
RULES = [
    Rule(tool="lookup_invoice", action="SEARCH"),
    Rule(tool="list_invoices", action="SEARCH"),
    Rule(tool="refund_invoice", action="EDIT", side_effect=True, needs_verification=True),
    Rule(tool="void_invoice", action="EDIT", side_effect=True, destructive=True, needs_verification=True),
    Rule(tool="apply_discount", action="EDIT", side_effect=True, when=r"\"percent\":\s*(?:[5-9]\d|100)\b",
         confidence=0.9, needs_verification=True),            # a big discount needs verification
    Rule(tool="apply_discount", action="EDIT", side_effect=True),
    Rule(tool="send_invoice", action="RESPOND"),
    Rule(tool="reconcile_ledger", action="VERIFY"),
    Rule(tool="close_case", action="DONE"),
    Rule(tool="escalate_to_finance", action="ESCALATE"),
]

# 2. A check with its own error class. The per-run memo lives in ``state.extras["billing"]``.
REFUND_EXCEEDS_PAID = "refund_exceeds_paid"
taxonomy.register_class(
    REFUND_EXCEEDS_PAID,
    "A refund larger than what the customer paid on the invoice, or on an invoice never looked up.",
    "immunity-billing example",
    "Look the invoice up and refund at most the amount paid.",
)


def _paid(state: Any) -> dict[str, float]:
    return state.extras.setdefault("billing", {"paid": {}})["paid"]


def refund_within_paid(event: Any, step: Any, run: Any, state: Any) -> Verdict | None:
    """Remember what each looked-up invoice says was paid; block a refund above it (or without a lookup)."""
    if step is None or step.tool is None:
        return None
    if event.kind == EventKind.TOOL_END and step.tool == "lookup_invoice" and not step.failed:
        try:
            invoice = json.loads(step.result or "{}")
            _paid(state)[str(invoice["invoice_id"])] = float(invoice["amount_paid"])
        except (ValueError, KeyError, TypeError):
            pass
        return None
    if event.kind != EventKind.TOOL_START or step.tool != "refund_invoice":
        return None
    args = step.arguments or {}
    invoice_id, amount = str(args.get("invoice_id")), float(args.get("amount") or 0)
    paid = _paid(state).get(invoice_id)
    if paid is not None and amount <= paid:
        return None
    why = f"invoice {invoice_id} was never looked up" if paid is None else f"{amount} is more than the {paid} paid"
    return Verdict(ok=False, error_class=REFUND_EXCEEDS_PAID, severity=Severity.ERROR, block=True,
                   message=f"refund_invoice blocked: {why}",
                   hint=f"[immunity] Refund blocked: {why}. Call lookup_invoice first and refund at most the amount paid.",
                   evidence={"invoice_id": invoice_id, "amount": amount, "paid": paid})


DOMAIN = Domain(name="billing", rules=RULES, checks=[refund_within_paid],
                description="Billing agents: invoices, refunds, discounts.",
                error_classes={REFUND_EXCEEDS_PAID: "refund_within_paid: a refund above the amount paid (blocked)"})


# 3. The hook immunity calls to find the domain.
@hookimpl
def immunity_register_domains(register: Any) -> None:
    register("billing", DOMAIN)
