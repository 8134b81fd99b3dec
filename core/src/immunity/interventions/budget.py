"""Token and cost budgets enforced inside the run, so a run over budget ends with an answer.

The ``budget`` verifier is switched on by ``verifiers=["budget"]`` or, automatically, by setting
``Config.options["budget"]`` (``Runtime(budget={"max_tokens": 20000, "max_cost": 0.50})``).

Before each model call it *reserves* this call and one more (the final answer): the tokens used so
far, plus twice an estimate of this call's input (the messages' characters / 4) and output
(``expected_output_tokens``). Then:

1. the first call after which there would be no room for a final answer gets a hint, in that same
   call, asking for the final answer now with what the run has (so the answer itself still fits);
2. from then on tool calls are blocked with that message (the model can only answer);
3. hard cap: at the next model call once the budget is actually used up (or after
   ``grace_calls`` more calls), the run is stopped with a final answer built from the last model
   output. The run never ends with an exception because of its budget.

Costs come from :data:`PRICES` (USD per million input / output tokens, list prices of the standard
tier as known in 2025-11, not checked against the providers' pages by any test; they change: check
them, and override or add models with
``Config.options["prices"] = {"my-model": [input, output]}``). A model with no known price counts
tokens only (``max_cost`` cannot be enforced for it; this is recorded once in the run's metadata).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from immunity import taxonomy as tx
from immunity.models import Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

log = logging.getLogger("immunity.interventions")

__all__ = ["PRICES", "BudgetVerifier", "estimate_tokens", "find_price", "price_of"]

#: USD per 1M tokens: (input, output). Standard tier list prices as known in 2025-11 (verify them). Editable:
#: ``Config.options["prices"]`` overrides or extends this table.
PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o1": (15.00, 60.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    # Anthropic
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-haiku": (0.25, 1.25),
    # Google
    "gemini-2.5-pro": (1.25, 10.00),
    "gemini-2.5-flash": (0.30, 2.50),
    "gemini-2.5-flash-lite": (0.10, 0.40),
    "gemini-2.0-flash": (0.10, 0.40),
}

_PROVIDER_PREFIXES = ("openai/", "anthropic/", "google/", "models/", "gemini/", "azure/", "bedrock/", "vertex_ai/")

FINAL_NOW = ("[immunity] The budget for this run is used up. Do not call any more tools: give your final answer "
             "now, with what you have found so far, and say what is left undone.")
BLOCKED = ("[immunity] Not run: the budget for this run is used up. Give your final answer now with what you have "
           "found so far.")


def _normalise(model: str) -> str:
    name = model.strip().lower()
    for prefix in _PROVIDER_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def find_price(model: str | None, prices: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """The (input, output) USD-per-million price of ``model``: the longest table key that the
    model name starts with (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``), or ``None``."""
    if not model:
        return None
    table = {**PRICES, **{k.lower(): tuple(v) for k, v in (prices or {}).items()}}
    name = _normalise(model)
    best = None
    for key in table:
        if name == key or name.startswith(key + "-") or name.startswith(key + "@") or name.startswith(key + ":"):
            if best is None or len(key) > len(best):
                best = key
    if best is None:
        return None
    inp, out = table[best]
    return float(inp), float(out)


def price_of(model: str | None, input_tokens: int, output_tokens: int,
             prices: dict[str, Any] | None = None) -> float | None:
    """USD cost of a call, or ``None`` when the model's price is not known."""
    p = find_price(model, prices)
    if p is None:
        return None
    return (input_tokens * p[0] + output_tokens * p[1]) / 1_000_000


def estimate_tokens(messages: list[dict[str, Any]] | None, chars_per_token: float = 4.0) -> int:
    """A cheap estimate of a prompt's tokens: characters / 4, plus 4 per message (roles, separators)."""
    total = 0
    for m in messages or []:
        content = m.get("content")
        n = len(content) if isinstance(content, str) else len(json.dumps(content, default=str)) if content else 0
        if m.get("tool_calls"):
            n += len(json.dumps(m["tool_calls"], default=str))
        total += int(n / chars_per_token) + 4
    return total


@dataclass
class BudgetState:
    stage: int = 0              # 0 within budget, 1 asked for the final answer, 2 stopped
    warned_at_call: int = 0     # model calls finished when the final answer was asked for
    untracked_tokens: int = 0   # estimated tokens of calls that reported no usage
    cost: float = 0.0
    unpriced: list[str] | None = None
    reserved: int = 0
    last_input_estimate: int = 0
    last_output: str | None = None  # the model's last text, for the final answer of a stopped run


class BudgetVerifier:
    """Token and cost limits per run (see the module docstring)."""

    name = "budget"

    def __init__(self, config: Any = None):
        opts = dict((getattr(config, "options", None) or {}).get("budget") or {})
        self.max_tokens = int(opts["max_tokens"]) if opts.get("max_tokens") else None
        self.max_cost = float(opts["max_cost"]) if opts.get("max_cost") else None
        self.expected_output = int(opts.get("expected_output_tokens", 512))
        self.grace_calls = int(opts.get("grace_calls", 1))
        self.chars_per_token = float(opts.get("chars_per_token", 4.0))
        self.prices = dict((getattr(config, "options", None) or {}).get("prices") or {})
        #: switched on without a limit: nothing to enforce (logged once, not an error on every step)
        self.inactive = self.max_tokens is None and self.max_cost is None
        if self.inactive:
            log.warning("the budget verifier is on but options['budget'] sets neither max_tokens nor max_cost")

    def _state(self, state: RunState, run: Run) -> BudgetState:
        b = state.extras.get("budget")
        if b is None:
            b = state.extras["budget"] = BudgetState()
        return b

    def used_tokens(self, state: RunState) -> int:
        b = state.extras.get("budget")
        return state.tokens + (b.untracked_tokens if b else 0)

    def _over(self, tokens: int, cost: float) -> list[str]:
        why = []
        if self.max_tokens is not None and tokens > self.max_tokens:
            why.append(f"{tokens} tokens > {self.max_tokens}")
        if self.max_cost is not None and cost > self.max_cost:
            why.append(f"${cost:.4f} > ${self.max_cost:.4f}")
        return why

    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        if self.inactive:
            return []
        b = self._state(state, run)
        if event.kind == EventKind.MODEL_END:
            self._account(event, b)
            if event.output and event.output.strip():
                b.last_output = event.output
            run.metadata["budget"] = {"tokens": self.used_tokens(state), "cost": round(b.cost, 6),
                                      "max_tokens": self.max_tokens, "max_cost": self.max_cost, "stage": b.stage,
                                      **({"unpriced_models": b.unpriced} if b.unpriced else {})}
            return []
        if event.kind == EventKind.TOOL_START and b.stage >= 1:
            return [Verdict(ok=False, error_class=tx.RUNAWAY_COST, severity=Severity.ERROR, block=True,
                            plugin="budget", message="the run's budget is used up", hint=BLOCKED,
                            evidence={"stage": "block", "tokens": self.used_tokens(state), "cost": round(b.cost, 6)})]
        if event.kind != EventKind.MODEL_START:
            return []
        used = self.used_tokens(state)
        est_in = estimate_tokens(event.messages, self.chars_per_token)
        b.last_input_estimate = est_in
        reserve = est_in + self.expected_output
        call_cost = price_of(event.model, est_in, self.expected_output, self.prices) or 0.0
        b.reserved = used + reserve
        evidence = {"tokens": used, "reserved": reserve, "cost": round(b.cost, 6), "max_tokens": self.max_tokens,
                    "max_cost": self.max_cost}
        if b.stage == 0:
            # this call and one more (the final answer) must fit; if not, this call is the last one
            why = self._over(used + 2 * reserve, b.cost + 2 * call_cost)
            if not why:
                return []
            b.stage, b.warned_at_call = 1, state.model_calls
            return [Verdict(ok=False, error_class=tx.RUNAWAY_COST, severity=Severity.ERROR, plugin="budget",
                            message=f"the budget has no room after this call ({'; '.join(why)} with this call and a final "
                                    "answer reserved)",
                            hint=FINAL_NOW, evidence={**evidence, "stage": "final_answer"})]
        calls_since = state.model_calls - b.warned_at_call
        used_up = self._over(used, b.cost) or (
            (self.max_tokens is not None and used >= self.max_tokens)
            or (self.max_cost is not None and b.cost >= self.max_cost))
        if b.stage >= 2 or used_up or calls_since > self.grace_calls:
            b.stage = 2
            limit = " and ".join(x for x in (f"{self.max_tokens} tokens" if self.max_tokens else "",
                                             f"${self.max_cost}" if self.max_cost else "") if x)
            return [Verdict(ok=False, error_class=tx.RUNAWAY_COST, severity=Severity.CRITICAL, plugin="budget",
                            message=f"the run's budget ({limit}) is used up: {used} tokens, ${b.cost:.4f}",
                            hint=FINAL_NOW, evidence={**evidence, "stage": "stop"})]
        return [Verdict(ok=False, error_class=tx.RUNAWAY_COST, severity=Severity.ERROR, plugin="budget",
                        message="the run's budget is used up; waiting for the final answer", hint=FINAL_NOW,
                        evidence={**evidence, "stage": "final_answer"})]

    def _account(self, event: Event, b: BudgetState) -> None:
        usage = event.usage or {}
        inp = int(usage.get("input_tokens") or usage.get("prompt_tokens") or 0)
        out = int(usage.get("output_tokens") or usage.get("completion_tokens") or 0)
        if not usage:
            # no usage reported: count the estimate so the budget still moves
            out = int(len(event.output or "") / self.chars_per_token) + 5 * len(event.data.get("tool_calls") or [])
            inp = b.last_input_estimate
            b.untracked_tokens += inp + out
        if event.cost is not None:
            b.cost += float(event.cost)
            return
        cost = price_of(event.model, inp, out, self.prices)
        if cost is None:
            if event.model and (b.unpriced is None or event.model not in b.unpriced):
                b.unpriced = [*(b.unpriced or []), event.model]
            return
        b.cost += cost

    @staticmethod
    def summary(state: RunState) -> dict[str, Any]:
        b = state.extras.get("budget")
        return asdict(b) if isinstance(b, BudgetState) else {}
