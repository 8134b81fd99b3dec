"""A scripted model for the OpenAI Agents SDK: real tool calls from a script, offline.

::

    from agents import Agent, Runner
    from immunity_openai_agents.testing import ScriptedModel, call

    model = ScriptedModel([
        call("get_weather", city="Paris"),          # turn 1: a tool call
        lambda seen: "It is sunny in Paris.",        # turn 2: decided from what the model sees
    ])
    agent = Agent(name="weather", model=model, tools=[get_weather])
    Runner.run_sync(agent, "Weather in Paris?")
    model.calls[1].input                             # exactly what the model received on call 2

A turn is a final answer (``str``), a tool call (:func:`call`, also used for handoffs:
``call("transfer_to_billing")``), a list of tool calls (parallel calls), or a callable that
receives the messages the model sees on this call (a list of plain dicts) and returns one of those.

Importing this module imports the SDK (it is for tests and examples, not for the adapter itself).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents import Model, ModelProvider, ModelResponse, Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

__all__ = ["ModelCall", "ScriptedModel", "ScriptedModelProvider", "ToolCall", "Turn", "call", "plain_items"]


@dataclass
class ToolCall:
    """A tool call the scripted model emits (a function tool or a handoff ``transfer_to_<agent>``)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def call(name: str, /, **arguments: Any) -> ToolCall:
    """A tool call turn: ``call("get_weather", city="Paris")``."""
    return ToolCall(name, dict(arguments))


Turn = str | ToolCall | Sequence[ToolCall] | Callable[[list[dict[str, Any]]], Any]


@dataclass
class ModelCall:
    """One call the scripted model received."""

    instructions: str | None
    input: list[dict[str, Any]]
    tools: list[str]
    handoffs: list[str]
    output: list[dict[str, Any]]
    usage: dict[str, int]

    def texts(self, role: str | None = None) -> list[str]:
        """The text contents of the input messages (optionally of one role)."""
        out = []
        for item in self.input:
            if role is not None and item.get("role") != role:
                continue
            content = item.get("content")
            if isinstance(content, str):
                out.append(content)
            elif isinstance(content, list):
                out.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return out


def plain_items(items: str | Sequence[Any]) -> list[dict[str, Any]]:
    """Input items as plain dicts (a string input becomes one user message)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(dict(item))
        elif hasattr(item, "model_dump"):
            out.append(item.model_dump(exclude_unset=True))
        else:
            out.append({"value": str(item)})
    return out


def _words(obj: Any) -> int:
    return len(json.dumps(obj, default=str).split())


class ScriptedModel(Model):
    """A :class:`agents.Model` that plays a script of turns and records every call.

    :param turns: the script, one turn per model call (see the module docstring).
    :param name: the model's name (reported as ``model`` in usage and responses).
    :param on_exhausted: the answer given once the script has run out; ``None`` raises instead.
    """

    def __init__(self, turns: Sequence[Turn], *, name: str = "scripted", on_exhausted: str | None = None):
        self.turns = list(turns)
        self.name = name
        self.on_exhausted = on_exhausted
        self.calls: list[ModelCall] = []
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]

    # ------------------------------------------------------------------ the script
    def _next_turn(self, seen: list[dict[str, Any]]) -> Any:
        index = len(self.calls)
        if index >= len(self.turns):
            if self.on_exhausted is None:
                raise RuntimeError(f"scripted model {self.name!r} has no turn left for call {index + 1}")
            return self.on_exhausted
        turn = self.turns[index]
        return turn(seen) if callable(turn) else turn

    def _respond(self, system_instructions: str | None, input: str | list[Any], tools: list[Any],
                 handoffs: list[Any]) -> ModelResponse:
        seen = plain_items(input)
        turn = self._next_turn(seen)
        if isinstance(turn, ToolCall):
            turn = [turn]
        output: list[Any] = []
        if isinstance(turn, str):
            output.append(ResponseOutputMessage(
                type="message", id=f"msg_{self._prefix}_{next(self._ids)}", role="assistant", status="completed",
                content=[ResponseOutputText(type="output_text", text=turn, annotations=[])]))
        else:
            for tc in turn:
                n = next(self._ids)
                output.append(ResponseFunctionToolCall(
                    type="function_call", id=f"fc_{self._prefix}_{n}", call_id=f"call_{self._prefix}_{n}",
                    name=tc.name, arguments=json.dumps(tc.arguments), status="completed"))
        dumped = [o.model_dump(exclude_unset=True) for o in output]
        in_tokens = _words(seen) + _words(system_instructions or "")
        out_tokens = _words(dumped)
        usage = {"input_tokens": in_tokens, "output_tokens": out_tokens, "total_tokens": in_tokens + out_tokens}
        self.calls.append(ModelCall(
            instructions=system_instructions, input=seen,
            tools=[getattr(t, "name", type(t).__name__) for t in tools],
            handoffs=[getattr(h, "tool_name", str(h)) for h in handoffs], output=dumped, usage=usage))
        return ModelResponse(output=output, usage=Usage(requests=1, input_tokens=in_tokens, output_tokens=out_tokens,
                                                        total_tokens=in_tokens + out_tokens), response_id=None)

    # ------------------------------------------------------------------ agents.Model
    async def get_response(self, system_instructions: str | None, input: str | list[Any], model_settings: Any,
                           tools: list[Any], output_schema: Any, handoffs: list[Any], tracing: Any, *,
                           previous_response_id: str | None = None, conversation_id: str | None = None,
                           prompt: Any = None, **kwargs: Any) -> ModelResponse:
        return self._respond(system_instructions, input, tools, handoffs)

    async def stream_response(self, system_instructions: str | None, input: str | list[Any], model_settings: Any,
                              tools: list[Any], output_schema: Any, handoffs: list[Any], tracing: Any, *,
                              previous_response_id: str | None = None, conversation_id: str | None = None,
                              prompt: Any = None, **kwargs: Any) -> AsyncIterator[Any]:
        response = self._respond(system_instructions, input, tools, handoffs)
        usage = response.usage
        yield ResponseCompletedEvent(
            type="response.completed", sequence_number=0,
            response=Response.model_validate({
                "id": f"resp_{self._prefix}_{len(self.calls)}", "created_at": 0, "model": self.name,
                "object": "response", "output": [o.model_dump() for o in response.output],
                "tool_choice": "auto", "tools": [], "parallel_tool_calls": False,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                          "total_tokens": usage.total_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}},
            }))


class ScriptedModelProvider(ModelProvider):
    """A :class:`agents.ModelProvider` that returns the same scripted model for every name, for
    ``RunConfig(model_provider=ScriptedModelProvider(model))``."""

    def __init__(self, model: ScriptedModel):
        self.model = model

    def get_model(self, model_name: str | None) -> Model:
        return self.model
