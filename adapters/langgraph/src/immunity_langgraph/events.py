"""LangGraph's native events translated into immunity's, and immunity's decisions carried out.

One :class:`RunContext` per protected graph invocation holds the immunity
:class:`~immunity.runtime.RunSession`. It is reached from the framework's own objects, never from
a global: a :class:`GraphObserver` (a langchain-core callback handler) rides in the invocation's
``config["callbacks"]``, so every node, model and tool of that invocation carries it, across
LangGraph's worker threads and asyncio tasks.

- graph / node boundaries, model output and token usage: :class:`GraphObserver` callbacks;
- model input (and next-call hint injection): the ``BaseChatModel._convert_input`` wrapper;
- tool calls (verify before, block / rewrite / ask a human / replay, result after): the
  ``BaseTool.run`` / ``arun`` wrappers (see :mod:`immunity_langgraph.patches`).

This module imports the framework; :mod:`immunity_langgraph` and its adapter module do not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

from immunity.errors import PluginError
from immunity.interventions.quoting import QUOTE_TOOL, split
from immunity.models import Event, EventKind, RecoveryKind
from immunity.runtime import Decision
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult, LLMResult
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from langgraph.runtime import RunControl

log = logging.getLogger("immunity.langgraph")

PLUGIN = "immunity_langgraph"
#: the drain reasons immunity uses (a drain with any other reason is the user's)
DRAIN_STOP = "immunity:stop"
DRAIN_ROLLBACK = "immunity:rollback"
#: marks the reply that stands in for a model call once a run is stopped
STOPPED_MARK = "immunity_stopped"
_APPROVALS = {"y", "yes", "ok", "approve", "approved", "allow", "accept", "accepted", "true", "continue"}


def text_of(content: Any) -> str:
    """A message's content as plain text (content blocks joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in (None, "text"):
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return "" if content is None else str(content)


def message_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as immunity's role/content dicts (OpenAI roles)."""
    roles = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
    out: list[dict[str, Any]] = []
    for m in messages:
        d: dict[str, Any] = {"role": roles.get(m.type, m.type), "content": text_of(m.content)}
        calls = getattr(m, "tool_calls", None)
        if calls:
            d["tool_calls"] = [{"name": c["name"], "arguments": c["args"], "id": c.get("id")} for c in calls]
        call_id = getattr(m, "tool_call_id", None)
        if call_id:
            d["tool_call_id"] = call_id
        out.append(d)
    return out


def hint_messages(hints: Sequence[str]) -> list[BaseMessage]:
    """Hints as the messages added to the next model call.

    A hint that quotes outside text (``<tool-output>...``, see :func:`immunity.interventions.quoting.split`)
    goes as tool-role data: an ``AIMessage`` calling the synthetic tool ``QUOTE_TOOL`` (a fresh call
    id, no arguments), a ``ToolMessage`` answering that id with the redacted quote, then immunity's
    own words as a ``HumanMessage``. A hint without a quote is one ``HumanMessage``, as before."""
    out: list[BaseMessage] = []
    for hint in hints:
        parts = split(hint)
        if parts.quotes:
            call_id = f"immunity_quote_{uuid4().hex[:16]}"
            out.append(AIMessage(content="", tool_calls=[{"name": QUOTE_TOOL, "args": {}, "id": call_id,
                                                          "type": "tool_call"}]))
            out.append(ToolMessage(content=parts.data, tool_call_id=call_id, name=QUOTE_TOOL))
        out.append(HumanMessage(content=parts.words))
    return out


def agent_of(metadata: Any) -> str | None:
    """The agent a model or tool call belongs to when it runs inside a subgraph agent (a
    ``create_react_agent`` added as a node of a multi-agent graph): the parent graph's node that
    runs the subgraph, the first segment of LangGraph's ``checkpoint_ns``. ``None`` for a call made
    directly in a node of the protected graph (the run's own agent)."""
    if not isinstance(metadata, dict):
        return None
    ns = metadata.get("langgraph_checkpoint_ns") or metadata.get("checkpoint_ns")
    if not isinstance(ns, str) or "|" not in ns:
        return None
    return ns.split("|", 1)[0].split(":", 1)[0] or None


def _config_agent() -> str | None:
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get()
    return agent_of(config.get("metadata")) if config else None


def model_name(model: Any) -> str:
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def find_context(callbacks: Any) -> RunContext | None:
    """The live run context carried by a callback manager (or list of handlers), if any."""
    if callbacks is None:
        return None
    handlers = callbacks if isinstance(callbacks, list) else getattr(callbacks, "handlers", None)
    if not handlers:
        return None
    for h in handlers:
        if type(h) is GraphObserver and h.ctx.active:
            return h.ctx
    return None


class ImmunityControl(RunControl):
    """LangGraph's run control with immunity's own drain request on top of the caller's.

    The caller's ``control=`` (or the parent graph's) still drains the run; immunity's requests
    never touch the caller's object, so the caller can tell its drains from immunity's."""

    __slots__ = ("_outer",)

    def __init__(self, outer: RunControl | None = None) -> None:
        super().__init__()
        self._outer = outer

    @property
    def drain_requested(self) -> bool:
        return self._drain_reason is not None or (self._outer is not None and self._outer.drain_requested)

    @property
    def drain_reason(self) -> str | None:
        if self._drain_reason is not None:
            return self._drain_reason
        return self._outer.drain_reason if self._outer is not None else None

    @property
    def requested_by_immunity(self) -> bool:
        return self._drain_reason is not None


class RunContext:
    """One protected invocation of a graph (``invoke`` / ``stream`` / ``ainvoke`` / ``astream``)."""

    def __init__(self, adapter: Any, session: Any, graph: Any, *, thread_id: str | None, checkpoints: bool):
        self.adapter = adapter
        self.session = session
        self.graph = graph
        self.thread_id = thread_id
        self.checkpoints = checkpoints
        self.fail_closed = bool(adapter.runtime.config.fail_closed)
        self.observer = GraphObserver(self)
        self.control = ImmunityControl()
        self.active = True
        self.root_id: UUID | None = None
        self.expect_root = True
        self.nodes: dict[UUID, str] = {}
        self.step_nodes: dict[int, list[str]] = {}
        self.checkpointed_steps: set[int] = set()
        self.open_calls = 0
        self.rollback: Any = None
        self.rollbacks = 0
        self.interrupted = False
        self.stop_delivered = False
        self.nodes_after_stop = 0
        self.stop_answer: str | None = None
        self.final_values: Any = None
        self.breakpoints = False
        self._retry_hints: dict[str | None, str] = {}
        self._injected: dict[tuple[int, frozenset[str]], frozenset[str]] = {}
        self._node_started: dict[UUID, tuple[float, Any]] = {}
        #: the agent (subgraph node) of each running model call and tool call
        self.model_agents: dict[UUID, str | None] = {}
        self._tool_agents: dict[str | None, str | None] = {}
        self.outer_control: RunControl | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ errors (fail open)
    def fail(self, where: str, exc: BaseException) -> None:
        """Record an error raised inside immunity; re-raised only when the runtime is fail-closed."""
        if isinstance(exc, PluginError):
            raise exc
        self.session.record_error(PLUGIN, where, exc)

    @property
    def stop_text(self) -> str:
        return self.stop_answer or self.session.state.stop_requested or "Stopped by immunity."

    def _note(self, d: Decision) -> Decision:
        """Carry out the parts of a decision that are the same whatever the event was."""
        if d.stop and d.final_answer and not self.stop_answer:
            self.stop_answer = d.final_answer
        rec = d.recovery
        if rec is not None and rec.kind == RecoveryKind.ROLLBACK and self.rollback is None:
            if self.can_rollback():
                self.rollback = rec
                self.control.request_drain(DRAIN_ROLLBACK)
            else:
                log.info("rollback asked for run %s but this graph has no checkpointer/thread or no verified "
                         "checkpoint; the hint goes to the next model call instead", self.session.run.run_id)
        return d

    def can_rollback(self) -> bool:
        return (self.checkpoints and self.rollbacks < int(self.adapter.options.get("max_rollbacks", 2))
                and self.session.last_verified_checkpoint() is not None)

    # ------------------------------------------------------------------ graph and node boundaries
    def chain_start(self, run_id: UUID, parent_run_id: UUID | None, name: str | None,
                    metadata: dict[str, Any] | None) -> None:
        if self.expect_root:
            self.expect_root, self.root_id = False, run_id
            return
        if parent_run_id is None or parent_run_id != self.root_id or not metadata:
            return
        node = metadata.get("langgraph_node")
        if node != name or node is None:
            return
        step = metadata.get("langgraph_step")
        self.nodes[run_id] = node
        if isinstance(step, int):
            self.step_nodes.setdefault(step, []).append(node)
            if self.checkpoints and step - 1 not in self.checkpointed_steps:
                self.checkpointed_steps.add(step - 1)
                producers = self.step_nodes.get(step - 1) or (["__start__"] if step - 1 == 0 else [])
                last = self.session.state.last_step
                verified = self.open_calls == 0 and (last is None or (not last.failed and not last.data.get("flagged")))
                self.session.checkpoint({"thread_id": self.thread_id, "checkpoint_ns": "", "step": step - 1,
                                         "next": node, "as_node": producers[0] if len(producers) == 1 else None},
                                        verified=verified)
        if self.session.stop_requested:
            # the stop answer reached the model and the graph still goes on, or nodes keep running
            # without a model call to answer: drain at the end of this step
            self.nodes_after_stop += 1
            if self.stop_delivered or self.nodes_after_stop >= 2:
                self.control.request_drain(DRAIN_STOP)
        mode = self.adapter.node_events
        if mode == "both":
            self.session.emit(Event(kind=EventKind.NODE_START, node=node, agent=node, data={"step": step}))
        if mode:
            self._node_started[run_id] = (time.time(), step)

    def chain_end(self, outputs: Any, run_id: UUID) -> None:
        if run_id == self.root_id:
            self.final_values = outputs
            self.expect_root = True
            return
        node = self.nodes.pop(run_id, None)
        if node is None:
            return
        goto = getattr(outputs, "goto", None)
        if goto and type(outputs).__name__ == "Command":
            for target in goto if isinstance(goto, list | tuple) else [goto]:
                target_name = target if isinstance(target, str) else getattr(target, "node", None)
                if target_name and target_name != node:
                    self._note(self.session.handoff(node, str(target_name)))
        self._node_end(run_id, node, None)

    def _node_end(self, run_id: UUID, node: str, error: str | None) -> None:
        started = self._node_started.pop(run_id, None)
        if started is None:
            return
        t0, step = started
        self.session.emit(Event(kind=EventKind.NODE_END, node=node, agent=node, error=error,
                                data={"step": step, "started_at": t0, "duration_ms": round((time.time() - t0) * 1000, 3)}))

    def chain_error(self, error: BaseException, run_id: UUID) -> None:
        if run_id == self.root_id:
            self.expect_root = True
            return
        node = self.nodes.pop(run_id, None)
        if isinstance(error, GraphInterrupt):
            self.interrupted = True
        if node is None or isinstance(error, GraphBubbleUp):
            self._node_started.pop(run_id, None)
            return
        self._node_end(run_id, node, f"{type(error).__name__}: {error}")

    # ------------------------------------------------------------------ model calls
    def model_input(self, model: Any, prompt: PromptValue) -> PromptValue:
        """Emit ``model_start``; add the pending hints to *this* call only."""
        messages = prompt.to_messages()
        d = self._note(self.session.model_start(message_dicts(messages), model=model_name(model),
                                                agent=_config_agent()))
        if d.inject:
            return ChatPromptValue(messages=[*messages, *hint_messages(d.inject)])
        return prompt

    def model_output(self, response: LLMResult, agent: str | None = None) -> None:
        gens = response.generations[0] if response.generations else []
        msg = getattr(gens[0], "message", None) if gens else None
        if msg is None:
            text = gens[0].text if gens else ""
            self._note(self.session.model_end(text or None, agent=agent))
            return
        if msg.response_metadata.get(STOPPED_MARK):
            return
        calls = [{"name": c["name"], "arguments": c["args"], "id": c.get("id")} for c in getattr(msg, "tool_calls", [])]
        usage = None
        um = getattr(msg, "usage_metadata", None)
        if um:
            usage = {k: int(um.get(k) or 0) for k in ("input_tokens", "output_tokens", "total_tokens")}
        name = (response.llm_output or {}).get("model_name") or msg.response_metadata.get("model_name") \
            or msg.response_metadata.get("model")
        with self._lock:
            self.open_calls += len(calls)
        self._note(self.session.model_end(text_of(msg.content) or None, tool_calls=calls or None, usage=usage,
                                          model=name, agent=agent))

    def model_failed(self, exc: BaseException, model: str | None = None, agent: str | None = None) -> Decision:
        if getattr(exc, "_immunity_seen", False):
            return Decision()
        try:
            exc._immunity_seen = True  # type: ignore[attr-defined]
        except Exception:  # pragma: no cover - exceptions without a __dict__
            pass
        return self._note(self.session.model_end(error=f"{type(exc).__name__}: {exc}", model=model,
                                                 agent=agent or _config_agent()))

    def stopped_reply(self) -> ChatResult:
        """Stands in for a model call once the run is stopped: the final answer, no tool calls, so
        the graph's own router ends the run."""
        self.stop_delivered = True
        msg = AIMessage(content=self.stop_text, response_metadata={STOPPED_MARK: True})
        return ChatResult(generations=[ChatGeneration(message=msg)])

    # ------------------------------------------------------------------ tool calls
    def tool_arguments(self, tool: Any, tool_input: Any) -> dict[str, Any]:
        """The arguments the model gave (without the state / runtime LangGraph injects)."""
        if not isinstance(tool_input, dict):
            return {"input": tool_input}
        key = (id(tool), frozenset(tool_input))
        hidden = self._injected.get(key)
        if hidden is None:
            filt = getattr(tool, "_filter_injected_args", None)
            try:
                visible = filt(tool_input) if filt is not None else tool_input
            except Exception:
                visible = tool_input
            hidden = self._injected[key] = frozenset(k for k in tool_input if k not in visible)
        return {k: v for k, v in tool_input.items() if k not in hidden} if hidden else dict(tool_input)

    def reply(self, tool: Any, call_id: str | None, text: str, *, error: bool) -> Any:
        """What the model receives instead of running the tool: a ToolMessage, LangGraph's own way."""
        if call_id is None:
            return text
        return ToolMessage(content=text, tool_call_id=call_id, name=tool.name, status="error" if error else "success",
                           response_metadata={"immunity": True})

    def tool_before(self, tool: Any, tool_input: Any, call_id: str | None, config: Any) -> tuple[str, Any]:
        """``("run", tool_input)`` to run the tool (maybe with new arguments) or ``("reply", message)``."""
        name = tool.name
        agent = agent_of((config or {}).get("metadata")) or _config_agent()
        self._tool_agents[call_id] = agent
        if self.session.stop_requested:
            return "reply", self.reply(tool, call_id, f"[immunity] Not run: the run is stopping ({self.stop_text})",
                                       error=True)
        try:
            d = self._note(self.session.tool_start(name, self.tool_arguments(tool, tool_input), tool_call_id=call_id,
                                                   agent=agent))
        except Exception as exc:
            self.fail("tool_start", exc)
            return "run", tool_input
        finally:
            with self._lock:
                self.open_calls = max(0, self.open_calls - 1)
        if d.cached_result is not None:
            return "reply", self.reply(tool, call_id, d.cached_result, error=False)
        if d.stop:
            return "reply", self.reply(tool, call_id, f"[immunity] Not run: {self.stop_text}", error=True)
        if d.ask_human:
            approved, new_args, note = self.ask_human(tool, tool_input, call_id, d.ask_human, config)
            if not approved:
                return "reply", self.reply(tool, call_id, note, error=True)
            if new_args is not None:
                tool_input = self.rewrite(tool, tool_input, new_args)
        elif d.block:
            text = d.message or "blocked by a verifier"
            if not text.startswith("[immunity]"):
                text = f"[immunity] Blocked: {text}"
            return "reply", self.reply(tool, call_id, text, error=True)
        if d.rewrite is not None:
            tool_input = self.rewrite(tool, tool_input, d.rewrite)
        return "run", tool_input

    def rewrite(self, tool: Any, tool_input: Any, new_args: dict[str, Any]) -> Any:
        if not isinstance(tool_input, dict):
            return new_args.get("input", tool_input) if len(new_args) == 1 and "input" in new_args else new_args
        visible = self.tool_arguments(tool, tool_input)
        injected = {k: v for k, v in tool_input.items() if k not in visible}
        return {**new_args, **injected}

    def ask_human(self, tool: Any, tool_input: Any, call_id: str | None, question: str,
                  config: Any) -> tuple[bool, dict[str, Any] | None, str]:
        """Ask through LangGraph's ``interrupt()``: the run pauses (the caller's ``invoke`` returns
        with ``__interrupt__``) and resumes with ``Command(resume=answer)``. Needs a checkpointer;
        without one the call is not run and the model is told it needs approval."""
        conf = (config or {}).get("configurable") or {}
        if not conf.get("__pregel_checkpointer"):
            return False, None, f"[immunity] Not run: this call needs a human's approval and none can be asked " \
                                f"in this run (no checkpointer). {question}"
        from langgraph.types import interrupt

        answer = interrupt({"kind": "immunity_ask_human", "question": question, "tool": tool.name,
                            "arguments": self.tool_arguments(tool, tool_input), "tool_call_id": call_id,
                            "run_id": self.session.run.run_id})
        if isinstance(answer, dict):
            ok = answer.get("approved", answer.get("action") in ("approve", "accept", "edit"))
            args = answer.get("arguments") or answer.get("args")
            note = str(answer.get("message") or answer.get("reason") or "")
            return bool(ok), args if isinstance(args, dict) else None, \
                f"[immunity] A human declined this call. {note}".strip()
        if isinstance(answer, bool):
            return answer, None, "[immunity] A human declined this call."
        text = str(answer).strip()
        if text.lower() in _APPROVALS:
            return True, None, ""
        return False, None, f"[immunity] A human declined this call: {text}"

    def tool_after(self, tool: Any, tool_input: Any, call_id: str | None, out: Any) -> Any:
        try:
            hint = self._retry_hints.pop(call_id, None)
            if hint is not None:  # the re-executed call worked: the retry hint would only mislead the model
                self.session.discard_hint(hint)
            result, is_error = _tool_result(out)
            agent = self._tool_agents.pop(call_id, None)
            d = self.session.tool_end(tool.name, None if is_error else result, error=result if is_error else None,
                                      tool_call_id=call_id, arguments=self.tool_arguments(tool, tool_input),
                                      agent=agent)
            self._note(d)
            goto = getattr(out, "goto", None)
            if goto and type(out).__name__ == "Command":
                for target in goto if isinstance(goto, list | tuple) else [goto]:
                    tname = target if isinstance(target, str) else getattr(target, "node", None)
                    if tname:  # the agent hands over (its tool is only the means)
                        self._note(self.session.handoff(agent or tool.name, str(tname), tool_call_id=call_id))
        except Exception as exc:
            self.fail("tool_end", exc)
        return out

    def tool_failed(self, tool: Any, tool_input: Any, call_id: str | None, exc: BaseException,
                    attempt: int) -> tuple[str, Any]:
        """After the tool raised: ``("retry", delay_s)``, ``("reply", message)`` or ``("raise", None)``."""
        err = f"{type(exc).__name__}: {exc}"
        try:
            d = self._note(self.session.tool_end(tool.name, error=err, tool_call_id=call_id,
                                                 arguments=self.tool_arguments(tool, tool_input),
                                                 agent=self._tool_agents.get(call_id)))
        except Exception as inner:
            self.fail("tool_end", inner)
            return "raise", None
        rec = d.recovery
        last = self.session.state.last_step
        side_effect = bool(last is not None and last.side_effect)
        if rec is not None and rec.kind == RecoveryKind.RETRY and attempt + 1 < rec.max_attempts and not d.stop \
                and not side_effect and not self.session.stop_requested:
            if rec.hint:
                self._retry_hints[call_id] = rec.hint
            return "retry", min(max(rec.delay_s, 0.0), 30.0)
        if not self.adapter.handle_tool_errors or (rec is None and not d.stop):
            return "raise", None
        return "reply", self.reply(tool, call_id, f"Error: {err}", error=True)


def _tool_result(out: Any) -> tuple[str, bool]:
    if isinstance(out, ToolMessage):
        return text_of(out.content), out.status == "error"
    if type(out).__name__ == "Command":
        update = getattr(out, "update", None)
        msgs = update.get("messages") if isinstance(update, dict) else None
        if msgs:
            tms = [m for m in msgs if isinstance(m, ToolMessage)]
            if tms:
                return text_of(tms[-1].content), tms[-1].status == "error"
        return repr(out)[:2000], False
    if isinstance(out, tuple) and len(out) == 2:
        return str(out[0]), False
    return str(out), False


class GraphObserver(BaseCallbackHandler):
    """The callback handler that carries a :class:`RunContext` through one graph invocation."""

    run_inline = True

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.raise_error = ctx.fail_closed

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                       tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kw: Any) -> None:
        try:
            self.ctx.chain_start(run_id, parent_run_id, kw.get("name"), metadata)
        except Exception as exc:
            self.ctx.fail("on_chain_start", exc)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        try:
            self.ctx.chain_end(outputs, run_id)
        except Exception as exc:
            self.ctx.fail("on_chain_end", exc)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                       **kw: Any) -> None:
        try:
            self.ctx.chain_error(error, run_id)
        except Exception as exc:
            self.ctx.fail("on_chain_error", exc)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
                            metadata: dict[str, Any] | None = None, **kw: Any) -> None:
        agent = agent_of(metadata)
        if agent is not None:
            self.ctx.model_agents[run_id] = agent

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        try:
            self.ctx.model_output(response, self.ctx.model_agents.pop(run_id, None))
        except Exception as exc:
            self.ctx.fail("on_llm_end", exc)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None,
                     **kw: Any) -> None:
        try:
            self.ctx.model_failed(error, agent=self.ctx.model_agents.pop(run_id, None))
        except Exception as exc:
            self.ctx.fail("on_llm_error", exc)
