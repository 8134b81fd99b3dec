"""Translate the OpenAI Agents SDK's native events into immunity events, and carry out decisions.

This is the one module of the adapter that imports the SDK; :mod:`immunity_openai_agents.adapter`
imports it only when an agent is instrumented. The SDK's own extension points it uses:

- ``agent.hooks`` (:class:`agents.AgentHooks`, chained with the hooks the user set): agent start,
  model call end (output, tool calls, token usage), handoffs, the final output.
- a tool input guardrail added to each :class:`agents.FunctionTool`: the tool call's arguments
  are verified before the tool runs; a block, a cached result or a stop answers the model with
  ``ToolGuardrailFunctionOutput.reject_content`` (the tool is not run).
- the tool's ``on_invoke_tool`` (wrapped): rewritten arguments, the result or the error (typed
  from the function span when tracing is on, else from the SDK's default error text).
- the tool's ``needs_approval`` (wrapped): an ``ask_human`` decision pauses the run on the SDK's
  own approval interruption (``result.interruptions``, ``RunState.approve``/``reject``).
- the agent's ``tool_use_behavior`` (wrapped): a stop ends the run cleanly after the tool turn
  with the stop's answer as ``result.final_output``.
- ``RunConfig.call_model_input_filter`` (chained with the user's): hints are added to the input of
  *this* model call only; a checkpoint is recorded before each model call.
- the default agent runner (``agents.run.set_default_agent_runner``, marked experimental by the
  SDK): run start and end (also on errors), the run's identity (session id, conversation id,
  group id), and rollback to a verified checkpoint, while the user's ``Runner.run`` /
  ``run_sync`` / ``run_streamed`` call stays unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from agents import (
    Agent,
    AgentHooks,
    FunctionTool,
    Model,
    RunConfig,
    RunState,
    ToolGuardrailFunctionOutput,
    ToolInputGuardrail,
    ToolsToFinalOutputResult,
)
from agents.run import AgentRunner, get_default_agent_runner, set_default_agent_runner
from agents.run_config import ModelInputData
from agents.tool import default_tool_error_function
from agents.tracing import get_current_span
from immunity.errors import PluginError, RunStopped
from immunity.interventions.quoting import QUOTE_TOOL, split
from immunity.models import Event, EventKind, RecoveryKind, Run, new_id
from immunity.outcomes import end_run
from immunity.runtime import Decision, RunSession

if TYPE_CHECKING:  # pragma: no cover
    from immunity.models import Checkpoint, Recovery

    from immunity_openai_agents.adapter import OpenAIAgentsAdapter

log = logging.getLogger("immunity.openai_agents")

PLUGIN = "immunity_openai_agents"
FRAMEWORK = "openai-agents"
_ENDED = ("finished", "stopped", "error")


def _default_error_prefixes() -> tuple[str, ...]:
    """The fixed text the SDK's default tool error formatter puts before the error message."""
    marker = "\x00immunity\x00"
    prefixes = [default_tool_error_function(None, RuntimeError(marker)).split(marker)[0]]  # type: ignore[arg-type]
    try:
        json.loads("{")
    except json.JSONDecodeError as exc:
        text = default_tool_error_function(None, exc)  # type: ignore[arg-type]
        prefixes.append(text.split(str(exc))[0])
    return tuple(p for p in prefixes if p)


_ERROR_PREFIXES = _default_error_prefixes()


# ---------------------------------------------------------------------------------------------
# per-run state
# ---------------------------------------------------------------------------------------------


class ActiveRun:
    """What the adapter keeps about one live SDK run (across handoffs, resumes and rollbacks)."""

    def __init__(self, adapter: OpenAIAgentsAdapter, session: RunSession):
        self.adapter = adapter
        self.session = session
        self.tool_decisions: dict[str, Decision] = {}
        self.rewrites: dict[str, dict[str, Any]] = {}
        self.stop: str | None = None
        self.rollback: Recovery | None = None
        self.rollbacks = 0
        self.inputs: dict[str, tuple[Any, list[Any], int | None]] = {}
        self.filtered = False
        self.sdk_session: Any = None
        self.streamed = False
        self.via_runner = False
        self.agent: str | None = None  # the agent running now (set when each agent starts)
        self.starting_agent: Any = None  # the agent the Runner call started with
        self.answer_stop: str | None = None  # the stop answer the agent's wrapped model gives next
        self.last_calls: list[dict[str, Any]] = []  # the tool calls of the last model response

    @property
    def run_id(self) -> str:
        return self.session.run.run_id


_CURRENT: ContextVar[ActiveRun | None] = ContextVar("immunity_openai_agents_run", default=None)
#: set while an immunity tool wrapper runs a tool (so a second wrapper, another guard's, passes through)
_IN_TOOL: ContextVar[bool] = ContextVar("immunity_openai_agents_in_tool", default=False)


def _handoff_call(calls: list[dict[str, Any]], source: Any, target: Any) -> dict[str, Any] | None:
    """The model's call of the handoff tool that handed ``source`` over to ``target`` (its id and
    arguments go on the handoff's step), if it is among the last response's calls."""
    from agents.handoffs import Handoff

    names = set()
    for h in getattr(source, "handoffs", None) or []:
        if isinstance(h, Handoff):
            if h.agent_name == target.name:
                names.add(h.tool_name)
        elif getattr(h, "name", None) == target.name:
            names.add(Handoff.default_tool_name(h))
    return next((c for c in reversed(calls) if c.get("name") in names), None)


def current_run() -> ActiveRun | None:
    """The immunity run of the SDK run this code executes in (tools, hooks, guardrails), if any."""
    return _CURRENT.get()


def _fail(adapter: OpenAIAgentsAdapter, run: ActiveRun | None, where: str, exc: BaseException) -> None:
    """Fail open: record an error raised inside the adapter; re-raise only when fail-closed."""
    if isinstance(exc, PluginError):
        raise exc
    if run is not None:
        run.session.record_error(PLUGIN, where, exc)  # raises PluginError when fail-closed
        return
    log.warning("immunity openai-agents adapter failed in %s: %s: %s", where, type(exc).__name__, exc)
    if adapter.runtime.config.fail_closed:
        raise PluginError(PLUGIN, f"{where}: {type(exc).__name__}: {exc}") from exc


def _lookup(adapter: OpenAIAgentsAdapter, context: Any, agent: Any = None, *, start: bool = False) -> ActiveRun | None:
    """The run an SDK callback belongs to: the run the runner started (a context variable, kept
    across ``await``, tasks and the run_sync loop), else a run keyed by the run's ``Usage`` object
    (shared by the run's context and every tool context), started on first sight."""
    run = _CURRENT.get()
    if run is not None:
        return run
    usage = getattr(context, "usage", None)
    if usage is None:
        return None
    run = adapter._fallback.get(id(usage))
    if run is None and start:
        name = getattr(agent, "name", None)
        session = adapter.runtime.start_run(task=None, framework=FRAMEWORK, agent=name, domain=adapter.options["domain"],
                                            metadata={"entry": "hooks"})
        run = ActiveRun(adapter, session)
        adapter._fallback[id(usage)] = run
        adapter.run_ids.append(session.run.run_id)
    return run


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------


def _plain(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    if hasattr(item, "model_dump"):
        return item.model_dump(exclude_unset=True)
    return {"value": str(item)}


def as_messages(items: Any, instructions: str | None = None) -> list[dict[str, Any]]:
    """SDK input items as immunity messages (plain dicts; a system message first)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
    else:
        out.extend(_plain(i) for i in items or [])
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(getattr(p, "text", None) or (p.get("text", "") if isinstance(p, dict) else ""))
                       for p in content)
    return ""


def _task_of(input: Any) -> str | None:
    if isinstance(input, str):
        return input
    if isinstance(input, list):
        for item in reversed(input):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text_of(item.get("content")) or None
    return None


def hint_items(hints: Any) -> list[dict[str, Any]]:
    """Hints as the input items added to the next model call.

    A hint that quotes outside text (``<tool-output>...``, see :func:`immunity.interventions.quoting.split`)
    goes as tool-role data: a ``function_call`` item calling the synthetic tool ``QUOTE_TOOL`` (a
    fresh call id, empty arguments), a ``function_call_output`` item answering that id with the
    redacted quote, then immunity's own words as a user message. A hint without a quote is one user
    message, as before."""
    out: list[dict[str, Any]] = []
    for hint in hints:
        parts = split(hint)
        if parts.quotes:
            call_id = f"call_immunity_quote_{uuid.uuid4().hex[:16]}"
            out.append({"type": "function_call", "call_id": call_id, "name": QUOTE_TOOL, "arguments": "{}"})
            out.append({"type": "function_call_output", "call_id": call_id, "output": parts.data})
        out.append({"role": "user", "content": parts.words})
    return out


def _model_name(agent: Any) -> str | None:
    model = getattr(agent, "model", None)
    if model is None or isinstance(model, str):
        return model
    return str(getattr(model, "model", None) or getattr(model, "name", None) or type(model).__name__)


class GuardedModel(Model):
    """An agent's own model while instrumented: a model call that raises is reported to the runtime
    (``model_end`` with the error), whose recovery decides: RETRY (after the backoff it computed,
    honouring ``Retry-After``; the hints queued meanwhile go into the retried call through the input
    filter) or FALLBACK to the adapter's ``fallback_model``; otherwise the error goes on to the SDK.
    A streamed call is retried only when it failed before its first event."""

    def __init__(self, adapter: OpenAIAgentsAdapter, inner: Any):
        self.adapter, self.inner = adapter, inner

    @property
    def name(self) -> str:
        return str(getattr(self.inner, "name", None) or getattr(self.inner, "model", None) or type(self.inner).__name__)

    async def _cleanup_on_run_end(self, owner: object) -> None:
        await self.inner._cleanup_on_run_end(owner)

    async def close(self) -> None:
        await self.inner.close()

    def get_retry_advice(self, request: Any) -> Any:
        return self.inner.get_retry_advice(request)

    def __getattr__(self, name: str) -> Any:  # anything else the SDK or the user reads: the real model's
        if name in ("adapter", "inner"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _plan(self, exc: BaseException, model: Any, attempt: int) -> tuple[str, float] | None:
        run = current_run()
        if run is None:
            return None
        try:
            name = str(getattr(model, "name", None) or getattr(model, "model", None) or type(model).__name__)
            d = run.session.model_end(None, error=f"{type(exc).__name__}: {exc}", model=name, agent=run.agent)
        except PluginError:
            raise
        except Exception as inner:
            _fail(self.adapter, run, "model_error", inner)
            return None
        rec = d.recovery
        fallback = self.adapter.options.get("fallback_model")
        if d.stop or rec is None:
            return None
        if rec.kind == RecoveryKind.FALLBACK and fallback is not None and model is not fallback:
            return "fallback", 0.0
        if rec.kind == RecoveryKind.RETRY and attempt + 1 < rec.max_attempts:
            return "retry", min(max(rec.delay_s, 0.0), 30.0)
        return None

    async def _next_try(self, exc: BaseException, model: Any, attempt: int) -> tuple[Any, int] | None:
        """After a failed model call: the model and attempt number to try next (switching to the
        fallback model, or waiting the retry's backoff), or ``None`` to let the error through."""
        plan = self._plan(exc, model, attempt)
        if plan is None:
            return None
        if plan[0] == "fallback":
            return self.adapter.options["fallback_model"], attempt
        await asyncio.sleep(plan[1])
        return model, attempt + 1

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is not None and run.answer_stop is not None:  # stopped before this call: answer with the stop
            text, run.answer_stop = run.answer_stop, None
            return _text_response(text)
        model, attempt = self.inner, 0
        while True:
            try:
                return await model.get_response(*args, **kwargs)
            except Exception as exc:
                nxt = await self._next_try(exc, model, attempt)
                if nxt is None:
                    raise
                model, attempt = nxt

    async def stream_response(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        run = current_run()
        if run is not None and run.answer_stop is not None:  # stopped before this call: stream the stop
            text, run.answer_stop = run.answer_stop, None
            yield _text_stream_event(text, self.name)
            return
        model, attempt = self.inner, 0
        while True:
            started = False
            try:
                async for event in model.stream_response(*args, **kwargs):
                    started = True
                    yield event
                return
            except Exception as exc:
                nxt = None if started else await self._next_try(exc, model, attempt)
                if nxt is None:
                    raise
                model, attempt = nxt


def _text_response(text: str) -> Any:
    """A model response that is this final text (no model was called)."""
    from agents import ModelResponse, Usage
    from openai.types.responses import ResponseOutputMessage, ResponseOutputText

    message = ResponseOutputMessage(type="message", id="immunity_stop", role="assistant", status="completed",
                                    content=[ResponseOutputText(type="output_text", text=text, annotations=[])])
    return ModelResponse(output=[message], usage=Usage(), response_id=None)


def _text_stream_event(text: str, model: str) -> Any:
    """The one streamed event of a model response that is this final text (no model was called):
    ``response.completed``, which the SDK's streamed run turns into the turn's output."""
    from openai.types.responses import Response, ResponseCompletedEvent

    message = _text_response(text).output[0]
    return ResponseCompletedEvent(type="response.completed", sequence_number=0, response=Response.model_validate({
        "id": "immunity_stop", "created_at": 0, "model": model, "object": "response",
        "output": [message.model_dump()], "tool_choice": "auto", "tools": [], "parallel_tool_calls": False}))


def is_model(obj: Any) -> bool:
    return isinstance(obj, Model) and not isinstance(obj, GuardedModel)


def _parse_args(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"input": text}
    return value if isinstance(value, dict) else {"input": value}


def tool_error(output: Any) -> str | None:
    """The error of a tool call the SDK turned into a result, or ``None`` if it succeeded.

    With tracing on, the SDK attaches the typed error to the tool's function span (the current span
    while the tool runs); with tracing off (``OPENAI_AGENTS_DISABLE_TRACING=1``) spans are no-ops,
    so the SDK's default error text is recognised instead. A custom ``failure_error_function``
    output is seen as an error only with tracing on.
    """
    span = get_current_span()
    error = getattr(span, "error", None) if span is not None else None
    if error:
        data = error.get("data") or {}
        return str(data.get("error") or error.get("message") or "tool error")
    if isinstance(output, str):
        for prefix in _ERROR_PREFIXES:
            if output.startswith(prefix):
                return output[len(prefix):] or output
    return None


# ---------------------------------------------------------------------------------------------
# agent hooks
# ---------------------------------------------------------------------------------------------


class GuardHooks(AgentHooks):
    """``agent.hooks`` while the agent is instrumented: immunity's observer, then the user's hooks."""

    def __init__(self, adapter: OpenAIAgentsAdapter, inner: Any):
        # The SDK fingerprints an agent's hooks by walking their public attributes on every run
        # (RunState agent identity); the adapter stays private so that walk does not reach the
        # runtime, its plugins and store. The user's hooks stay visible, as they would be unwrapped.
        self._adapter = adapter
        self.inner = inner

    @property
    def adapter(self) -> OpenAIAgentsAdapter:
        return self._adapter

    async def _inner(self, name: str, *args: Any) -> None:
        if self.inner is not None:
            await getattr(self.inner, name)(*args)

    async def on_start(self, context: Any, agent: Any) -> None:
        run = None
        try:
            run = _lookup(self._adapter, context, agent, start=True)
            if run is not None:
                run.agent = agent.name
                if self._adapter.options["node_events"] == "all":  # a "node" is one agent's turn
                    run.session.emit(Event(kind=EventKind.NODE_START, agent=agent.name, node=agent.name))
        except Exception as exc:
            _fail(self._adapter, run, "on_start", exc)
        await self._inner("on_start", context, agent)

    async def on_llm_start(self, context: Any, agent: Any, system_prompt: str | None, input_items: list[Any]) -> None:
        run = None
        try:
            run = _lookup(self._adapter, context, agent, start=True)
            if run is not None:
                if run.filtered:
                    run.filtered = False  # model_start was emitted (and hints added) by the input filter
                else:
                    # the run did not come through immunity's runner (another default runner was set
                    # after instrumenting): the hints go into the list the SDK sends to the model
                    d = run.session.model_start(as_messages(input_items, system_prompt), model=_model_name(agent),
                                                agent=agent.name)
                    input_items.extend(hint_items(d.inject))
                    if d.stop:
                        run.stop = d.final_answer or d.message or "stopped by immunity"
        except Exception as exc:
            _fail(self._adapter, run, "on_llm_start", exc)
        await self._inner("on_llm_start", context, agent, system_prompt, input_items)

    async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
        run = None
        try:
            run = _lookup(self._adapter, context, agent, start=True)
            if run is not None:
                texts: list[str] = []
                calls: list[dict[str, Any]] = []
                for item in response.output or []:
                    kind = getattr(item, "type", None)
                    if kind == "message":
                        texts.append(_text_of(getattr(item, "content", None)))
                    elif kind == "function_call":
                        calls.append({"name": item.name, "arguments": _parse_args(item.arguments), "id": item.call_id})
                u = response.usage
                usage = {"input_tokens": int(u.input_tokens or 0), "output_tokens": int(u.output_tokens or 0),
                         "total_tokens": int(u.total_tokens or 0)} if u is not None else None
                run.last_calls = calls
                d = run.session.model_end("".join(texts) or None, tool_calls=calls or None, usage=usage,
                                          model=_model_name(agent), agent=agent.name)
                if d.stop:
                    run.stop = d.final_answer or "stopped by immunity"
        except Exception as exc:
            _fail(self._adapter, run, "on_llm_end", exc)
        await self._inner("on_llm_end", context, agent, response)

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        run = None
        try:
            if id(tool) not in self._adapter._guarded_tools:  # hosted / shell / computer tools: observe only
                run = _lookup(self._adapter, context, agent, start=True)
                if run is not None:
                    run.session.tool_start(getattr(tool, "name", type(tool).__name__),
                                           _parse_args(getattr(context, "tool_arguments", None)),
                                           tool_call_id=getattr(context, "tool_call_id", None), agent=agent.name)
        except Exception as exc:
            _fail(self._adapter, run, "on_tool_start", exc)
        await self._inner("on_tool_start", context, agent, tool)

    async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
        run = None
        try:
            if id(tool) not in self._adapter._guarded_tools:
                run = _lookup(self._adapter, context, agent, start=True)
                if run is not None:
                    run.session.tool_end(getattr(tool, "name", type(tool).__name__), result,
                                         tool_call_id=getattr(context, "tool_call_id", None), agent=agent.name)
        except Exception as exc:
            _fail(self._adapter, run, "on_tool_end", exc)
        await self._inner("on_tool_end", context, agent, tool, result)

    async def on_handoff(self, context: Any, agent: Any, source: Any) -> None:
        run = None
        try:
            run = _lookup(self._adapter, context, agent, start=True)
            if run is not None:
                call = _handoff_call(run.last_calls, source, agent)
                d = run.session.handoff(getattr(source, "name", None), agent.name,
                                        arguments=call.get("arguments") if call else None,
                                        tool_call_id=call.get("id") if call else None)
                if d.stop:
                    run.stop = d.final_answer or "stopped by immunity"
        except Exception as exc:
            _fail(self._adapter, run, "on_handoff", exc)
        await self._inner("on_handoff", context, agent, source)

    async def on_end(self, context: Any, agent: Any, output: Any) -> None:
        run = None
        try:
            run = _lookup(self._adapter, context, agent)
            if run is not None and self._adapter.options["node_events"] != "none":
                run.session.emit(Event(kind=EventKind.NODE_END, agent=agent.name, node=agent.name))
            if run is not None and run.rollback is None:
                text = output if isinstance(output, str) else json.dumps(_plain(output), default=str) \
                    if hasattr(output, "model_dump") else str(output)
                run.session.final_answer(text, agent=agent.name)
                if not run.via_runner:  # nobody else will end it
                    end_run(run.session, "failure" if run.stop else None,
                            reason=f"stopped by immunity: {run.stop}" if run.stop else None, output=text)
                    self._adapter._fallback.pop(id(getattr(context, "usage", None)), None)
        except Exception as exc:
            _fail(self._adapter, run, "on_end", exc)
        await self._inner("on_end", context, agent, output)


# ---------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------


def _tool_start(adapter: OpenAIAgentsAdapter, run: ActiveRun, name: str, arguments: Any, call_id: str | None,
                agent: Any) -> Decision:
    if call_id and call_id in run.tool_decisions:
        return run.tool_decisions[call_id]
    d = run.session.tool_start(name, arguments, tool_call_id=call_id, agent=getattr(agent, "name", None) or run.agent)
    if call_id:
        run.tool_decisions[call_id] = d
    return d


def make_input_guardrail(adapter: OpenAIAgentsAdapter) -> ToolInputGuardrail[Any]:
    """The tool input guardrail: verify the call's arguments before the tool runs."""

    async def immunity(data: Any) -> ToolGuardrailFunctionOutput:
        run = None
        try:
            ctx = data.context
            run = _lookup(adapter, ctx, data.agent, start=True)
            if run is None:
                return ToolGuardrailFunctionOutput.allow()
            call_id = ctx.tool_call_id
            d = _tool_start(adapter, run, ctx.tool_name, _parse_args(ctx.tool_arguments), call_id, data.agent)
            run.tool_decisions.pop(call_id, None)
            if d.stop:
                run.stop = d.final_answer or "stopped by immunity"
                return ToolGuardrailFunctionOutput.reject_content(
                    f"Not run: the run was stopped by immunity ({run.stop}).", output_info={"immunity": "stop"})
            if d.cached_result is not None:
                return ToolGuardrailFunctionOutput.reject_content(d.cached_result, output_info={"immunity": "cached"})
            if d.block:
                return ToolGuardrailFunctionOutput.reject_content(
                    f"Blocked by immunity: {d.message or 'this call is not allowed'}",
                    output_info={"immunity": "block", "message": d.message})
            if d.ask_human and not ctx.is_tool_approved(ctx.tool_name, call_id):
                return ToolGuardrailFunctionOutput.reject_content(
                    f"Not run: needs a human's approval ({d.ask_human}).", output_info={"immunity": "ask_human"})
            if d.rewrite is not None:
                run.rewrites[call_id] = d.rewrite
            return ToolGuardrailFunctionOutput.allow(output_info={"immunity": "allow"})
        except Exception as exc:
            _fail(adapter, run, "tool_input_guardrail", exc)
            return ToolGuardrailFunctionOutput.allow()

    return ToolInputGuardrail(guardrail_function=immunity, name="immunity")


def wrap_invoke(adapter: OpenAIAgentsAdapter, tool: FunctionTool, original: Callable[..., Any]) -> Callable[..., Any]:
    """``tool.on_invoke_tool`` while instrumented: rewritten arguments in, result or error out."""
    name = tool.name

    async def invoke(ctx: Any, input: str) -> Any:
        if _IN_TOOL.get():  # a tool shared by agents of two guards: the outer wrapper records this call
            return await original(ctx, input)
        token = _IN_TOOL.set(True)
        try:
            return await _invoke(ctx, input)
        finally:
            _IN_TOOL.reset(token)

    async def _invoke(ctx: Any, input: str) -> Any:
        run = None
        arguments: dict[str, Any] | None = None
        call_id = getattr(ctx, "tool_call_id", None)
        try:
            run = _lookup(adapter, ctx)
            if run is not None:
                rewrite = run.rewrites.pop(call_id, None) if call_id else None
                if rewrite is not None:
                    input = json.dumps(rewrite)
                arguments = rewrite if rewrite is not None else _parse_args(input)
        except Exception as exc:
            _fail(adapter, run, "on_invoke_tool", exc)
        if run is None:
            return await original(ctx, input)
        try:
            output = await original(ctx, input)
        except Exception as exc:
            try:
                run.session.tool_end(name, error=f"{type(exc).__name__}: {exc}", tool_call_id=call_id,
                                     arguments=arguments)
            except Exception as inner:
                _fail(adapter, run, "on_invoke_tool", inner)
            raise
        try:
            error = tool_error(output)
            d = run.session.tool_end(name, None if error else output, error=error, tool_call_id=call_id,
                                     arguments=arguments)
            _after_step(run, d)
        except Exception as exc:
            _fail(adapter, run, "on_invoke_tool", exc)
        return output

    marker = "__agents_sync_function_tool__"
    if getattr(original, marker, False):
        setattr(invoke, marker, True)
    invoke.__immunity_original__ = original  # type: ignore[attr-defined]
    return invoke


def _after_step(run: ActiveRun, d: Decision) -> None:
    rec = d.recovery
    if rec is not None and rec.kind == RecoveryKind.ROLLBACK:
        run.rollback = rec
    if d.stop:
        run.stop = d.final_answer or "stopped by immunity"


def wrap_needs_approval(adapter: OpenAIAgentsAdapter, tool: FunctionTool, original: Any) -> Callable[..., Any]:
    """``tool.needs_approval`` while instrumented: the user's setting, or an ``ask_human`` decision."""

    async def needs_approval(run_context: Any, params: dict[str, Any], call_id: str) -> bool:
        if original is True:
            return True
        if callable(original):
            value = original(run_context, params, call_id)
            if asyncio.iscoroutine(value) or hasattr(value, "__await__"):
                value = await value
            if value:
                return True
        run = None
        try:
            run = _lookup(adapter, run_context, start=True)
            if run is None:
                return False
            d = _tool_start(adapter, run, tool.name, params, call_id, None)
            return bool(d.ask_human) and not (d.block or d.stop or d.cached_result is not None)
        except Exception as exc:
            _fail(adapter, run, "needs_approval", exc)
            return False

    needs_approval.__immunity_original__ = original  # type: ignore[attr-defined]
    return needs_approval


def wrap_tool_use_behavior(adapter: OpenAIAgentsAdapter, original: Any) -> Callable[..., Any]:
    """``agent.tool_use_behavior`` while instrumented: end the run after this tool turn when immunity
    stops it (or rolls it back); otherwise exactly the user's behaviour."""

    async def tool_use_behavior(context: Any, tool_results: list[Any]) -> ToolsToFinalOutputResult:
        run = None
        try:
            run = _lookup(adapter, context)
            if run is not None and run.stop is None and run.rollback is not None and run.streamed:
                # a streamed run cannot start again from earlier input (its caller holds the result
                # object): it goes on, and the rollback's hint reaches the next model call
                run.session.emit(Event(kind=EventKind.CUSTOM, data={"rollback_skipped": "streamed run"}))
                run.rollback = None
            if run is not None and (run.stop is not None or run.rollback is not None):
                return ToolsToFinalOutputResult(is_final_output=True,
                                                final_output=run.stop if run.rollback is None else "")
        except Exception as exc:
            _fail(adapter, run, "tool_use_behavior", exc)
        if original == "run_llm_again":
            return ToolsToFinalOutputResult(is_final_output=False, final_output=None)
        if original == "stop_on_first_tool":
            return ToolsToFinalOutputResult(is_final_output=True, final_output=tool_results[0].output)
        if isinstance(original, dict):
            names = original.get("stop_at_tool_names", [])
            for r in tool_results:
                if r.tool.name in names or getattr(r.tool, "qualified_name", None) in names:
                    return ToolsToFinalOutputResult(is_final_output=True, final_output=r.output)
            return ToolsToFinalOutputResult(is_final_output=False, final_output=None)
        result = original(context, tool_results)
        if asyncio.iscoroutine(result) or hasattr(result, "__await__"):
            result = await result
        return result

    tool_use_behavior.__immunity_original__ = original  # type: ignore[attr-defined]
    return tool_use_behavior


# ---------------------------------------------------------------------------------------------
# model input filter
# ---------------------------------------------------------------------------------------------


def make_input_filter(user_filter: Any) -> Callable[..., Any]:
    """``RunConfig.call_model_input_filter`` for one run: the user's filter, then a checkpoint, the
    ``model_start`` event and the hints for this call only."""

    async def immunity_input_filter(data: Any) -> Any:
        md = data.model_data
        if user_filter is not None:
            md = user_filter(data)
            if asyncio.iscoroutine(md) or hasattr(md, "__await__"):
                md = await md
        run = _CURRENT.get()
        if run is None:
            return md
        try:
            if run.stop is not None or run.session.stop_requested:
                text = run.stop or run.session.stop_requested or "stopped by immunity"
                if isinstance(data.agent.model, GuardedModel) and \
                        getattr(data.agent, "output_type", None) in (None, str):
                    # the agent's own model answers with the stop (no model call): a clean final answer
                    run.stop, run.answer_stop = text, text
                    return md
                raise RunStopped(text, run_id=run.run_id)
            items = list(md.input)
            n_session = None
            if run.sdk_session is not None:
                n_session = len(await run.sdk_session.get_items())
            cp = run.session.checkpoint({"kind": "model_input", "agent": data.agent.name, "items": len(items),
                                         "session_items": n_session})
            run.inputs[cp.checkpoint_id] = (data.agent, items, n_session)
            d = run.session.model_start(as_messages(items, md.instructions), model=_model_name(data.agent),
                                        agent=data.agent.name)
            run.filtered = True
            if d.inject:
                hints: list[Any] = hint_items(d.inject)
                return ModelInputData(input=[*items, *hints], instructions=md.instructions)
        except RunStopped:
            raise
        except Exception as exc:
            _fail(run.adapter, run, "call_model_input_filter", exc)
        return md

    immunity_input_filter.__immunity_original__ = user_filter  # type: ignore[attr-defined]
    return immunity_input_filter


# ---------------------------------------------------------------------------------------------
# the runner: run start / end, identity, rollback
# ---------------------------------------------------------------------------------------------


def adapter_of(agent: Any) -> OpenAIAgentsAdapter | None:
    hooks = getattr(agent, "hooks", None)
    if isinstance(hooks, GuardHooks) and hooks.adapter.instrumented:
        return hooks.adapter
    return None


def _run_key(input: Any, kwargs: dict[str, Any]) -> str | None:
    session = kwargs.get("session")
    sid = getattr(session, "session_id", None)
    if sid:
        return f"session:{sid}"
    if kwargs.get("conversation_id"):
        return f"conversation:{kwargs['conversation_id']}"
    rc = kwargs.get("run_config")
    group = rc.get("group_id") if isinstance(rc, dict) else getattr(rc, "group_id", None)
    if group:
        return f"group:{group}"
    return None


def run_id_for(key: str) -> str:
    """The deterministic immunity run id of an SDK session / conversation / group id."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", key.split(":", 1)[1])[:40].strip("-")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{FRAMEWORK}-{slug}-{digest}"


def _stored_run_id(rt: Any, key: str) -> str:
    """``run_id_for(key)``, or the older ``oai-...`` id if the store has this conversation under it."""
    run_id = run_id_for(key)
    if rt.store is not None and rt.session(run_id) is None and rt.store.get_run(run_id) is None:
        old = "oai-" + run_id[len(FRAMEWORK) + 1:]
        found = rt.store.get_run(old)
        if found is not None and found.run_id == old:
            return old
    return run_id


def _resume_session(adapter: OpenAIAgentsAdapter, run: Run) -> RunSession | None:
    """Continue a stored, unfinished run in this process: core reloads it (its steps folded back
    into the signals, its checkpoints); ``None`` if the store no longer has it."""
    rt = adapter.runtime
    session = rt.resume_run(run.run_id)
    if session is None:
        return None
    resumed = session.run
    resumed.steps = session.state.n_steps
    session.state.tokens = resumed.tokens
    rt.save("runs", resumed)
    session.emit(Event(kind=EventKind.CUSTOM, data={"resumed": True, "steps_before": resumed.steps}))
    return session


def begin(adapter: OpenAIAgentsAdapter, agent: Any, input: Any, kwargs: dict[str, Any], *, streamed: bool) -> ActiveRun:
    """Start (or continue) the immunity run of one ``Runner`` call."""
    rt = adapter.runtime
    run_id: str | None = None
    if isinstance(input, RunState):
        for item in input.get_interruptions():
            rid = adapter._interrupted.pop(getattr(item.raw_item, "call_id", None) or "", None)
            if rid:
                run_id = rid
    key = _run_key(input, kwargs)
    if run_id is None and key is not None:
        run_id = _stored_run_id(rt, key)
    if run_id is None:  # no session, conversation or group id: the SDK gives the run no id of its own
        run_id = f"{FRAMEWORK}-{new_id('')}"
    existing = adapter._open.get(run_id) if run_id else None
    if existing is not None and not existing.session.ended:
        run = existing
    else:
        session = rt.session(run_id) if run_id else None
        if session is None or session.ended:
            session = None
            stored = rt.store.get_run(run_id) if run_id and rt.store is not None else None
            if stored is not None and stored.status not in _ENDED:
                session = _resume_session(adapter, stored)
            elif stored is not None:
                n = 2
                while rt.store.get_run(f"{run_id}-{n}") is not None:
                    n += 1
                run_id = f"{run_id}-{n}"
        if session is None:
            session = rt.start_run(task=_task_of(input), framework=FRAMEWORK, run_id=run_id, agent=agent.name,
                                   domain=adapter.options["domain"],
                                   metadata={"run_key": key} if key else None)
        run = ActiveRun(adapter, session)
    run.sdk_session = kwargs.get("session")
    run.starting_agent = agent
    run.streamed = streamed
    run.via_runner = True
    run.stop = None
    adapter._open[run.run_id] = run
    if not adapter.run_ids or adapter.run_ids[-1] != run.run_id:
        adapter.run_ids.append(run.run_id)
    return run


def run_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The user's ``Runner`` arguments with immunity's model input filter chained into the run config."""
    out = dict(kwargs)
    rc = kwargs.get("run_config")
    if rc is None:
        out["run_config"] = RunConfig(call_model_input_filter=make_input_filter(None))
    elif isinstance(rc, dict):
        out["run_config"] = {**rc, "call_model_input_filter": make_input_filter(rc.get("call_model_input_filter"))}
    else:
        out["run_config"] = dataclasses.replace(rc, call_model_input_filter=make_input_filter(rc.call_model_input_filter))
    return out


def _output_text(output: Any) -> str | None:
    if output is None or isinstance(output, str):
        return output
    if hasattr(output, "model_dump_json"):
        return output.model_dump_json()
    return str(output)


async def after_result(run: ActiveRun, result: Any) -> tuple[Any, Any] | None:
    """After an SDK run returned: keep it open on an approval interruption, roll back to the last
    verified checkpoint (returns ``(agent, input)`` to run again), or end it."""
    adapter, session = run.adapter, run.session
    interruptions = list(getattr(result, "interruptions", None) or [])
    if interruptions:
        for item in interruptions:
            call_id = getattr(getattr(item, "raw_item", None), "call_id", None)
            if call_id:
                adapter._interrupted[call_id] = run.run_id
        session.run.status = "interrupted"
        session.runtime.save("runs", session.run)
        adapter._paused[run.run_id] = (run.starting_agent, result)  # for guard.resume(run_id)
        return None
    if run.rollback is not None:
        target = await _rollback(run)
        if target is not None:
            return target
    finish(run, output=_output_text(getattr(result, "final_output", None)))
    return None


async def _rollback(run: ActiveRun) -> tuple[Any, Any] | None:
    rec, run.rollback = run.rollback, None
    session = run.session
    limit = int(run.adapter.options["max_rollbacks"])
    if run.streamed or run.rollbacks >= limit:
        why = "streamed run" if run.streamed else f"more than {limit} rollbacks"
        session.emit(Event(kind=EventKind.CUSTOM, data={"rollback_skipped": why}))
        return None
    failed_step = session.state.n_steps - 1
    cp: Checkpoint | None = session.last_verified_checkpoint(before_step=failed_step)
    while cp is not None and cp.checkpoint_id not in run.inputs:
        earlier = [c for c in session.checkpoints if c.verified and c.step < cp.step]
        cp = earlier[-1] if earlier else None
    if cp is None:
        session.emit(Event(kind=EventKind.CUSTOM, data={"rollback_skipped": "no verified checkpoint in this process"}))
        return None
    agent, items, n_session = run.inputs[cp.checkpoint_id]
    # core undoes what it can (compensating actions) and, from now on, answers a side-effecting call
    # repeated with the same arguments from its first result instead of running it again
    compensated = session.rollback(cp)
    removed = 0
    if run.sdk_session is not None and n_session is not None:
        while len(await run.sdk_session.get_items()) > n_session:
            await run.sdk_session.pop_item()
            removed += 1
        new_input: Any = []
    else:
        new_input = list(items)
    run.rollbacks += 1
    if rec is not None and rec.hint:
        session.discard_hint(rec.hint)  # queued once, however it was queued before
        session.add_hint(rec.hint, source="rollback")
    session.emit(Event(kind=EventKind.CUSTOM, agent=agent.name,
                       data={"rollback_to": cp.checkpoint_id, "checkpoint_step": cp.step,
                             "session_items_removed": removed, "compensated": compensated,
                             "reason": getattr(rec, "reason", "")}))
    return agent, new_input


def finish(run: ActiveRun, *, output: str | None = None, error: BaseException | None = None) -> None:
    adapter = run.adapter
    adapter._open.pop(run.run_id, None)
    if run.session.ended:
        return
    if error is not None:
        if isinstance(error, RunStopped):
            end_run(run.session, "failure", reason=f"stopped by immunity: {error.reason}", output=error.reason)
        else:
            end_run(run.session, "failure", reason=_failure_reason(error), output=output,
                    error=f"{type(error).__name__}: {error}")
    elif run.stop is not None:
        end_run(run.session, "failure", reason=f"stopped by immunity: {run.stop}", output=run.stop)
    else:  # completed: whether it succeeded is the user's call (set_outcome)
        end_run(run.session, None, output=output)


def _failure_reason(error: BaseException) -> str:
    """Why an SDK run failed, as the SDK reported it."""
    name = type(error).__name__
    if name == "MaxTurnsExceeded":
        return f"max turns reached (max_turns): {error}"
    if "TripwireTriggered" in name:
        result = getattr(error, "guardrail_result", None)
        guardrail = getattr(getattr(result, "guardrail", None), "name", None) or \
            getattr(getattr(result, "guardrail", None), "get_name", lambda: None)()
        return f"guardrail tripped ({name}{': ' + str(guardrail) if guardrail else ''})"
    return f"raised {name}: {error}"


def _sync_await(coro: Any) -> Any:
    """Run a coroutine from ``run_sync`` on the thread's default loop (the one the SDK uses)."""
    policy = asyncio.get_event_loop_policy()
    try:
        loop = policy.get_event_loop()
    except RuntimeError:
        loop = policy.new_event_loop()
        policy.set_event_loop(loop)
    if loop.is_closed():
        loop = policy.new_event_loop()
        policy.set_event_loop(loop)
    return loop.run_until_complete(coro)


class GuardRunner(AgentRunner):
    """The default agent runner while an agent is instrumented. Runs of instrumented agents go
    through immunity (start, identity, input filter, end, rollback); every other run is passed
    untouched to the runner that was the default before."""

    def __init__(self, previous: AgentRunner):
        self.previous = previous

    def _begin(self, agent: Any, input: Any, kwargs: dict[str, Any], streamed: bool) -> ActiveRun | None:
        adapter = adapter_of(agent)
        if adapter is None or _CURRENT.get() is not None:  # not ours, or a nested run (agent as tool)
            return None
        try:
            return begin(adapter, agent, input, kwargs, streamed=streamed)
        except Exception as exc:
            _fail(adapter, None, "run_start", exc)
            return None

    async def run(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        run = self._begin(starting_agent, input, kwargs, False)
        if run is None:
            return await self.previous.run(starting_agent, input, **kwargs)
        token = _CURRENT.set(run)
        try:
            agent, inp = starting_agent, input
            while True:
                try:
                    result = await self.previous.run(agent, inp, **run_kwargs(kwargs))
                except BaseException as exc:
                    finish(run, error=_unwrap(exc))
                    raise
                nxt = await after_result(run, result)
                if nxt is None:
                    return result
                agent, inp = nxt
        finally:
            _CURRENT.reset(token)

    def run_sync(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        run = self._begin(starting_agent, input, kwargs, False)
        if run is None:
            return self.previous.run_sync(starting_agent, input, **kwargs)
        token = _CURRENT.set(run)
        try:
            agent, inp = starting_agent, input
            while True:
                try:
                    result = self.previous.run_sync(agent, inp, **run_kwargs(kwargs))
                except BaseException as exc:
                    finish(run, error=_unwrap(exc))
                    raise
                nxt = _sync_await(after_result(run, result))
                if nxt is None:
                    return result
                agent, inp = nxt
        finally:
            _CURRENT.reset(token)

    def run_streamed(self, starting_agent: Any, input: Any, **kwargs: Any) -> Any:
        run = self._begin(starting_agent, input, kwargs, True)
        if run is None:
            return self.previous.run_streamed(starting_agent, input, **kwargs)
        token = _CURRENT.set(run)
        try:
            result = self.previous.run_streamed(starting_agent, input, **run_kwargs(kwargs))
        except BaseException as exc:
            finish(run, error=exc)
            raise
        finally:
            _CURRENT.reset(token)
        task = getattr(result, "run_loop_task", None)

        def done(t: asyncio.Task[Any]) -> None:
            try:
                exc = None if t.cancelled() else t.exception()
                stored = getattr(result, "_stored_exception", None)
                if exc is None and stored is not None:
                    exc = stored
                if exc is not None:
                    finish(run, error=_unwrap(exc))
                elif getattr(result, "interruptions", None):
                    asyncio.ensure_future(after_result(run, result))
                else:
                    if run.rollback is not None:
                        run.session.emit(Event(kind=EventKind.CUSTOM, data={"rollback_skipped": "streamed run"}))
                        run.rollback = None
                    finish(run, output=_output_text(getattr(result, "final_output", None)))
            except Exception as inner:
                try:
                    _fail(run.adapter, run, "run_end", inner)
                except Exception:
                    log.exception("immunity could not end streamed run %s", run.run_id)

        if task is not None:
            task.add_done_callback(done)
        return result


def _unwrap(exc: BaseException) -> BaseException:
    """A stop raised inside the SDK may come back wrapped; find it."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, RunStopped):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return exc


def install_runner() -> tuple[Any, Any]:
    """Make a :class:`GuardRunner` the default runner; returns ``(previous, installed)``."""
    previous = get_default_agent_runner()
    if isinstance(previous, GuardRunner):
        return previous, previous
    runner = GuardRunner(previous)
    set_default_agent_runner(runner)
    return previous, runner


def uninstall_runner(previous: Any, installed: Any) -> None:
    """Put the previous default runner back, unless someone else replaced ours since."""
    if previous is installed:
        return
    if get_default_agent_runner() is installed:
        set_default_agent_runner(previous)


def walk_agents(root: Any) -> list[Any]:
    """The agent and every agent reachable through its handoffs."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        agent = stack.pop()
        if not isinstance(agent, Agent) or id(agent) in seen:
            continue
        seen[id(agent)] = agent
        for h in getattr(agent, "handoffs", None) or []:
            if isinstance(h, Agent):
                stack.append(h)
            else:
                ref = getattr(h, "_agent_ref", None)
                target = ref() if callable(ref) else None
                if target is not None:
                    stack.append(target)
    return list(seen.values())


def is_function_tool(tool: Any) -> bool:
    return isinstance(tool, FunctionTool)
