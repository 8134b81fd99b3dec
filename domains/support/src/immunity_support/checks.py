"""The support domain's checks. Each returns a :class:`~immunity.models.Verdict` or ``None``.

They read a per-run memo, ``state.extras["support"]``, that :func:`track` fills once per completed
step from the lookups' *results* (users, their payment methods and reservations, reservations' cabin,
passengers and bags, orders' totals), and that :func:`track_messages` fills from the conversation the
model sees (the customer's latest message). Every check is O(1) in the length of the run.

Options (``Runtime(..., support={...})``): ``required_lookups`` adds or replaces entries of
:data:`REQUIRED_LOOKUPS`; ``require_confirmation`` (default ``True``) switches the confirmation
check; ``airline_policy`` (default ``True``) switches the airline policy rules.
"""

from __future__ import annotations

import json
import re
from typing import Any

from immunity import taxonomy as tx
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

from immunity_support.mapping import STATE_CHANGING

#: Error class added by this domain.
UNCONFIRMED_CHANGE = "unconfirmed_change"

tx.register_class(
    UNCONFIRMED_CHANGE,
    "A state-changing call made without the customer's explicit confirmation of its details.",
    "tau-bench airline policy ('obtain explicit user confirmation (yes) to proceed')",
    "List the action's details to the customer and wait for an explicit yes before changing anything.",
)

#: For each state-changing tool: the argument that names the record, and the lookups that must have
#: returned that record earlier in the run (the policy's "obtain the details first").
REQUIRED_LOOKUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "cancel_reservation": {"reservation_id": ("get_reservation_details",)},
    "update_reservation_flights": {"reservation_id": ("get_reservation_details",)},
    "update_reservation_baggages": {"reservation_id": ("get_reservation_details",)},
    "update_reservation_passengers": {"reservation_id": ("get_reservation_details",)},
    "book_reservation": {"user_id": ("get_user_details",)},
    "send_certificate": {"user_id": ("get_user_details",)},
    "cancel_pending_order": {"order_id": ("get_order_details",)},
    "modify_pending_order_address": {"order_id": ("get_order_details",)},
    "modify_pending_order_items": {"order_id": ("get_order_details",)},
    "modify_pending_order_payment": {"order_id": ("get_order_details",)},
    "return_delivered_order_items": {"order_id": ("get_order_details",)},
    "exchange_delivered_order_items": {"order_id": ("get_order_details",)},
    "modify_user_address": {"user_id": ("get_user_details",)},
    "refund": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "issue_refund": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "process_refund": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "refund_order": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "cancel_order": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "update_order": {"order_id": ("lookup_order", "get_order", "get_order_details")},
    "update_customer": {"customer_id": ("lookup_customer", "get_customer", "get_customer_details")},
    "update_account": {"customer_id": ("lookup_customer", "get_customer", "get_customer_details")},
}

_STATE_CHANGING = re.compile(STATE_CHANGING)
_ERROR = re.compile(r"^\s*(?:error|exception|failed|not found|invalid)\b", re.I)
_YES = re.compile(r"\b(?:yes|yeah|yep|yup|confirm(?:ed|ing)?|proceed|go ahead|do it|sounds good|that'?s (?:correct|"
                  r"right|fine)|i agree|oui|sí|please do)\b", re.I)
_NO = re.compile(r"^\s*(?:no\b|nope|don'?t|do not|wait|stop|cancel that)", re.I)
#: Verbs a reply may use to claim a change, and the tool-name stems that make that change.
_VERBS = (r"(cancel+ed|refunded|booked|updated|modified|changed|upgraded|downgraded|issued|processed|added|sent|"
          r"exchanged|returned)\b(?!\s+by\s+the\s+airline)")
_CLAIM = re.compile(rf"\b(?:i(?:'ve| have)|we(?:'ve| have))\s+(?:now\s+|also\s+|just\s+)?(?:successfully\s+)?{_VERBS}"
                    rf"|\b(?:your|the)\s+(?:[\w$.,-]+\s+){{0,4}}(?:has|have)\s+(?:now\s+|also\s+)?been\s+"
                    rf"(?:successfully\s+)?{_VERBS}", re.I)
_CLAIM_TOOLS: dict[str, tuple[str, ...]] = {
    "cancelled": ("cancel",), "canceled": ("cancel",), "refunded": ("refund", "cancel", "return", "update", "modify"),
    "booked": ("book",), "updated": ("update", "modify"), "modified": ("update", "modify"),
    "changed": ("update", "modify", "exchange"), "upgraded": ("update",), "downgraded": ("update",),
    "issued": ("send_certificate", "refund", "issue", "credit", "voucher"), "processed": ("",),
    "added": ("update", "add", "modify"), "sent": ("send_certificate", "send", "certificate"),
    "exchanged": ("exchange",), "returned": ("return",),
}
_LIMIT = 2000


def memo(state: RunState) -> dict[str, Any]:
    m = state.extras.get("support")
    if m is None:
        m = state.extras["support"] = {"opts": {}, "looked_up": {}, "users": {}, "current_user": None,
                                       "reservations": {}, "orders": {}, "last_user_text": None,
                                       "changes": [], "messages_seen": False}
    return m


def is_state_changing(tool: str | None) -> bool:
    return bool(tool) and _STATE_CHANGING.fullmatch(tool or "") is not None


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text[:50000])
    except ValueError:
        return None


def _failed(step: Step) -> bool:
    return step.failed or bool(_ERROR.match(step.result or ""))


def _remember_reservation(m: dict[str, Any], data: dict[str, Any]) -> None:
    rid = data.get("reservation_id")
    if not isinstance(rid, str) or len(m["reservations"]) >= _LIMIT:
        return
    bags = data.get("total_baggages")
    m["reservations"][rid] = {
        "user_id": data.get("user_id"), "cabin": data.get("cabin"), "status": data.get("status"),
        "passengers": len(data.get("passengers") or []),
        "flights": sorted((f.get("flight_number"), f.get("date")) for f in data.get("flights") or []
                          if isinstance(f, dict)),
        "total_baggages": bags if isinstance(bags, int) else None,
    }


def track(step: Step, run: Run, state: RunState) -> None:
    """Fold one completed tool step into the memo."""
    if not step.tool or step.data.get("blocked"):
        return
    m = memo(state)
    args = step.arguments or {}
    if _failed(step):
        return
    tool = step.tool.lower()
    for key in ("user_id", "reservation_id", "order_id", "customer_id", "ticket_id"):
        value = args.get(key)
        if isinstance(value, str | int) and step.action_type == ActionType.SEARCH:
            m["looked_up"].setdefault(tool, set()).add(str(value))
    data = _json(step.result)
    if isinstance(data, dict):
        if tool == "get_user_details" or (step.action_type == ActionType.SEARCH and "payment_methods" in data):
            uid = str(args.get("user_id") or data.get("user_id") or "")
            pm = data.get("payment_methods") or {}
            ids = set(pm) if isinstance(pm, dict) else {p.get("id") for p in pm if isinstance(p, dict)}
            if uid and len(m["users"]) < _LIMIT:
                m["users"][uid] = {"payment_ids": {str(i) for i in ids if i},
                                   "reservations": {str(r) for r in data.get("reservations") or []},
                                   "orders": {str(o) for o in data.get("orders") or []}}
                m["current_user"] = uid
        if "reservation_id" in data and "flights" in data:
            _remember_reservation(m, data)
        oid = data.get("order_id")
        if isinstance(oid, str) and len(m["orders"]) < _LIMIT:
            total = data.get("total") or data.get("amount") or data.get("total_amount")
            if total is None and isinstance(data.get("items"), list):
                total = sum(float(i.get("price") or 0) for i in data["items"] if isinstance(i, dict)) or None
            m["orders"][oid] = {"user_id": data.get("user_id"), "status": data.get("status"),
                                "total": float(total) if isinstance(total, int | float) else None}
    if is_state_changing(step.tool) and len(m["changes"]) < _LIMIT:
        m["changes"].append(tool)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def track_messages(messages: list[dict[str, Any]] | None, state: RunState) -> None:
    """Remember the customer's latest message from the conversation a model call receives."""
    if not messages:
        return
    m = memo(state)
    for msg in reversed(messages):
        role = str(msg.get("role") or msg.get("type") or "").lower()
        if role in ("user", "human"):
            text = _text_of(msg.get("content"))
            if text.startswith("[immunity]"):
                continue  # our own hints are not the customer
            m["last_user_text"] = text[:2000]
            m["messages_seen"] = True
            return


# ----------------------------------------------------------------------------------------------- checks


def _required(state: RunState) -> dict[str, dict[str, tuple[str, ...]]]:
    extra = memo(state)["opts"].get("required_lookups") or {}
    if not extra:
        return REQUIRED_LOOKUPS
    merged = dict(REQUIRED_LOOKUPS)
    merged.update({k: {a: tuple(v) for a, v in spec.items()} for k, spec in extra.items()})
    return merged


def required_lookup(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``policy_violation`` (blocked): a state-changing call on a record that no lookup returned
    earlier in the run (``cancel_reservation`` before ``get_reservation_details`` of that reservation,
    ``refund`` before ``lookup_order``...)."""
    if event.kind != EventKind.TOOL_START or step is None or not step.tool:
        return None
    spec = _required(state).get(step.tool.lower())
    if not spec:
        return None
    m = memo(state)
    args = step.arguments or {}
    for arg, lookups in spec.items():
        value = args.get(arg)
        if value is not None and any(str(value) in m["looked_up"].get(t, ()) for t in lookups):
            continue
        what = f"{arg}={value!r}" if value is not None else f"no {arg}"
        return Verdict(ok=False, error_class=tx.POLICY_VIOLATION, severity=Severity.ERROR, block=True,
                       message=f"{step.tool} ({what}) without a successful {' / '.join(lookups)} of it first",
                       hint=f"[immunity] Blocked {step.tool}: the policy requires looking the record up first. "
                            f"Call {lookups[0]}({arg}=...) for this {arg.replace('_id', '')}, check that the "
                            "policy allows the change, then try again.",
                       evidence={"tool": step.tool, "argument": arg, "value": value, "lookups": list(lookups)})
    return None


def _payment_ids(args: dict[str, Any]) -> list[str]:
    out = []
    if isinstance(args.get("payment_id"), str):
        out.append(args["payment_id"])
    if isinstance(args.get("payment_method_id"), str):
        out.append(args["payment_method_id"])
    for p in args.get("payment_methods") or []:
        if isinstance(p, dict) and isinstance(p.get("payment_id"), str):
            out.append(p["payment_id"])
    return out


def record_mismatch(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``wrong_parameters`` (blocked): a state-changing call whose arguments contradict what the
    lookups returned: a payment method not in the customer's profile, a reservation or order that
    belongs to another customer, a refund larger than the order's total."""
    if event.kind != EventKind.TOOL_START or step is None or not is_state_changing(step.tool):
        return None
    m = memo(state)
    args = step.arguments or {}
    problems: list[str] = []
    uid = args.get("user_id")
    user = m["users"].get(str(uid)) if uid else (m["users"].get(m["current_user"]) if m["current_user"] else None)
    if uid and m["current_user"] and str(uid) not in m["users"]:
        problems.append(f"user_id {uid!r} is not the customer looked up ({m['current_user']!r})")
    if user is not None:
        for pid in _payment_ids(args):
            if user["payment_ids"] and pid not in user["payment_ids"]:
                problems.append(f"payment method {pid!r} is not in the customer's profile "
                                f"({', '.join(sorted(user['payment_ids']))})")
    rid = args.get("reservation_id")
    res = m["reservations"].get(str(rid)) if rid else None
    if res is not None and m["current_user"] and res.get("user_id") and res["user_id"] != m["current_user"] \
            and not uid:
        problems.append(f"reservation {rid} belongs to {res['user_id']!r}, not to the customer "
                        f"({m['current_user']!r})")
    oid = args.get("order_id")
    order = m["orders"].get(str(oid)) if oid else None
    if order is not None:
        amount = args.get("amount")
        if isinstance(amount, int | float) and order.get("total") is not None and amount > order["total"] + 1e-6:
            problems.append(f"amount {amount} is more than the order's total {order['total']}")
        if m["current_user"] and order.get("user_id") and order["user_id"] != m["current_user"]:
            problems.append(f"order {oid} belongs to {order['user_id']!r}, not to the customer")
    if not problems:
        return None
    return Verdict(ok=False, error_class=tx.WRONG_PARAMETERS, severity=Severity.ERROR, block=True,
                   message=f"{step.tool}: " + "; ".join(problems),
                   hint=f"[immunity] Blocked {step.tool}: {problems[0]}. Use only values the lookups returned; "
                        "ask the customer if something is missing.",
                   evidence={"tool": step.tool, "problems": problems})


def airline_policy(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``policy_violation`` (blocked): a change the airline policy forbids, checked against the
    reservation's looked-up details: changing the flights of a basic economy reservation, changing
    the number of passengers, removing checked bags, cancelling a reservation already cancelled."""
    if event.kind != EventKind.TOOL_START or step is None or not step.tool:
        return None
    m = memo(state)
    if m["opts"].get("airline_policy") is False:
        return None
    args = step.arguments or {}
    res = m["reservations"].get(str(args.get("reservation_id") or ""))
    if res is None:
        return None
    tool = step.tool.lower()
    problem = None
    if tool == "update_reservation_flights" and res.get("cabin") == "basic_economy":
        new = sorted((f.get("flight_number"), f.get("date")) for f in args.get("flights") or [] if isinstance(f, dict))
        if new and new != res["flights"]:
            problem = "basic economy flights cannot be modified (only the cabin can change)"
    elif tool == "update_reservation_passengers":
        n = len(args.get("passengers") or [])
        if res.get("passengers") and n != res["passengers"]:
            problem = f"the number of passengers cannot change ({res['passengers']} -> {n})"
    elif tool == "update_reservation_baggages":
        total = args.get("total_baggages")
        if isinstance(total, int) and res.get("total_baggages") is not None and total < res["total_baggages"]:
            problem = f"checked bags can be added but not removed ({res['total_baggages']} -> {total})"
    elif tool == "cancel_reservation" and str(res.get("status") or "").lower() == "cancelled":
        problem = "the reservation is already cancelled"
    if problem is None:
        return None
    return Verdict(ok=False, error_class=tx.POLICY_VIOLATION, severity=Severity.ERROR, block=True,
                   message=f"{step.tool} on {args.get('reservation_id')}: {problem}",
                   hint=f"[immunity] Blocked {step.tool}: {problem}. Explain the rule to the customer instead.",
                   evidence={"tool": step.tool, "reservation": args.get("reservation_id"), "rule": problem})


def unconfirmed_change(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``unconfirmed_change``: a state-changing call while the customer's latest message is not an
    explicit yes. Only when the conversation is visible (the adapter passes the model's messages)."""
    if event.kind != EventKind.TOOL_START or step is None or not is_state_changing(step.tool):
        return None
    m = memo(state)
    if m["opts"].get("require_confirmation") is False or not m["messages_seen"]:
        return None
    text = m["last_user_text"] or ""
    if _YES.search(text) and not _NO.match(text):
        return None
    return Verdict(ok=False, error_class=UNCONFIRMED_CHANGE, severity=Severity.WARNING,
                   message=f"{step.tool} without an explicit confirmation; the customer last said: {text[:120]!r}",
                   hint="[immunity] Before changing a booking, list the exact details (what changes, the price, the "
                        "payment method) and ask the customer to confirm with a yes.",
                   evidence={"tool": step.tool, "last_user_message": text[:300]})


def claimed_change(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``hallucinated_state``: a reply or final answer that tells the customer a change was made
    ("I have cancelled your reservation") when no successful call in the run made that kind of change."""
    if step is None or step.tool is not None or not step.text:
        return None
    if event.kind not in (EventKind.MODEL_END, EventKind.MESSAGE, EventKind.FINAL_ANSWER):
        return None
    made = memo(state)["changes"]
    for match in _CLAIM.finditer(step.text[:4000]):
        verb = (match.group(1) or match.group(2)).lower()
        stems = _CLAIM_TOOLS.get(verb, (verb[:5],))
        if any(any(stem in tool for stem in stems) for tool in made):
            continue
        return Verdict(ok=False, error_class=tx.HALLUCINATED_STATE, severity=Severity.ERROR,
                       message=f"the reply says {match.group(0)!r} but no {stems[0] or 'state-changing'} call "
                               "succeeded in this run",
                       hint="[immunity] You told the customer a change was made, but no tool call made it. Make the "
                            "change with the right tool (after confirmation), or correct what you said.",
                       evidence={"claim": match.group(0), "changes_made": made[-10:]})
    return None


CHECKS = [required_lookup, record_mismatch, airline_policy, unconfirmed_change, claimed_change]

ERROR_CLASSES = {
    tx.POLICY_VIOLATION: "required_lookup: a state-changing call on a record no lookup returned first (blocked); "
                         "airline_policy: a change the airline policy forbids (blocked)",
    tx.WRONG_PARAMETERS: "record_mismatch: arguments that contradict the lookups (payment method not in the "
                         "profile, another customer's record, refund above the total) (blocked)",
    UNCONFIRMED_CHANGE: "unconfirmed_change: a state-changing call without an explicit yes from the customer",
    tx.HALLUCINATED_STATE: "claimed_change: a reply claiming a change no tool call made",
}
