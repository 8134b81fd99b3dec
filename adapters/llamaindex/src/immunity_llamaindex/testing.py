"""A scripted chat model for LlamaIndex agents, offline and deterministic.

:class:`ScriptedLLM` is a :class:`~llama_index.core.llms.mock.MockFunctionCallingLLM` (so a
``FunctionAgent`` accepts it) that answers from a script instead of a network model. Each turn of
the script is one of:

- a ``str``: an assistant message with that text (a final answer for a ``FunctionAgent``; for a
  ``ReActAgent`` use :func:`react_action` / :func:`react_answer` to write the ReAct text format);
- a ``ChatMessage`` (for example from :func:`tool_call` / :func:`tool_calls`): returned as is;
- a callable ``turn(messages) -> str | ChatMessage`` that sees exactly the messages of this call.

Every call's messages are recorded in :attr:`ScriptedLLM.calls`, so a test can prove what the model
saw (a hint injected into one call, and not into the next), and every response reports token usage
the way real providers do (``raw["usage"]``), which LlamaIndex's token counting reads.

Importing this module imports LlamaIndex.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any

from immunity import hookimpl
from immunity.models import EventKind, Recovery, RecoveryKind, Severity, Verdict
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    ToolCallBlock,
)
from llama_index.core.llms.callbacks import llm_chat_callback
from llama_index.core.llms.mock import MockFunctionCallingLLM
from pydantic import PrivateAttr

__all__ = ["ScriptExhausted", "ScriptedLLM", "react_action", "react_answer", "tool_call", "tool_calls"]

Turn = str | ChatMessage | Callable[[list[ChatMessage]], "str | ChatMessage"]

_ids = itertools.count(1)


class ScriptExhausted(RuntimeError):
    """The agent asked the scripted model for more turns than the script has."""


def tool_call(name: str, arguments: dict[str, Any] | None = None, *, call_id: str | None = None) -> ChatMessage:
    """An assistant message that calls one tool (a native ``ToolCallBlock``)."""
    return tool_calls([(name, arguments or {})], call_ids=[call_id] if call_id else None)


def tool_calls(calls: Sequence[tuple[str, dict[str, Any]]], *, call_ids: Sequence[str] | None = None) -> ChatMessage:
    """An assistant message that calls several tools in one turn (parallel tool calls)."""
    ids = list(call_ids or [f"call_{next(_ids)}" for _ in calls])
    blocks = [ToolCallBlock(tool_call_id=cid, tool_name=name, tool_kwargs=dict(args))
              for cid, (name, args) in zip(ids, calls, strict=True)]
    return ChatMessage(role="assistant", blocks=blocks)


def react_action(tool: str, arguments: dict[str, Any] | None = None, *, thought: str = "I need to use a tool.") -> str:
    """A ReAct turn that calls ``tool`` (``Thought / Action / Action Input``)."""
    return f"Thought: {thought}\nAction: {tool}\nAction Input: {json.dumps(arguments or {})}"


def react_answer(answer: str, *, thought: str = "I can answer without using any more tools.") -> str:
    """A ReAct turn that answers (``Thought / Answer``)."""
    return f"Thought: {thought}\nAnswer: {answer}"


def _words(text: str | None) -> int:
    return len((text or "").split())


class ScriptedLLM(MockFunctionCallingLLM):
    """A chat model that plays a script of turns and records what it was sent.

    ::

        llm = ScriptedLLM(script=[tool_call("get_weather", {"city": "Paris"}), "Sunny in Paris."])
        agent = FunctionAgent(tools=[get_weather], llm=llm)
        await agent.run(user_msg="Weather in Paris?")
        llm.calls[1][-1].content      # the tool result the model saw on its second call

    :param script: the turns, in order.
    :param exhausted: what to answer once the script is used up; ``None`` raises
        :class:`ScriptExhausted` (the default, so a test notices an unexpected extra call).
    :param model: the model name reported in events.
    """

    model: str = "scripted"
    _script: list[Turn] = PrivateAttr(default_factory=list)
    _exhausted: str | None = PrivateAttr(default=None)
    _calls: list[list[ChatMessage]] = PrivateAttr(default_factory=list)

    def __init__(self, script: Sequence[Turn] = (), *, exhausted: str | None = None, model: str = "scripted",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self._script = list(script)
        self._exhausted = exhausted
        self._calls = []

    @classmethod
    def class_name(cls) -> str:
        return "ScriptedLLM"

    # ------------------------------------------------------------------ what the model saw
    @property
    def calls(self) -> list[list[ChatMessage]]:
        """The messages of every call so far (a copy of each call's list, in order)."""
        return self._calls

    def texts(self, call: int) -> list[str]:
        """The text of every message of call ``call`` (negative indexes count from the end)."""
        return [m.content or "" for m in self._calls[call]]

    def saw(self, text: str, call: int) -> bool:
        """Whether any message of call ``call`` contains ``text``."""
        return any(text in t for t in self.texts(call))

    def push(self, *turns: Turn) -> None:
        """Add turns to the end of the script."""
        self._script.extend(turns)

    # ------------------------------------------------------------------ answering
    def _respond(self, messages: Sequence[ChatMessage]) -> ChatResponse:
        seen = list(messages)
        self._calls.append(seen)
        index = len(self._calls) - 1
        if index < len(self._script):
            turn = self._script[index]
        elif self._exhausted is not None:
            turn = self._exhausted
        else:
            raise ScriptExhausted(f"the script has {len(self._script)} turns; call {index + 1} has none")
        if callable(turn) and not isinstance(turn, ChatMessage):
            turn = turn(seen)
        message = turn if isinstance(turn, ChatMessage) else ChatMessage(role="assistant", content=str(turn))
        prompt = sum(_words(m.content) for m in seen) + 3 * len(seen)
        completion = max(1, _words(message.content)) + 10 * sum(isinstance(b, ToolCallBlock) for b in message.blocks)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return ChatResponse(message=message, delta=message.content or "", raw={"usage": usage, "model": self.model})

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._respond(messages)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._respond(messages)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        response = self._respond(messages)

        def gen() -> Generator[ChatResponse, None, None]:
            yield response

        return gen()

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        response = self._respond(messages)

        async def gen() -> AsyncGenerator[ChatResponse, None]:
            yield response

        return gen()


class RollbackOnWrong:
    """A plugin for rollback tests: flags a tool result containing WRONG and asks for a rollback to
    the last verified checkpoint, with a hint naming the right lookup."""

    @hookimpl
    def immunity_verify(self, event: Any) -> Any:
        if event.kind == EventKind.TOOL_END and "WRONG" in (event.result or ""):
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.ERROR,
                           message="the lookup returned the wrong record",
                           hint="[immunity] ROLLBACK: look up id 2, not id 9.")
        return None

    @hookimpl(tryfirst=True)
    def immunity_recover(self, event: Any, verdicts: list[Verdict]) -> Any:
        if any(v.error_class == "wrong_parameters" for v in verdicts):
            return Recovery(kind=RecoveryKind.ROLLBACK, reason="wrong record",
                            hint="[immunity] ROLLBACK: look up id 2, not id 9.")
        return None
