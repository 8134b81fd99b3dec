"""A scripted chat model for LangGraph: real tool calls from a script, offline.

::

    from immunity_langgraph.testing import ScriptedChatModel, tool_call

    model = ScriptedChatModel(script=[
        tool_call("run_tests", path="tests/"),             # turn 1: call a tool
        lambda messages: "All tests pass.",                # turn 2: decided from what it sees
    ])
    graph = create_react_agent(model, [run_tests])

Each turn is one of: an ``AIMessage``; a ``str`` (a plain answer); a tool call dict
``{"name": ..., "args": {...}}`` or a list of them (one model turn with parallel tool calls); or a
callable that receives the messages of this call (``list[BaseMessage]``) and returns one of those.

Every call's messages are recorded (:attr:`ScriptedChatModel.calls`, or as role/content dicts in
:meth:`ScriptedChatModel.seen`), so a test can prove what reached the model. Token usage is reported
on every reply (``usage_metadata``): input tokens are the words of the prompt, output tokens the
words of the reply plus five per tool call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

__all__ = ["ScriptExhausted", "ScriptedChatModel", "message_dicts", "tool_call"]


class ScriptExhausted(RuntimeError):
    """The model was called more times than its script has turns."""


def tool_call(name: str, /, **args: Any) -> dict[str, Any]:
    """A tool call turn: ``tool_call("get_weather", city="Paris")``."""
    return {"name": name, "args": args}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content
                        if isinstance(part, str | dict))
    return str(content)


def message_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Messages as ``{"role", "content"}`` dicts (``tool_calls`` / ``tool_call_id`` when present)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": m.type, "content": _text(m.content)}
        if isinstance(m, AIMessage) and m.tool_calls:
            d["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c.get("id")} for c in m.tool_calls]
        call_id = getattr(m, "tool_call_id", None)
        if call_id:
            d["tool_call_id"] = call_id
        out.append(d)
    return out


Turn = AIMessage | str | dict[str, Any] | list[dict[str, Any]] | Callable[[list[BaseMessage]], Any]


class ScriptedChatModel(BaseChatModel):
    """A chat model that replies from a script and records what it was sent."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: list[Any] = Field(default_factory=list)
    model_name: str = "scripted"
    #: every call's messages, in order (what the model really received)
    calls: list[list[BaseMessage]] = Field(default_factory=list, exclude=True)
    #: the tool schemas bound with ``bind_tools`` (names), for assertions
    bound_tools: list[str] = Field(default_factory=list, exclude=True)

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _turn: int = PrivateAttr(default=0)
    _call_ids: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def seen(self, call: int | None = None) -> Any:
        """The messages of every call (or of call ``call``) as role/content dicts."""
        if call is not None:
            return message_dicts(self.calls[call])
        return [message_dicts(c) for c in self.calls]

    @property
    def turns_used(self) -> int:
        return self._turn

    def reset(self, script: list[Any] | None = None) -> None:
        """Start the script again (optionally a new one) and forget the recorded calls."""
        with self._lock:
            if script is not None:
                self.script = list(script)
            self._turn = 0
            self._call_ids = 0
            self.calls.clear()

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Any:
        names = [getattr(t, "name", None) or getattr(t, "__name__", None) or str(t) for t in tools]
        self.bound_tools = names
        return self.bind(tools=names, **kwargs)

    def _next_turn(self, messages: list[BaseMessage]) -> AIMessage:
        with self._lock:
            self.calls.append(list(messages))
            if self._turn >= len(self.script):
                raise ScriptExhausted(f"the script has {len(self.script)} turns and the model was called again")
            turn = self.script[self._turn]
            self._turn += 1
        if callable(turn):
            turn = turn(list(messages))
        return self._to_message(turn)

    def _new_call_id(self) -> str:
        with self._lock:
            self._call_ids += 1
            return f"call_{self._call_ids}"

    def _to_message(self, turn: Any) -> AIMessage:
        if isinstance(turn, AIMessage):
            msg = turn.model_copy(deep=True)
        elif isinstance(turn, str):
            msg = AIMessage(content=turn)
        elif isinstance(turn, dict):
            msg = AIMessage(content="", tool_calls=[self._call(turn)])
        elif isinstance(turn, list | tuple):
            msg = AIMessage(content="", tool_calls=[self._call(t) for t in turn])
        else:
            raise TypeError(f"a script turn must be an AIMessage, a str, a tool call dict or a list of them, "
                            f"not {type(turn).__name__}")
        return msg

    def _call(self, turn: dict[str, Any]) -> dict[str, Any]:
        return {"name": turn["name"], "args": dict(turn.get("args") or {}), "id": turn.get("id") or self._new_call_id(),
                "type": "tool_call"}

    def _result(self, messages: list[BaseMessage], msg: AIMessage) -> ChatResult:
        prompt_words = sum(len(_text(m.content).split()) for m in messages) or 1
        out_words = len(_text(msg.content).split()) + 5 * len(msg.tool_calls)
        msg.usage_metadata = {"input_tokens": prompt_words, "output_tokens": out_words,
                              "total_tokens": prompt_words + out_words}
        msg.response_metadata = {**msg.response_metadata, "model_name": self.model_name}
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._result(messages, self._next_turn(messages))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._result(messages, self._next_turn(messages))
