"""An OpenAI Agents SDK agent (with a handoff) protected by immunity.

Offline by default: a scripted model plays a triage agent that looks an order up with a badly
formatted id (the tool fails; immunity adds a typed hint to the next model call only; the model
corrects itself), hands off to a billing agent, which asks for a refund over the limit (a verifier
blocks the call before it runs and the model is told why, through a tool guardrail), then refunds
within the limit and answers. The user's ``Runner.run_sync`` call is unchanged: one line attaches
immunity.

With ``OPENAI_API_KEY`` set, the same agents run on a real OpenAI model instead (``OPENAI_MODEL``
picks it, default gpt-4.1-mini)::

    python examples/openai_agents_agent.py                  # offline, scripted model
    python examples/openai_agents_agent.py --store runs.db  # keep the run; `immunity runs show <id>`
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from agents import Agent, Runner, function_tool
from immunity import EventKind, Severity, Verdict, hookimpl
from immunity.runtime import Runtime
from immunity.timeline import render_run

ORDERS = {"A17": {"item": "kettle", "paid": 100.0}}
REFUNDS: list[tuple[str, float]] = []
REFUND_LIMIT = 100.0


@function_tool
def lookup_order(order_id: str) -> str:
    """Look up an order by its id (ids are letters and digits, like A17)."""
    if order_id not in ORDERS:
        raise KeyError(f"unknown order id {order_id!r}; ids are letters and digits, like A17")
    order = ORDERS[order_id]
    return f"order {order_id}: {order['item']}, paid {order['paid']:.2f}"


@function_tool
def refund_order(order_id: str, amount: float) -> str:
    """Refund an amount on an order."""
    REFUNDS.append((order_id, float(amount)))
    return f"refunded {float(amount):.2f} on {order_id}"


class RefundLimit:
    """A verifier: refunds above the limit are blocked before the tool runs."""

    @hookimpl
    def immunity_verify(self, event: Any) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "refund_order":
            amount = float((event.arguments or {}).get("amount", 0))
            if amount > REFUND_LIMIT:
                return Verdict(ok=False, block=True, error_class="policy_violation", severity=Severity.ERROR,
                               message=f"refund of {amount:.2f} is over the {REFUND_LIMIT:.2f} limit",
                               hint=f"Refunds are limited to {REFUND_LIMIT:.2f}; refund at most that.")
        return None


def scripted_model() -> Any:
    from immunity_openai_agents.testing import ScriptedModel, call

    def hinted(seen: list[dict[str, Any]]) -> bool:
        return any(str(m.get("content", "")).startswith("[immunity]") for m in seen if m.get("role") == "user")

    def blocked(seen: list[dict[str, Any]]) -> bool:
        return any(m.get("type") == "function_call_output" and "Blocked by immunity" in str(m.get("output"))
                   for m in seen)

    return ScriptedModel([
        call("lookup_order", order_id="#A17"),
        lambda seen: call("lookup_order", order_id="A17") if hinted(seen) else "I could not find the order.",
        call("transfer_to_billing"),
        call("refund_order", order_id="A17", amount=120.0),
        lambda seen: call("refund_order", order_id="A17", amount=100.0) if blocked(seen) else "Refund sent.",
        "I refunded 100.00 on order A17, the most our policy allows.",
    ], name="scripted")


def build_agents(model: Any) -> Agent:
    billing = Agent(name="billing", instructions="Refund orders within the policy limit.", model=model,
                    tools=[refund_order])
    return Agent(name="triage", instructions="Look the order up, then hand refunds to billing.", model=model,
                 tools=[lookup_order], handoffs=[billing])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=":memory:", help="where to keep runs (default: in memory)")
    args = parser.parse_args(argv)

    if os.environ.get("OPENAI_API_KEY"):
        model: Any = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")  # the SDK's own OpenAI model
        mode = f"real model {model}"
    else:
        model = scripted_model()
        mode = "scripted model, offline"

    triage = build_agents(model)
    rt = Runtime(store=args.store, plugins=[RefundLimit()])
    with rt:
        guard = rt.protect(triage)  # the one line; Runner calls below stay as they were
        result = Runner.run_sync(triage, "My order #A17 arrived broken, please refund 120.")
        rt.flush()
        run = rt.store.get_run(guard.run_ids[-1])
        print(f"openai-agents example ({mode})")
        print(f"final output: {result.final_output}")
        print(f"refunds made: {REFUNDS}")
        print()
        print(render_run(rt.store, run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
