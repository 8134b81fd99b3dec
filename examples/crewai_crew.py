"""immunity on a CrewAI crew: one line attaches it, the crew's own code is unchanged.

    python examples/crewai_crew.py                 # offline, with a scripted model
    OPENAI_API_KEY=... python examples/crewai_crew.py   # the same crew on a real OpenAI model

A support crew answers a refund question. Its model first calls the order tool with a malformed
order id (the tool fails), then tries to refund an order twice. immunity:

- tells the model, in its next call only, why the tool failed (retry with a typed hint);
- blocks a refund above the policy limit before it runs, and tells the model why;
- keeps every event, step, verdict and intervention in ``immunity-example.db``.

With a real model the run differs from call to call; the offline script shows every mechanism.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

# CrewAI writes under $HOME and phones home unless told otherwise: set this before importing it.
for key, value in {"CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_DISABLE_TRACKING": "true",
                   "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_TRACING_ENABLED": "false",
                   "CREWAI_TESTING": "true", "OTEL_SDK_DISABLED": "true",
                   "CREWAI_STORAGE_DIR": os.path.join(tempfile.gettempdir(), "immunity-example-crewai")}.items():
    os.environ.setdefault(key, value)

import immunity  # noqa: E402
from crewai import Agent, Crew, Task  # noqa: E402
from crewai.tools import BaseTool  # noqa: E402
from immunity import Event, EventKind, Severity, Verdict, hookimpl  # noqa: E402

ORDERS = {"A-1001": {"item": "headphones", "paid": 59.0}, "A-1002": {"item": "laptop", "paid": 1499.0}}
REFUND_LIMIT = 100.0


class GetOrder(BaseTool):
    name: str = "get_order"
    description: str = "Look up an order by its id, e.g. A-1001."

    def _run(self, order_id: str) -> str:
        order = ORDERS.get(order_id.strip().upper())
        if order is None:
            raise LookupError(f"no order {order_id!r}: order ids look like A-1001")
        return f"order {order_id}: {order['item']}, paid {order['paid']:.2f} EUR"


class Refund(BaseTool):
    name: str = "refund"
    description: str = "Refund an amount in EUR for an order."

    def _run(self, order_id: str, amount: float) -> str:
        return f"refunded {amount:.2f} EUR for {order_id}"


class RefundPolicy:
    """A verifier plugin: refunds above the limit need a human, so the agent may not make them."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "refund":
            amount = float((event.arguments or {}).get("amount", 0))
            if amount > REFUND_LIMIT:
                return Verdict(ok=False, block=True, error_class="policy_violation", severity=Severity.ERROR,
                               message=f"refund of {amount:.2f} EUR is above the {REFUND_LIMIT:.0f} EUR limit",
                               hint=f"[immunity] Refunds above {REFUND_LIMIT:.0f} EUR need a human: tell the "
                                    "customer their request was passed on instead of refunding.")
        return None


def scripted_model() -> Any:
    from immunity_crewai.testing import ScriptedLLM, ToolCall

    def after_error(messages: list[dict[str, Any]]) -> Any:
        hinted = any("[immunity]" in str(m.get("content")) for m in messages if m.get("role") == "user")
        return ToolCall("get_order", {"order_id": "A-1002" if hinted else "1002"})

    def after_block(messages: list[dict[str, Any]]) -> Any:
        last_tool = [m for m in messages if m.get("role") == "tool"][-1]["content"]
        if last_tool.startswith("Blocked by immunity"):
            return "Your refund request for the laptop (1499.00 EUR) was passed on to a colleague for approval."
        return "Your laptop was refunded."

    return ScriptedLLM(script=[ToolCall("get_order", {"order_id": "1002"}), after_error,
                               ToolCall("refund", {"order_id": "A-1002", "amount": 1499.0}), after_block])


def build_crew(llm: Any) -> Crew:
    agent = Agent(role="support agent", goal="Resolve refund requests within policy",
                  backstory="You work in customer support. Use the tools.", llm=llm,
                  tools=[GetOrder(), Refund()], verbose=False)
    task = Task(description="The customer asks: please refund my laptop, order 1002.",
                expected_output="One or two sentences for the customer.", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False)


def main() -> int:
    if os.environ.get("OPENAI_API_KEY"):
        from crewai import LLM

        llm: Any = LLM(model=os.environ.get("IMMUNITY_EXAMPLE_MODEL", "gpt-4o-mini"))
        mode = "a real OpenAI model"
    else:
        llm = scripted_model()
        mode = "a scripted model (offline)"
    store = os.environ.get("IMMUNITY_EXAMPLE_STORE", "immunity-example.db")

    crew = build_crew(llm)
    guard = immunity.protect(crew, store=store, plugins=[RefundPolicy()])  # the one line
    result = crew.kickoff()
    guard.uninstrument()

    rt = guard.runtime
    rt.flush()
    session = [s for s in rt.sessions.values() if s.run.framework == "crewai"][-1]
    run = rt.store.get_run(session.run.run_id)
    print(f"crew on {mode}")
    print(f"answer: {result.raw}")
    print(f"run {run.run_id}: status={run.status} steps={run.steps} tokens={run.tokens}")
    for step in rt.store.steps(run.run_id):
        what = f"{step.tool} {step.arguments}" if step.tool else (step.text or "")[:70]
        print(f"  step {step.index} {step.action_type.value:<7} {what}" + (f"  error: {step.error}" if step.error else ""))
    for rec in rt.store.recoveries(run.run_id):
        print(f"  recovery {rec.kind.value}: {rec.hint}")
    for iv in rt.store.interventions(run.run_id):
        print(f"  intervention {iv.kind.value}: {iv.text}")
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
