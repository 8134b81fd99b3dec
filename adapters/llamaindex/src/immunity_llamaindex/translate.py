"""LlamaIndex -> immunity: the one module that turns the framework's native signals into immunity
events and carries out the runtime's decisions inside the framework.

Where each signal comes from (llama-index-core 0.14, llama-index-workflows 2.x):

- **Observe**: the instrumentation root dispatcher. A span handler sees the run's root span
  (``<Agent>.run-<uuid>``: run start, and its exit / drop / cancel: run end), every workflow step
  span (``init_run``, ``setup_agent``, ``run_agent_step``, ``call_tool``...: node start / end) and
  every chat-model span (model start); an event handler sees ``LLMChatEndEvent`` (model end, with
  usage, for streaming and non-streaming calls alike). Every span and event of a run carries the
  ``llamaindex.run_id`` instrument tag, which is how a signal finds its run, across asyncio tasks
  and the worker threads that run sync tools.
- **Inject**: the chat-model span opens before the model method's body runs and its bound
  ``messages`` argument is the very list the body sends, so hints are appended to that list:
  they reach this call only and never enter the agent's memory, scratchpad or context state.
- **Verify / block / rewrite / ask a human**: the tools handed to the agent for a protected run
  are guarded copies of the user's tools (``get_tools`` is wrapped on the protected object), so
  arguments are checked before the tool runs, and a blocked call returns a native ``ToolOutput``
  (``is_error=True``) whose text the model reads as the tool's result. Asking a human uses the
  workflow's own human-in-the-loop events (``InputRequiredEvent`` / ``HumanResponseEvent``).
- **Stop / checkpoint / roll back**: ``take_step`` is wrapped on each protected agent. Before
  each model turn it records a checkpoint (``handler.ctx.to_dict()``, the workflow's own
  serialised context), restores the last verified one when a rollback is pending
  (``Context.from_dict(...)`` state put back into the live context's store), and ends the run
  cleanly when a stop is pending by returning the final answer as the agent's output, so the
  workflow finishes through its normal ``StopEvent`` path.

Importing this module imports LlamaIndex; :mod:`immunity_llamaindex.adapter` imports it lazily.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from typing import Any

from immunity.errors import PluginError
from immunity.interventions.quoting import QUOTE_TOOL, split
from immunity.models import Checkpoint, Event, EventKind, Recovery, RecoveryKind, new_id
from immunity.outcomes import end_run
from immunity.runtime import Decision, RunSession
from llama_index.core.agent.workflow import ReActAgent
from llama_index.core.agent.workflow.workflow_events import AgentOutput
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.base.llms.types import ChatMessage, ToolCallBlock
from llama_index.core.callbacks.token_counting import get_tokens_from_response
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.dispatcher import active_instrument_tags
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.instrumentation.span import SimpleSpan, active_span_id
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.tools import ToolOutput
from llama_index.core.workflow import Context, HumanResponseEvent, InputRequiredEvent
from pydantic import Field
from workflows.context.serializers import JsonSerializer
from workflows.context.state_store import InMemoryStateStore

from immunity_llamaindex.snapshot import StateEncoder, StateSnapshot, snapshot_state

log = logging.getLogger("immunity.llamaindex")

PLUGIN = "immunity_llamaindex"
RUN_TAG = "llamaindex.run_id"
LLM_METHODS = frozenset({"chat", "achat", "stream_chat", "astream_chat"})
APPROVALS = frozenset({"y", "yes", "ok", "approve", "approved", "allow", "go", "go ahead"})


def _waiting_exception() -> type[BaseException] | None:
    try:  # the exception a step raises to pause until an awaited event arrives (workflows >= 2.9)
        from workflows.runtime.types.results import WaitingForEvent
    except ImportError:  # pragma: no cover - older workflows
        return None
    return WaitingForEvent


_WAITING = _waiting_exception()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, ChatMessage):
        return value.content
    return str(value)


def _messages(messages: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages or ():
        role = getattr(m, "role", "user")
        item: dict[str, Any] = {"role": getattr(role, "value", str(role)), "content": getattr(m, "content", None)}
        calls = [b for b in getattr(m, "blocks", ()) if isinstance(b, ToolCallBlock)]
        if calls:
            item["tool_calls"] = [{"name": b.tool_name, "arguments": b.tool_kwargs, "id": b.tool_call_id}
                                  for b in calls]
        if item["role"] == "tool" and m.additional_kwargs.get("tool_call_id"):
            item["tool_call_id"] = m.additional_kwargs["tool_call_id"]
        out.append(item)
    return out


def hint_messages(texts: list[str], *, tool_role: bool) -> list[ChatMessage]:
    """The messages that carry immunity's hints into one model call.

    A hint that quotes outside text (a tool's output, see :func:`immunity.interventions.quoting.split`)
    goes, when the model takes tool calls, as tool-role data: an assistant ``ChatMessage`` with a
    ``ToolCallBlock`` calling the synthetic tool ``QUOTE_TOOL`` (a fresh call id, no arguments), a
    ``tool`` message answering that ``tool_call_id`` with the quoted text (the shape ``FunctionAgent``
    gives its own tool results), then immunity's own words as a user message. Without a tool role (a
    ReAct agent, a model that does not call tools) such a hint stays one user message with the quote
    delimited inline. A hint with no quote is one user message, as before."""
    out: list[ChatMessage] = []
    for text in texts:
        parts = split(text) if tool_role else None
        if parts is None or not parts.quotes:
            out.append(ChatMessage(role="user", content=text))
            continue
        call_id = new_id("call_immunity_")
        out.append(ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id=call_id, tool_name=QUOTE_TOOL,
                                                                       tool_kwargs={})]))
        out.append(ChatMessage(role="tool", content=parts.data, additional_kwargs={"tool_call_id": call_id}))
        out.append(ChatMessage(role="user", content=parts.words))
    return out


def _plain(value: Any) -> Any:
    """Tool arguments as plain data (what is stored is data only, never framework objects)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _model_name(llm: Any) -> str:
    for attr in ("model", "model_name"):
        value = getattr(llm, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(llm).__name__


@dataclass
class LiveRun:
    """One protected LlamaIndex run in progress."""

    session: RunSession
    workflow: Any
    llamaindex_run_id: str
    handler: Any = None
    agent_name: str | None = None
    llm_spans: dict[str, Any] = field(default_factory=dict)
    tool_events: dict[str, Any] = field(default_factory=dict)
    stop_answer: str | None = None
    rollback: Recovery | None = None
    rollbacks: int = 0
    asked: dict[str, dict[str, Any]] = field(default_factory=dict)
    turns: int = 0
    fatal: BaseException | None = None
    #: the decision on the last model call that raised (set by the span handler, read by take_step)
    model_failure: Decision | None = None
    #: encodes the per-turn state checkpoint for the store, reusing what did not change (see snapshot.py)
    encoder: StateEncoder | None = None


class _SpanHandler(BaseSpanHandler[SimpleSpan]):
    """Root-dispatcher span handler: forwards to the bridge, keeps no spans of its own."""

    #: a field, not a private attribute: pydantic reads a private attribute through its
    #: ``__getattr__``, a measurable share of a handler called for every span
    bridge: Any = Field(default=None, exclude=True, repr=False)

    @classmethod
    def class_name(cls) -> str:
        return "ImmunitySpanHandler"

    def span_enter(self, id_: str, bound_args: Any, instance: Any = None, parent_id: str | None = None,
                   tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.bridge.on_span_enter(id_, bound_args, instance, parent_id)

    def span_exit(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kwargs: Any) -> None:
        self.bridge.on_span_exit(id_, bound_args, instance, result)

    def span_drop(self, id_: str, bound_args: Any, instance: Any = None, err: BaseException | None = None,
                  **kwargs: Any) -> None:
        self.bridge.on_span_drop(id_, bound_args, instance, err)

    def new_span(self, id_: str, bound_args: Any, instance: Any = None, parent_span_id: str | None = None,
                 tags: dict[str, Any] | None = None, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None,
                             **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(self, id_: str, bound_args: Any, instance: Any = None,
                             err: BaseException | None = None, **kwargs: Any) -> SimpleSpan | None:
        return None


class _EventHandler(BaseEventHandler):
    """Root-dispatcher event handler: the end of each model call (``LLMChatEndEvent``)."""

    bridge: Any = Field(default=None, exclude=True, repr=False)

    @classmethod
    def class_name(cls) -> str:
        return "ImmunityEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        if type(event) is LLMChatEndEvent:
            self.bridge.on_model_end(event)


class Bridge:
    """Everything the adapter attaches to LlamaIndex, and the live runs it is following."""

    def __init__(self, adapter: Any):
        self.adapter = adapter
        self.runtime = adapter.runtime
        mode = adapter.options.get("checkpoints", "state")
        if mode is True:
            mode = "state"
        if mode not in ("state", "full", False, None, "none"):
            raise ValueError(f"checkpoints must be 'state', 'full' or False, not {mode!r}")
        self.checkpoints: str | None = mode if mode in ("state", "full") else None
        self.node_events: str = adapter.options.get("node_events") or "none"  # checked by the adapter
        self._serializer = JsonSerializer()
        self._version = adapter.framework_version()  # once: reading package metadata is slow
        self.max_rollbacks: int = int(adapter.options.get("max_rollbacks", 2))
        self.ask_human_timeout: float | None = adapter.options.get("ask_human_timeout", 600.0)
        self.domain: str | None = adapter.options.get("domain")
        self.targets: dict[int, Any] = {}
        self.agents: dict[int, Any] = {}
        self.runs: dict[str, LiveRun] = {}
        self.handlers: dict[str, tuple[Any, str | None]] = {}
        self.resume_ids: dict[int, tuple[Any, str]] = {}
        self.pending_hints: dict[str, list[str]] = {}
        self.run_ids: dict[str, str] = {}
        self._guarded: dict[int, tuple[Any, Any]] = {}
        self._patches: list[tuple[Any, str, bool, Any]] = []
        self._span_handler = _SpanHandler()
        self._span_handler.bridge = self
        self._event_handler = _EventHandler()
        self._event_handler.bridge = self
        self._attached = False

    # ------------------------------------------------------------------ attach / detach
    def attach_dispatcher(self) -> None:
        if self._attached:
            return
        root = get_dispatcher()
        root.add_span_handler(self._span_handler)
        root.add_event_handler(self._event_handler)
        self._attached = True

    def detach_dispatcher(self) -> None:
        if not self._attached:
            return
        root = get_dispatcher()
        # remove exactly the handlers we added, in place: the lists stay the user's own objects
        for handlers, mine in ((root.span_handlers, self._span_handler), (root.event_handlers, self._event_handler)):
            for i in range(len(handlers) - 1, -1, -1):
                if handlers[i] is mine:
                    del handlers[i]
        self._attached = False

    def _patch(self, obj: Any, name: str, value: Any) -> None:
        had = name in obj.__dict__
        self._patches.append((obj, name, had, obj.__dict__.get(name)))
        object.__setattr__(obj, name, value)

    def unpatch(self) -> None:
        while self._patches:
            obj, name, had, old = self._patches.pop()
            if had:
                object.__setattr__(obj, name, old)
            else:
                obj.__dict__.pop(name, None)
        self.targets.clear()
        self.agents.clear()
        self._guarded.clear()

    def protect(self, target: Any) -> None:
        """Wrap ``run`` and ``get_tools`` on the workflow and ``take_step`` on each of its agents
        (instance attributes: the class and every other agent are untouched)."""
        if id(target) in self.targets:
            return
        agents = list(target.agents.values()) if isinstance(getattr(target, "agents", None), dict) else [target]
        if not all(hasattr(a, "take_step") for a in agents) or not hasattr(target, "get_tools"):
            raise TypeError(f"immunity-llamaindex protects a LlamaIndex agent (FunctionAgent, ReActAgent, "
                            f"CodeActAgent) or an AgentWorkflow, not {type(target).__name__}")
        self.targets[id(target)] = target
        self._patch(target, "run", self._wrap_run(target, target.run))
        self._patch(target, "get_tools", self._wrap_get_tools(target.get_tools))
        for agent in agents:
            if id(agent) not in self.agents:
                self.agents[id(agent)] = agent
                self._patch(agent, "take_step", self._wrap_take_step(agent, agent.take_step))

    # ------------------------------------------------------------------ run identity
    def current(self) -> LiveRun | None:
        rid = active_instrument_tags.get().get(RUN_TAG)
        return self.runs.get(rid) if rid is not None else None

    def run_id_for(self, llamaindex_run_id: str) -> str:
        """The immunity run id of a LlamaIndex run id: deterministic, so running again with the
        same ``run_id=`` (a resume) continues the same immunity run."""
        return self.run_ids.get(llamaindex_run_id) or f"llamaindex-{llamaindex_run_id}"

    def _wrap_run(self, target: Any, original: Any) -> Any:
        bridge = self

        def run(*args: Any, **kwargs: Any) -> Any:
            handler = original(*args, **kwargs)
            try:
                ctx = kwargs.get("ctx") or next((a for a in args if isinstance(a, Context)), None)
                resumed = bridge.resume_ids.pop(id(ctx), None) if ctx is not None else None
                run_id = getattr(handler, "run_id", None)
                if run_id is not None:
                    bridge.handlers[run_id] = (handler, resumed[1] if resumed and resumed[0] is ctx else None)
            except Exception as exc:  # never let bookkeeping break the user's call
                log.warning("immunity-llamaindex could not follow a run: %s", exc)
            return handler

        run.__wrapped__ = original  # type: ignore[attr-defined]
        return run

    # ------------------------------------------------------------------ span signals
    def _error(self, live: LiveRun | None, where: str, exc: BaseException) -> None:
        """Fail open: record and go on. Fail closed: the error is re-raised, and kept so that it
        also ends the run at the next turn (LlamaIndex swallows what its handlers raise and turns a
        tool's exception into a tool result)."""
        if live is None:
            log.warning("immunity-llamaindex failed in %s: %s", where, exc)
            return
        if isinstance(exc, PluginError):
            live.fatal = live.fatal or exc
            raise exc
        try:
            live.session.record_error(PLUGIN, where, exc)
        except PluginError as fatal:
            live.fatal = live.fatal or fatal
            raise

    def on_span_enter(self, id_: str, bound_args: Any, instance: Any, parent_id: str | None) -> None:
        rid = active_instrument_tags.get().get(RUN_TAG)
        if rid is None:
            return
        live = self.runs.get(rid)
        try:
            if live is None:
                if instance is not None and self.targets.get(id(instance)) is instance \
                        and "init_state" in bound_args.arguments:
                    self._start(rid, instance, bound_args)
                return
            method = id_.split("-", 1)[0].rpartition(".")[2]
            if method in LLM_METHODS and isinstance(instance, BaseLLM):
                if parent_id in live.llm_spans:
                    return  # a chat method called by another one of the same call (achat -> chat)
                live.llm_spans[id_] = instance
                self._model_start(live, instance, bound_args.arguments.get("messages"))
            elif "ev" in bound_args.arguments and "ctx" in bound_args.arguments:  # a step of this run's workflow
                if method == "call_tool":
                    live.tool_events[id_] = bound_args.arguments["ev"]
                if self._node_event(method, end=False):
                    live.session.emit(Event(kind=EventKind.NODE_START, node=method, agent=live.agent_name))
        except Exception as exc:
            self._error(live, "span_enter", exc)

    def on_span_exit(self, id_: str, bound_args: Any, instance: Any, result: Any) -> None:
        self._span_end(id_, bound_args, instance, result, None)

    def on_span_drop(self, id_: str, bound_args: Any, instance: Any, err: BaseException | None) -> None:
        self._span_end(id_, bound_args, instance, None, err)

    def _span_end(self, id_: str, bound_args: Any, instance: Any, result: Any, err: BaseException | None) -> None:
        rid = active_instrument_tags.get().get(RUN_TAG)
        live = self.runs.get(rid) if rid is not None else None
        if live is None:
            return
        try:
            if id_ in live.llm_spans:
                if err is not None:  # the model call raised: there will be no end event
                    live.llm_spans.pop(id_, None)
                    live.model_failure = live.session.model_end(None, error=f"{type(err).__name__}: {err}",
                                                                model=_model_name(instance), agent=live.agent_name)
            elif instance is live.workflow and "init_state" in bound_args.arguments:
                self._finish(live, result, err)
            elif "ev" in bound_args.arguments and "ctx" in bound_args.arguments:
                method = id_.split("-", 1)[0].rpartition(".")[2]
                live.tool_events.pop(id_, None)
                if self._node_event(method, end=True) or err is not None:
                    live.session.emit(Event(kind=EventKind.NODE_END, node=method, agent=live.agent_name,
                                            error=None if err is None else f"{type(err).__name__}: {err}"))
        except Exception as exc:
            self._error(live, "span_end", exc)

    def _node_event(self, method: str, *, end: bool) -> bool:
        """Which workflow steps become node events: ``none`` (default: model and tool events already
        mark every turn), ``end`` a ``node_end`` per step, ``all`` start and end of every step,
        ``turns`` start and end of the agent's turn (``run_agent_step``) and tool step
        (``call_tool``). A step that raises is always recorded."""
        if self.node_events == "end":
            return end
        if self.node_events == "all":
            return True
        return self.node_events == "turns" and method in ("run_agent_step", "call_tool")

    def _start(self, rid: str, workflow: Any, bound_args: Any) -> None:
        handler, resumed = self.handlers.pop(rid, (None, None))
        run_id = resumed or self.run_id_for(rid)
        start = bound_args.arguments.get("start_event")
        task = _text(start.get("user_msg", None)) if start is not None and hasattr(start, "get") else None
        name = getattr(workflow, "name", None) or type(workflow).__name__
        session = self.runtime.session(run_id)
        if session is not None:  # the same run again (a resume in this process): go on with its signals
            session.reopen()
            session.run.ended_at = None
            session.emit(Event(kind=EventKind.CUSTOM, agent=name, data={"resumed": True, "llamaindex_run_id": rid}))
        else:
            session = self.runtime.start_run(
                task=task, framework="llamaindex", domain=self.domain, run_id=run_id, agent=name,
                metadata={"llamaindex_run_id": rid, "workflow": type(workflow).__name__,
                          "framework_version": self._version})
        self.run_ids[rid] = run_id
        self.adapter.saw_run(run_id)
        for hint in self.pending_hints.pop(run_id, []):
            session.add_hint(hint, source="resume")
        self.runs[rid] = LiveRun(session=session, workflow=workflow, llamaindex_run_id=rid, handler=handler,
                                 agent_name=name)

    def _finish(self, live: LiveRun, result: Any, err: BaseException | None) -> None:
        self.runs.pop(live.llamaindex_run_id, None)
        session = live.session
        stopped = live.stop_answer is not None or session.stop_requested
        if err is not None:
            reason = f"raised {type(err).__name__}: {err}"
            if "Max iterations of" in str(err):
                reason = f"max iterations reached (max_iterations): {err}"
            elif stopped:
                reason = f"stopped by immunity: {live.stop_answer or session.stop_requested}"
            end_run(session, "failure", reason=reason, error=f"{type(err).__name__}: {err}")
            return
        if result is None:  # cancelled (handler.cancel_run())
            end_run(session, "failure", reason=f"stopped by immunity: {live.stop_answer or session.stop_requested}"
                    if stopped else "cancelled (handler.cancel_run())", error="cancelled")
            return
        output = getattr(result, "result", result)
        response = getattr(output, "response", None)
        answer = response.content if isinstance(response, ChatMessage) else _text(output)
        if answer is not None and live.stop_answer is None:
            session.final_answer(answer, agent=live.agent_name)
        if stopped:
            end_run(session, "failure", reason=f"stopped by immunity: {live.stop_answer or session.stop_requested}",
                    output=answer)
        else:  # completed: whether it succeeded is the user's call (set_outcome)
            end_run(session, None, output=answer)

    # ------------------------------------------------------------------ model calls
    def _model_start(self, live: LiveRun, llm: Any, messages: Any) -> None:
        decision = live.session.model_start(_messages(messages), model=_model_name(llm), agent=live.agent_name)
        if decision.inject:
            if not isinstance(messages, list):
                raise TypeError(f"cannot add hints to this model call: its messages are a {type(messages).__name__}")
            # the very list the model method is about to send: this call only, never the agent's memory
            messages.extend(hint_messages(decision.inject, tool_role=self._tool_role(live, llm)))
        if decision.stop:
            live.stop_answer = live.stop_answer or decision.final_answer or "stopped"

    def _tool_role(self, live: LiveRun, llm: Any) -> bool:
        """Whether quoted tool output can go to this model call as tool-role data: the model calls
        tools natively and the agent is not a ReAct agent (whose protocol is text)."""
        if not getattr(getattr(llm, "metadata", None), "is_function_calling_model", False):
            return False
        agent = next((a for a in self.agents.values() if a.name == live.agent_name), None) or live.workflow
        return not isinstance(agent, ReActAgent)

    def on_model_end(self, event: Any) -> None:
        rid = event.tags.get(RUN_TAG)
        live = self.runs.get(rid) if rid is not None else None
        if live is None:
            return
        llm = live.llm_spans.pop(event.span_id, None)
        if llm is None:
            return
        try:
            response = event.response
            output = response.message.content if response is not None else None
            calls: list[dict[str, Any]] = []
            if response is not None:
                calls = [{"name": b.tool_name, "arguments": _plain(b.tool_kwargs), "id": b.tool_call_id}
                         for b in response.message.blocks if isinstance(b, ToolCallBlock)]
                if not calls and output:
                    calls, output = self._react_calls(live, output)
            usage = None
            if response is not None:
                prompt, completion = get_tokens_from_response(response)
                if prompt or completion:
                    usage = {"input_tokens": int(prompt), "output_tokens": int(completion),
                             "total_tokens": int(prompt) + int(completion)}
            decision = live.session.model_end(output, tool_calls=calls or None, usage=usage, model=_model_name(llm),
                                              agent=live.agent_name)
            if decision.stop:
                live.stop_answer = live.stop_answer or decision.final_answer or "stopped"
        except Exception as exc:
            self._error(live, "model_end", exc)

    def _react_calls(self, live: LiveRun, text: str) -> tuple[list[dict[str, Any]], str | None]:
        """A ReAct agent's tool call is text (``Action: ... Action Input: ...``): read it with the
        agent's own output parser so the call is a tool call, not a message."""
        agent = next((a for a in self.agents.values() if a.name == live.agent_name), None) or live.workflow
        parser = getattr(agent, "output_parser", None)
        if parser is None:
            return [], text
        try:
            step = parser.parse(text, is_streaming=False)
        except Exception:
            return [], text
        action = getattr(step, "action", None)
        if action:
            return [{"name": action, "arguments": _plain(getattr(step, "action_input", {}) or {}),
                     "id": None}], None
        response = getattr(step, "response", None)
        return [], response if isinstance(response, str) else text

    # ------------------------------------------------------------------ turns: checkpoint, rollback, stop
    def _wrap_take_step(self, agent: Any, original: Any) -> Any:
        bridge = self

        async def take_step(ctx: Any, llm_input: Any, tools: Any, memory: Any, *args: Any, **kwargs: Any) -> Any:
            live = bridge.current()
            if live is not None:
                if live.fatal is not None:
                    raise live.fatal
                try:
                    stop = await bridge._before_turn(live, agent, ctx)
                except Exception as exc:
                    bridge._error(live, "take_step", exc)
                    stop = None
                if stop is not None:
                    # end the run the framework's way: an agent output with no tool calls is final
                    return AgentOutput(response=ChatMessage(role="assistant", content=stop), tool_calls=[],
                                       raw=None, current_agent_name=agent.name)
            if live is None:
                return await original(ctx, llm_input, tools, memory, *args, **kwargs)
            attempt, fallback = 0, False
            while True:
                live.model_failure = None
                try:
                    if not fallback:
                        return await original(ctx, llm_input, tools, memory, *args, **kwargs)
                    own = agent.__dict__.get("llm")
                    object.__setattr__(agent, "llm", bridge.adapter.options["fallback_model"])
                    try:
                        return await original(ctx, llm_input, tools, memory, *args, **kwargs)
                    finally:
                        object.__setattr__(agent, "llm", own)
                except Exception:
                    plan = bridge._model_retry(live, attempt, fallback)
                    if plan is None:
                        raise
                    if isinstance(plan, str):  # "fallback"
                        fallback = True
                    else:
                        attempt += 1
                        await asyncio.sleep(plan)

        take_step.__wrapped__ = original  # type: ignore[attr-defined]
        return take_step

    def _model_retry(self, live: LiveRun, attempt: int, fallback: bool) -> float | str | None:
        """After a turn raised: ``"fallback"`` (call the adapter's ``fallback_model`` instead), a
        delay before calling the model again, or ``None`` (the error goes on), as the recovery
        policy decided on the failed model call. Not a model error (a tool, the workflow): ``None``."""
        d, live.model_failure = live.model_failure, None
        if d is None or d.stop or d.recovery is None:
            return None
        rec = d.recovery
        if rec.kind == RecoveryKind.FALLBACK and not fallback and self.adapter.options["fallback_model"] is not None:
            return "fallback"
        if rec.kind == RecoveryKind.RETRY and attempt + 1 < rec.max_attempts:
            return float(min(max(rec.delay_s, 0.0), 30.0))
        return None

    async def _before_turn(self, live: LiveRun, agent: Any, ctx: Any) -> str | None:
        session = live.session
        previous, live.agent_name = live.agent_name, agent.name
        if live.turns and previous and previous != agent.name:
            # AgentWorkflow hands over through its ``handoff`` tool: that call is the handoff's step
            last = session.state.last_step
            call = last.data.get("tool_call_id") if last is not None and last.tool == "handoff" and \
                last.agent == previous else None
            session.handoff(previous, agent.name, tool_call_id=call)
        live.turns += 1
        if live.stop_answer is None and session.stop_requested:
            live.stop_answer = session.stop_requested
        if live.stop_answer is not None:
            return live.stop_answer
        if live.rollback is not None:
            await self._rollback(live, ctx)
        elif self.checkpoints == "full" and live.handler is not None:
            # the whole workflow context (queues, in-flight step, state): resumable with agent.run(ctx=...)
            session.checkpoint({"snapshot": live.handler.ctx.to_dict(), "llamaindex_run_id": live.llamaindex_run_id,
                                "agent": agent.name, "turn": live.turns})
        elif self.checkpoints == "state":
            # the context's state store only (memory, scratchpad, counters): enough to roll back in-run;
            # for the store, encoded again only where it changed; with no store, a copy (see snapshot.py)
            if session.runtime.store is not None:
                if live.encoder is None:
                    live.encoder = StateEncoder()
                state: Any = live.encoder.encode(ctx.store)
            else:
                state = snapshot_state(ctx.store, self._serializer)
            session.checkpoint({"state": state, "llamaindex_run_id": live.llamaindex_run_id, "agent": agent.name,
                                "turn": live.turns})
        return None

    async def _rollback(self, live: LiveRun, ctx: Any) -> None:
        recovery, live.rollback = live.rollback, None
        session = live.session
        cp = session.last_verified_checkpoint()
        if cp is None or not ({"snapshot", "state"} & set(cp.ref)) or live.rollbacks >= self.max_rollbacks:
            why = "no verified checkpoint" if cp is None else "too many rollbacks in this run"
            session.emit(Event(kind=EventKind.CUSTOM, data={"rollback": "skipped", "why": why}))
            return
        state: Any
        if "snapshot" in cp.ref:
            state = await Context.from_dict(live.workflow, cp.ref["snapshot"]).store.get_state()
        elif isinstance(cp.ref["state"], StateSnapshot):
            state = await cp.ref["state"].state()
        else:
            state = await InMemoryStateStore.from_dict(cp.ref["state"], self._serializer).get_state()
        await ctx.store.set_state(state)
        live.rollbacks += 1
        compensated = session.rollback(cp) if hasattr(session, "rollback") else []
        session.emit(Event(kind=EventKind.CUSTOM, agent=live.agent_name,
                           data={"rollback": cp.checkpoint_id, "to_step": cp.step, "turn": cp.ref.get("turn"),
                                 "compensated": compensated, "reason": recovery.reason if recovery else ""}))

    # ------------------------------------------------------------------ tools
    def _wrap_get_tools(self, original: Any) -> Any:
        bridge = self

        async def get_tools(*args: Any, **kwargs: Any) -> Any:
            tools = await original(*args, **kwargs)
            if bridge.current() is None:
                return tools
            try:
                return [bridge.guard(t) for t in tools]
            except Exception as exc:
                bridge._error(bridge.current(), "get_tools", exc)
                return tools

        get_tools.__wrapped__ = original  # type: ignore[attr-defined]
        return get_tools

    def guard(self, tool: Any) -> Any:
        """A guarded copy of ``tool``: same class, metadata and function, with ``acall``/``call``
        going through immunity first. The user's tool object is never modified."""
        hit = self._guarded.get(id(tool))
        if hit is not None and hit[0] is tool:
            return hit[1]
        guarded = copy.copy(tool)
        bridge = self

        async def acall(*args: Any, **kwargs: Any) -> Any:
            return await bridge.acall(tool, args, kwargs)

        def call(*args: Any, **kwargs: Any) -> Any:
            return bridge.call(tool, args, kwargs)

        guarded.acall = acall
        guarded.call = call
        if len(self._guarded) > 512:
            self._guarded.clear()
        self._guarded[id(tool)] = (tool, guarded)
        return guarded

    @staticmethod
    def _arguments(tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        ctx_param = getattr(tool, "ctx_param_name", None)
        arguments = {k: _plain(v) for k, v in kwargs.items() if k != ctx_param}
        if args:
            arguments["input" if len(args) == 1 else "args"] = _plain(args[0] if len(args) == 1 else list(args))
        return arguments

    def _output(self, tool: Any, text: str, arguments: dict[str, Any], *, error: bool) -> Any:
        return ToolOutput(content=text, tool_name=tool.metadata.get_name(), raw_input={"kwargs": arguments},
                          raw_output=text, is_error=error)

    def _short_circuit(self, live: LiveRun, tool: Any, arguments: dict[str, Any], d: Decision) -> Any:
        if d.stop or live.stop_answer is not None:
            live.stop_answer = live.stop_answer or d.final_answer or "stopped"
            return self._output(tool, f"Not run: the run is being stopped ({live.stop_answer}).", arguments,
                                error=True)
        if d.block:
            return self._output(tool, f"Blocked by immunity: {d.message or 'this call is not allowed'}", arguments,
                                error=True)
        if d.cached_result is not None:  # a side effect already done in this run: do not do it twice
            return self._output(tool, d.cached_result, arguments, error=False)
        return None

    def _after_tool(self, live: LiveRun, d: Decision) -> None:
        rec = d.recovery
        if rec is not None and rec.kind == RecoveryKind.ROLLBACK:
            live.rollback = rec
        if d.stop or (rec is not None and rec.kind == RecoveryKind.ABORT):
            live.stop_answer = live.stop_answer or d.final_answer or (rec.reason if rec else None) or "stopped"

    def _call_id(self, live: LiveRun) -> str:
        span = active_span_id.get()
        ev = live.tool_events.get(span) if span is not None else None
        return getattr(ev, "tool_id", None) or new_id("call_")

    async def acall(self, tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        live = self.current()
        if live is None:
            return await tool.acall(*args, **kwargs)
        session, name = live.session, tool.metadata.get_name()
        try:
            arguments = self._arguments(tool, args, kwargs)
            call_id = self._call_id(live)
            asked = live.asked.get(call_id)
            if asked is None:  # (a step paused for a human runs again from the top: ask once)
                d = session.tool_start(name, arguments, tool_call_id=call_id, agent=live.agent_name)
                short = self._short_circuit(live, tool, arguments, d)
                if short is not None:
                    return short
                if d.rewrite is not None:
                    kwargs = {**{k: v for k, v in kwargs.items() if k == getattr(tool, "ctx_param_name", None)},
                              **d.rewrite}
                    arguments = self._arguments(tool, args, kwargs)
                if d.ask_human:
                    asked = live.asked[call_id] = {"question": d.ask_human, "kwargs": kwargs, "arguments": arguments}
        except Exception as exc:
            self._error(live, "tool_start", exc)
            return await tool.acall(*args, **kwargs)
        if asked is not None:
            try:
                answer = await self._ask_human(live, name, call_id, asked)
            except TimeoutError:
                answer = ""
            live.asked.pop(call_id, None)
            kwargs, arguments = asked["kwargs"], asked["arguments"]
            if answer.strip().lower() not in APPROVALS:
                text = f"Not approved by a human ({answer or 'no answer'}); the call was not made."
                self._after_tool(live, session.tool_end(name, error=text, tool_call_id=call_id, arguments=arguments,
                                                        agent=live.agent_name))
                return self._output(tool, text, arguments, error=True)
        attempt = 1
        while True:
            raised: BaseException | None = None
            out: Any = None
            try:
                out = await tool.acall(*args, **kwargs)
                error = str(out.content) if getattr(out, "is_error", False) else None
            except Exception as e:
                if _WAITING is not None and isinstance(e, _WAITING):
                    raise
                raised, error = e, f"{type(e).__name__}: {e}"
            try:
                d = session.tool_end(name, None if error else getattr(out, "content", out), error=error,
                                     tool_call_id=call_id, arguments=arguments, agent=live.agent_name)
                rec = d.recovery
                last = session.state.last_step
                if error and rec is not None and rec.kind == RecoveryKind.RETRY and attempt < rec.max_attempts \
                        and not (last is not None and last.side_effect) and not d.stop:
                    attempt += 1  # run the failed call again, as its own step
                    if rec.delay_s:
                        await asyncio.sleep(min(rec.delay_s, 30.0))
                    d = session.tool_start(name, arguments, tool_call_id=call_id, agent=live.agent_name)
                    short = self._short_circuit(live, tool, arguments, d)
                    if short is not None:
                        return short
                    continue
                self._after_tool(live, d)
            except Exception as e:
                self._error(live, "tool_end", e)
            if raised is not None:
                raise raised  # the framework turns it into its own error result, which the model reads
            return out

    def call(self, tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The sync path (``tool.call`` / ``tool(...)``): verify, block, rewrite, cached results
        and stop as in :meth:`acall`; asking a human needs the async path, so it blocks here."""
        live = self.current()
        if live is None:
            return tool.call(*args, **kwargs)
        session, name = live.session, tool.metadata.get_name()
        try:
            arguments = self._arguments(tool, args, kwargs)
            call_id = self._call_id(live)
            d = session.tool_start(name, arguments, tool_call_id=call_id, agent=live.agent_name)
            if d.ask_human and not d.block:
                d.block, d.message = True, f"needs a human's approval, which a sync tool call cannot wait for: " \
                                           f"{d.ask_human}"
            short = self._short_circuit(live, tool, arguments, d)
            if short is not None:
                return short
            if d.rewrite is not None:
                kwargs = dict(d.rewrite)
                arguments = self._arguments(tool, args, kwargs)
        except Exception as exc:
            self._error(live, "tool_start", exc)
            return tool.call(*args, **kwargs)
        try:
            out = tool.call(*args, **kwargs)
        except Exception as e:
            self._safe_end(live, name, None, f"{type(e).__name__}: {e}", call_id, arguments)
            raise
        error = str(out.content) if getattr(out, "is_error", False) else None
        self._safe_end(live, name, None if error else out.content, error, call_id, arguments)
        return out

    def _safe_end(self, live: LiveRun, name: str, result: Any, error: str | None, call_id: str,
                  arguments: dict[str, Any]) -> None:
        try:
            self._after_tool(live, live.session.tool_end(name, result, error=error, tool_call_id=call_id,
                                                         arguments=arguments, agent=live.agent_name))
        except Exception as exc:
            self._error(live, "tool_end", exc)

    async def _ask_human(self, live: LiveRun, tool: str, call_id: str, asked: dict[str, Any]) -> str:
        """Ask through the workflow's human-in-the-loop events: an ``InputRequiredEvent`` is written
        to the run's event stream; the caller answers with ``handler.ctx.send_event(
        HumanResponseEvent(response="yes", immunity_call_id=...))``."""
        ctx = Context.get_step_context()
        fields: dict[str, Any] = {"prefix": asked["question"], "immunity_call_id": call_id, "tool_name": tool,
                                  "tool_kwargs": asked["arguments"], "immunity_run_id": live.session.run.run_id}
        waiter = InputRequiredEvent(**fields)
        response = await ctx.wait_for_event(HumanResponseEvent, waiter_event=waiter, waiter_id=f"immunity-{call_id}",
                                            requirements={"immunity_call_id": call_id},
                                            timeout=self.ask_human_timeout)
        return str(getattr(response, "response", "") or "")

    # ------------------------------------------------------------------ resume from a checkpoint
    def restore(self, target: Any, run_id: str, *, checkpoint_id: str | None = None,
                hint: str | None = None) -> Any:
        session = self.runtime.session(run_id)
        checkpoints: list[Checkpoint] = list(session.checkpoints) if session is not None else []
        if not checkpoints and self.runtime.store is not None:
            self.runtime.flush()
            checkpoints = list(self.runtime.store.checkpoints(run_id))
        usable = [cp for cp in checkpoints if "snapshot" in cp.ref and
                  (cp.checkpoint_id == checkpoint_id if checkpoint_id else cp.verified)]
        if not usable:
            raise LookupError(f"no {'checkpoint ' + checkpoint_id if checkpoint_id else 'verified checkpoint'} "
                              f"with a LlamaIndex context for run {run_id} (resuming needs whole-context "
                              f"checkpoints: protect the agent with checkpoints='full')")
        cp = max(usable, key=lambda c: (c.step, c.ts))
        ctx = Context.from_dict(target, cp.ref["snapshot"])
        self.resume_ids[id(ctx)] = (ctx, run_id)
        if hint:
            self.pending_hints.setdefault(run_id, []).append(hint)
        return ctx
