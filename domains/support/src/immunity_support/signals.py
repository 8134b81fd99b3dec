"""The support domain's content signals for learned risk models (``Domain.signals``).

O(1) per step: the step's own text and a few counters kept in ``state.extras["signals.support"]``.
The names are fixed (:data:`NAMES`).

- a state-changing call (booking, cancelling, updating, refunding) made without asking the
  customer to confirm since the previous change (support policies require explicit confirmation);
- the same change tool called again (a correction of a change already made);
- lookups done before the first change;
- the agent refusing or citing policy ("not eligible", "non-refundable", "against our policy");
- handing the case to a human;
- the customer's own words when the run carries them (``Step.data["user"]``, or a message step
  from the customer): frustration, asking again, "transfer me".
"""

from __future__ import annotations

import math
import re
from typing import Any

from immunity.learning.signals import bounded
from immunity.models import ActionType, Step

NAMES: tuple[str, ...] = (
    "support_unconfirmed_change",
    "support_log_unconfirmed_changes",
    "support_repeated_change_tool",
    "support_log_lookups_before_change",
    "support_refusal",
    "support_log_refusals",
    "support_escalated",
    "support_user_frustrated",
    "support_user_asks_transfer",
)

_CONFIRM = re.compile(r"\b(?:confirm|proceed|shall i|should i|would you like me to|do you want me to|"
                      r"is that correct|are you sure|go ahead)\b|\(yes/no\)|yes or no", re.I)
_REFUSAL = re.compile(r"\b(?:not eligible|ineligible|non-refundable|nonrefundable|against (?:our|the) policy|"
                      r"(?:policy|rules?) (?:does not|doesn't) allow|not permitted|cannot be (?:changed|modified|"
                      r"cancelled|canceled|refunded)|unable to (?:cancel|modify|change|refund|process))\b", re.I)
_FRUSTRATED = re.compile(r"\b(?:frustrat\w*|ridiculous|unacceptable|annoy\w*|again\?|already (?:told|said|gave)|"
                         r"this is (?:the )?(?:second|third)|angry|upset|terrible|useless)\b", re.I)
_TRANSFER = re.compile(r"\b(?:transfer me|human agent|real person|speak to (?:a|someone)|talk to (?:a|someone)|"
                       r"manager|supervisor)\b", re.I)


def _memo(state: Any) -> dict[str, Any]:
    m = state.extras.get("signals.support")
    if m is None:
        m = state.extras["signals.support"] = {"asked": False, "unconfirmed": 0, "tools": set(), "lookups": 0,
                                               "changed": False, "refusals": 0, "escalated": 0.0}
    return m


def signals(step: Step, state: Any) -> dict[str, float]:
    m = _memo(state)
    act = step.action_type
    unconfirmed = 0.0
    repeated = 0.0
    text = bounded(step.text) if not step.tool else ""
    user_text = str(step.data.get("user") or "") if isinstance(step.data, dict) else ""
    if step.agent == "user" or step.data.get("role") == "user":
        user_text, text = text, ""
    if text and _CONFIRM.search(text):
        m["asked"] = True
    refusal = 1.0 if text and _REFUSAL.search(text) else 0.0
    m["refusals"] += int(refusal)
    if act == ActionType.SEARCH and not m["changed"]:
        m["lookups"] += 1
    if step.tool and (act == ActionType.EDIT or step.side_effect):
        m["changed"] = True
        if not m["asked"]:
            unconfirmed = 1.0
            m["unconfirmed"] += 1
        if step.tool in m["tools"]:
            repeated = 1.0
        elif len(m["tools"]) < 100:
            m["tools"].add(step.tool)
        m["asked"] = False
    if act == ActionType.ESCALATE:
        m["escalated"] = 1.0
    user_text = bounded(user_text)
    return {
        "support_unconfirmed_change": unconfirmed,
        "support_log_unconfirmed_changes": math.log1p(m["unconfirmed"]),
        "support_repeated_change_tool": repeated,
        "support_log_lookups_before_change": math.log1p(m["lookups"]),
        "support_refusal": refusal,
        "support_log_refusals": math.log1p(m["refusals"]),
        "support_escalated": m["escalated"],
        "support_user_frustrated": 1.0 if user_text and _FRUSTRATED.search(user_text) else 0.0,
        "support_user_asks_transfer": 1.0 if user_text and _TRANSFER.search(user_text) else 0.0,
    }
