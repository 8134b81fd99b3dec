"""A scripted CrewAI model for offline tests, demos and benchmarks.

:class:`ScriptedLLM` is a real :class:`crewai.BaseLLM`: CrewAI's agent executor calls it exactly
like a provider model, with native tool calling. Each call takes the next *turn* of its script:

- a ``str``: the model answers with this text (in native tool-calling mode: the final answer);
- a :class:`ToolCall` or a list of them: the model asks for these tool calls (OpenAI-style
  ``{"id", "type": "function", "function": {"name", "arguments"}}`` dicts, as CrewAI expects);
- a callable taking the messages of this call (a list of ``{"role", "content", ...}`` dicts) and
  returning one of the above, so a turn can react to what the model was shown (a hint, an error);
- an ``Exception`` instance: the call raises it (a provider error).

Every call's messages are copied into :attr:`ScriptedLLM.calls`, so a test can prove what the
model saw; every call reports token usage (``prompt_tokens`` = the characters of the prompt / 4,
``completion_tokens`` = the characters of the answer / 4) to CrewAI's own usage accounting.

This module imports CrewAI: import it only where CrewAI is installed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crewai import BaseLLM
from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import llm_call_context
from pydantic import Field, PrivateAttr

__all__ = ["ScriptExhausted", "ScriptedLLM", "ToolCall", "restored_crewai_globals", "text_of"]


@contextlib.contextmanager
def restored_crewai_globals() -> Iterator[None]:
    """CrewAI's hooks and event handlers are process-global: on exit, every hook registered inside
    the block, and any event handler of this package, is removed, so one test's adapter never sees
    another test's crew (a pytest fixture wraps its ``yield`` in this)."""
    from crewai.events import crewai_event_bus
    from crewai.hooks import InterceptionPoint, get_hooks, unregister_hook

    hooks = {p: get_hooks(p) for p in InterceptionPoint}
    sync = dict(crewai_event_bus._sync_handlers)
    try:
        yield
    finally:
        crewai_event_bus.flush()
        for point, before in hooks.items():
            for hook in get_hooks(point):
                if not any(hook is h for h in before):
                    unregister_hook(point, hook)
        for event_type, handlers in dict(crewai_event_bus._sync_handlers).items():
            for handler in handlers - sync.get(event_type, frozenset()):
                # only ours: CrewAI registers its checkpoint writer once per process, lazily
                if (getattr(handler, "__module__", "") or "").startswith("immunity_crewai"):
                    crewai_event_bus.off(event_type, handler)


class ScriptExhausted(RuntimeError):
    """The model was called more times than its script has turns (and it has no ``default``)."""


@dataclass
class ToolCall:
    """One tool call a scripted turn asks for."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_native(self, n: int) -> dict[str, Any]:
        return {"id": self.id or f"call_{n}", "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}


Turn = str | ToolCall | list[ToolCall] | BaseException | Callable[[list[dict[str, Any]]], Any]


def text_of(messages: list[dict[str, Any]]) -> str:
    """All message contents of one call joined, for ``"..." in text_of(m)`` checks."""
    return "\n".join(str(m.get("content") or "") for m in messages)


class ScriptedLLM(BaseLLM):
    """A CrewAI model that plays a script of turns (see the module docstring)::

        llm = ScriptedLLM(script=[ToolCall("lookup", {"key": "a"}), "The value is 42."])
        agent = Agent(role="analyst", goal="...", backstory="...", llm=llm, tools=[Lookup()])
    """

    model: str = "scripted"
    script: list[Any] = Field(default_factory=list, exclude=True)
    default: str | None = Field(default=None, exclude=True)
    native_tools: bool = Field(default=True, exclude=True)
    calls: list[list[dict[str, Any]]] = Field(default_factory=list, exclude=True)
    _position: int = PrivateAttr(default=0)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _n_tool_calls: int = PrivateAttr(default=0)

    def __init__(self, **data: Any):
        data.setdefault("model", "scripted")  # CrewAI requires a model name before field defaults apply
        super().__init__(**data)

    # ------------------------------------------------------------------ capabilities
    def supports_function_calling(self) -> bool:
        return self.native_tools

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 128_000

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        return max(1, len(text_of(messages if isinstance(messages, list) else [{"content": messages}])) // 4)

    # ------------------------------------------------------------------ the script
    @property
    def position(self) -> int:
        """How many turns were played."""
        return self._position

    def _next_turn(self, messages: list[dict[str, Any]]) -> Any:
        with self._lock:
            if self._position >= len(self.script):
                if self.default is None:
                    raise ScriptExhausted(f"scripted model called {self._position + 1} times; the script has "
                                          f"{len(self.script)} turns")
                self._position += 1
                return self.default
            turn = self.script[self._position]
            self._position += 1
        if callable(turn) and not isinstance(turn, ToolCall | BaseException):
            turn = turn(messages)
        return turn

    def _native(self, turn: Any) -> str | list[dict[str, Any]]:
        if isinstance(turn, ToolCall):
            turn = [turn]
        if isinstance(turn, list):
            out = []
            for tc in turn:
                with self._lock:
                    self._n_tool_calls += 1
                    n = self._n_tool_calls
                out.append(tc.to_native(n) if isinstance(tc, ToolCall) else tc)
            if not self.native_tools:  # text (ReAct) protocol: one action per turn
                first = out[0]["function"]
                return f"Thought: I should use a tool.\nAction: {first['name']}\nAction Input: {first['arguments']}"
            return out
        return str(turn)

    # ------------------------------------------------------------------ BaseLLM
    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        seen = copy.deepcopy([dict(m) for m in messages])
        with self._lock:
            self.calls.append(seen)
        with llm_call_context():
            self._emit_call_started_event(messages=messages, tools=tools, callbacks=callbacks,
                                          available_functions=available_functions, from_task=from_task,
                                          from_agent=from_agent)
            self._invoke_before_llm_call_hooks(messages, from_agent)
            try:
                turn = self._next_turn(seen)
                if isinstance(turn, BaseException):
                    raise turn
                out = self._native(turn)
            except Exception as exc:
                self._emit_call_failed_event(error=str(exc), from_task=from_task, from_agent=from_agent)
                raise
            prompt = max(1, len(text_of(seen)) // 4)
            completion = max(1, len(out if isinstance(out, str) else json.dumps(out)) // 4)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            self._track_token_usage_internal(usage)
            self._emit_call_completed_event(response=out,
                                            call_type=LLMCallType.TOOL_CALL if isinstance(out, list)
                                            else LLMCallType.LLM_CALL,
                                            from_task=from_task, from_agent=from_agent, messages=messages,
                                            usage=usage)
            return out

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
                    from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        return self.call(messages, tools=tools, callbacks=callbacks, available_functions=available_functions,
                         from_task=from_task, from_agent=from_agent, response_model=response_model)
