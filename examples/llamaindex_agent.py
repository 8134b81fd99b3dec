"""A LlamaIndex FunctionAgent protected by immunity.

Offline by default: a scripted model plays a support agent that first calls a tool with a bad order
id (the tool fails, immunity adds a typed hint to the next model call only, the model corrects
itself), then asks for a refund over the limit (a verifier blocks the call before it runs and the
model is told why), then refunds within the limit and answers.

With ``OPENAI_API_KEY`` set, the same agent runs on a real OpenAI model instead (needs
``pip install llama-index-llms-openai``; ``OPENAI_MODEL`` picks the model, default gpt-4o-mini)::

    python examples/llamaindex_agent.py                 # offline, scripted model
    python examples/llamaindex_agent.py --store runs.db # keep the run; see it with `immunity runs show <id>`
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from immunity import EventKind, Severity, Verdict, hookimpl
from immunity.runtime import Runtime
from immunity.timeline import render_run
from llama_index.core.agent.workflow import FunctionAgent

ORDERS = {"A-17": {"item": "kettle", "paid": 100.0}}
REFUNDS: list[tuple[str, float]] = []
REFUND_LIMIT = 100.0


def lookup_order(order_id: str) -> str:
    """Look up an order by its id (ids look like A-17)."""
    if order_id not in ORDERS:
        raise KeyError(f"unknown order id {order_id!r}; order ids look like A-17")
    order = ORDERS[order_id]
    return f"order {order_id}: {order['item']}, paid {order['paid']:.2f}"


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


def scripted_llm() -> Any:
    from immunity_llamaindex.testing import ScriptedLLM, tool_call

    def after_lookup_error(messages: list[Any]) -> Any:
        hinted = any("[immunity]" in (m.content or "") for m in messages if m.role.value == "user")
        return tool_call("lookup_order", {"order_id": "A-17" if hinted else "17"})

    def after_block(messages: list[Any]) -> Any:
        blocked = any("Blocked by immunity" in (m.content or "") for m in messages)
        return tool_call("refund_order", {"order_id": "A-17", "amount": 100.0 if blocked else 250.0})

    return ScriptedLLM([
        tool_call("lookup_order", {"order_id": "17"}),
        after_lookup_error,
        tool_call("refund_order", {"order_id": "A-17", "amount": 250.0}),
        after_block,
        "I refunded 100.00 on order A-17 (the kettle), the most a refund can be.",
    ])


def real_llm() -> Any:
    from llama_index.llms.openai import OpenAI  # pip install llama-index-llms-openai

    return OpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))


async def main(store: str) -> None:
    offline = not os.environ.get("OPENAI_API_KEY")
    llm = scripted_llm() if offline else real_llm()
    agent = FunctionAgent(name="support", tools=[lookup_order, refund_order], llm=llm,
                          system_prompt="You are a support agent. Look orders up before refunding them.")

    rt = Runtime(store=store, domain="support", plugins=[RefundLimit()])
    guard = rt.protect(agent)                    # the one line; the run below is unchanged
    handler = agent.run(user_msg="My kettle (order 17) broke. I paid 250, refund me in full.")
    result = await handler

    print("model:", "scripted (offline)" if offline else getattr(llm, "model", "real"))
    print("answer:", result)
    print("refunds made:", REFUNDS)
    if offline:
        saw = [i for i, call in enumerate(llm.calls) if any("[immunity]" in (m.content or "") for m in call)]
        memory = await handler.ctx.store.get("memory")
        kept = any("[immunity]" in (m.content or "") for m in await memory.aget_all())
        print(f"hint seen by model calls: {saw}; hint kept in the agent's memory: {kept}")
    rt.flush()
    print()
    print(render_run(rt.store, rt.store.get_run(guard.run_id_for(handler))))
    rt.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=":memory:", help="where to keep the run (a path, or :memory:)")
    asyncio.run(main(parser.parse_args().store))
