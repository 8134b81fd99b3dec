"""A fleet of scripted support agents run through a real framework with chaos on: what the demo
(``examples/chaos_fleet.py``) and its test run.

Each agent refunds a customer's order (look it up, refund its total, tell the customer) in a real
framework runtime (LangGraph's prebuilt ReAct agent by default, through the benchmark's drivers),
with the benchmark's scripted model: it follows immunity's hints with probability ``p``, does not
check arithmetic on its own, and does not retry a failed call unless a hint told it to. The order
lookup returns line items and a total, so the support domain's ``order_totals`` cross-check can
see a wrong-but-plausible total. The run's outcome is judged from the environment's ground truth
(the refunds actually made), never from immunity's verdicts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from immunity.bench.tasks import (
    Action,
    FaultPlan,
    Observation,
    ScriptedAgent,
    SupportTask,
    ToolCallAction,
    ToolSpec,
)
from immunity.chaos.injector import Chaos


class OrderRefundTask(SupportTask):
    """:class:`~immunity.bench.tasks.SupportTask` with line items in the order lookup."""

    name = "order_refund"

    def __init__(self, rng: random.Random):
        super().__init__(rng)
        n = rng.randrange(1, 4)
        prices = [round(rng.randrange(500, 9000) / 100, 2) for _ in range(n)]
        qty = [rng.randrange(1, 3) for _ in range(n)]
        self.items = [{"sku": f"SKU-{rng.randrange(1000, 9999)}", "price": p, "quantity": q} for p, q in zip(prices, qty,
                                                                                                              strict=True)]
        self.shipping = 4.99
        self.total = round(sum(p * q for p, q in zip(prices, qty, strict=True)) + self.shipping, 2)

    def tools(self) -> list[ToolSpec]:
        specs = super().tools()

        def get_order_details(order_id: str) -> str:
            if order_id != self.order_id:
                return "Error: order not found"
            return json.dumps({"order_id": order_id, "status": "delivered", "total": self.total,
                               "shipping": self.shipping, "items": self.items, "user_id": "u_1042"})

        return [ToolSpec("get_order_details", "Look up an order by id.", {"order_id": "string"}, get_order_details),
                specs[1]]

    def _lookups(self, obs: Observation) -> list[Any]:
        return obs.ok("get_order_details")

    def next_action(self, obs: Observation, retry_failed: bool) -> Action:
        looks = self._lookups(obs)
        # following a hint means: look the order up again (at most twice more) before refunding
        if retry_failed and looks and not obs.ok("refund") and len(looks) < 3 and self._hinted_since(obs, looks[-1]):
            return ToolCallAction("get_order_details", {"order_id": self.order_id})
        return super().next_action(obs, retry_failed)

    @staticmethod
    def _hinted_since(obs: Observation, call: Any) -> bool:
        return any("does not add up" in text for _key, text in obs.notes)


@dataclass
class FleetRun:
    run_id: str | None
    outcome: str
    answer: str | None
    error: str | None
    injections: int


def run_fleet(runtime: Any, *, runs: int, chaos: Chaos | None = None, framework: str = "langgraph", p: float = 1.0,
              seed: int = 0, agent: str = "refund-bot", tasks: int = 4) -> list[FleetRun]:
    """Run ``runs`` agents one after the other through ``runtime`` (already configured with the
    support domain); returns each run's id and judged outcome (also stored on the run). The
    customers' orders rotate over ``tasks`` orders (the same ones for every seed), so failed runs
    have successful runs of the same task to be compared with (``immunity explain``)."""
    from immunity.bench.drivers import bench_drivers

    driver_cls = bench_drivers(getattr(runtime, "pm", None)).get(framework)
    if driver_cls is None or not driver_cls.available():
        raise RuntimeError(f"{framework} and its immunity adapter are not installed")
    out: list[FleetRun] = []
    keep: list[Any] = []  # the drivers name threads after the model object's id: keep every one alive
    for i in range(runs):
        task = OrderRefundTask(random.Random(f"fleet-order:{i % max(1, tasks)}"))
        scripted = ScriptedAgent(task, FaultPlan("none"), p, seed * 1000 + i)
        model = chaos.model(scripted, name=f"{framework}-scripted") if chaos is not None else scripted
        keep.append(model)
        tools = [(spec, chaos.tool(spec.fn, spec.name) if chaos is not None else spec.fn) for spec in task.tools()]
        before = len(chaos.injections) if chaos is not None else 0
        known = {r.run_id for r in runtime.store.runs(limit=None)}
        result = driver_cls().run(task, tools, model, runtime=runtime)  # type: ignore[arg-type]
        runtime.flush()
        new = [r for r in runtime.store.runs(limit=None) if r.run_id not in known]
        outcome = "success" if result.error is None and task.judge(result.answer) else "failure"
        run_id = new[0].run_id if new else None
        if run_id is not None:
            runtime.store.update_run(run_id, outcome=outcome, agent=agent)
        out.append(FleetRun(run_id, outcome, result.answer, result.error,
                            (len(chaos.injections) - before) if chaos is not None else 0))
    return out


__all__ = ["FleetRun", "OrderRefundTask", "run_fleet"]

