"""The support domain's mapping table.

Covers the tau-bench airline and retail tools (the names real support agents are evaluated on) and
the generic helpdesk tools (``lookup_customer``, ``lookup_order``, ``refund``, ``update_ticket``,
``send_reply``, ``close_ticket``, ``escalate``...). Rules are tried in order; the first match wins.

- Reads (``get_*``, ``lookup_*``, ``search_*``, ``find_*``, ``list_*``) are SEARCH.
- State changes (``book_*``, ``cancel_*``, ``update_*``, ``modify_*``, ``refund``, ``send_certificate``,
  ``return_*``, ``exchange_*``) are EDIT with ``side_effect`` and ``needs_verification``: they change the
  customer's records, so they are retried only through the idempotency cache, and the checks require
  the lookup the policy asks for before them.
- ``transfer_to_human_agents`` / ``escalate`` are ESCALATE, never DONE: handing the case over is not
  solving it. ``close_ticket`` / ``resolve_ticket`` are DONE.
- Replies to the customer are RESPOND; ``think`` is PLAN; ``calculate`` is EXECUTE.
"""

from __future__ import annotations

from immunity.domain import Rule

#: Tools that change a customer's records. The checks treat these as state-changing calls.
STATE_CHANGING = (
    r"(?i)book_reservation|cancel_reservation|update_reservation_\w+|send_certificate|"
    r"cancel_pending_order|modify_pending_order_\w+|modify_user_address|return_delivered_order_items|"
    r"exchange_delivered_order_items|refund|issue_refund|process_refund|refund_order|cancel_order|"
    r"cancel_subscription|update_order|modify_order|update_customer|update_account|update_address|"
    r"change_plan|apply_credit|issue_credit|issue_voucher|create_order|place_order|charge_customer"
)

RULES: list[Rule] = [
    # hand-offs first: ``transfer_to_human_agents`` must never read as a finish
    Rule(tool=r"(?i)transfer_to_human_agents?|transfer_to_human|escalate\w*|handoff_to_human|request_human|"
              r"assign_to_human|create_escalation", action="ESCALATE"),
    Rule(tool=r"(?i)transfer_to_\w+|route_to_\w+|assign_ticket", action="DELEGATE", confidence=0.8),
    # state changes
    Rule(tool=STATE_CHANGING, action="EDIT", side_effect=True, needs_verification=True),
    Rule(tool=r"(?i)update_ticket|add_ticket_note|add_note|internal_note|tag_ticket|set_priority|"
              r"create_ticket|log_interaction", action="EDIT", confidence=0.9, side_effect=True),
    # finishing
    Rule(tool=r"(?i)close_ticket|resolve_ticket|mark_resolved|end_conversation|done|finish", action="DONE"),
    # reads
    Rule(tool=r"(?i)get_user_details|get_reservation_details|search_direct_flight|search_onestop_flight|"
              r"list_all_airports|get_flight_status|find_user_id_by_email|find_user_id_by_name_zip|"
              r"get_order_details|get_product_details|list_all_product_types", action="SEARCH"),
    Rule(tool=r"(?i)(lookup|look_up|get|find|search|list|fetch|read|view|check_status|retrieve)_\w+|"
              r"search_kb|search_knowledge_base|kb_search|faq", action="SEARCH", confidence=0.9),
    # checks, replies, reasoning, arithmetic
    Rule(tool=r"(?i)check_policy|verify_\w+|validate_\w+|check_eligibility|policy_check", action="VERIFY"),
    Rule(tool=r"(?i)send_reply|reply|respond|send_message|send_email|draft_reply|ask_customer|"
              r"request_confirmation|notify_customer", action="RESPOND"),
    Rule(tool=r"(?i)think|summari[sz]e|plan|note_to_self", action="PLAN"),
    Rule(tool=r"(?i)calculate|calculator|compute", action="EXECUTE"),
    # plain messages to the customer (no tool): handing over or closing is said in words too
    Rule(tool="", action="ESCALATE", when=r"\b(transferr?(ing|ed)? you|human agent|hand(ing)? (you )?over)\b",
         confidence=0.7),
    Rule(tool="", action="RESPOND", confidence=0.8),
]
