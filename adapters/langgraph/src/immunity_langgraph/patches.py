"""Class-level wrappers on langchain-core, installed while at least one graph is protected.

=============================================  ======================================================
attribute                                      why
=============================================  ======================================================
``Pregel.stream`` / ``Pregel.astream``         ``invoke`` / ``ainvoke`` / ``stream_events`` run through
(public)                                       them: a protected graph's invocation becomes an
                                               immunity run (other graphs pass straight through)
``BaseChatModel._convert_input`` (private)     every chat-model entry point (invoke, ainvoke, stream,
                                               astream, stream_events) converts its input here:
                                               ``model_start`` and next-call hint injection, seen by
                                               callbacks and by the model, never written to state
``BaseChatModel._generate_with_cache`` and     once a run is stopped, the model call is answered
``_agenerate_with_cache`` (private)            with the final answer so the graph's router ends the
                                               run; a failed model call is retried when immunity
                                               decides so
``BaseTool.run`` / ``BaseTool.arun`` (public)  every tool call of a ToolNode, ``create_react_agent``
                                               or a hand-written node: verify the arguments before
                                               it runs (block, rewrite, ask a human, replay a cached
                                               side effect), report the result or the error after
=============================================  ======================================================

Each wrapper first looks for a live :class:`~immunity_langgraph.events.RunContext` in the call's own
callback manager (the one LangGraph hands to that model or tool); with none it calls the original
at once. The wrappers are installed on the first protected graph and removed when the last one is
released, restoring the exact original objects. ``_convert_input`` and the ``_generate`` pair are
private API: the tests check them on every supported version.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import weakref
from typing import Any

from immunity_langgraph.events import PLUGIN, RunContext, find_context

_lock = threading.Lock()
_count = 0
_saved: list[tuple[type, str, Any]] = []


#: the protected graphs: ``id(graph) -> (weak reference to the graph, adapter)``
GRAPHS: dict[int, tuple[weakref.ref[Any], Any]] = {}


def protect_graph(graph: Any, adapter: Any) -> None:
    GRAPHS[id(graph)] = (weakref.ref(graph), adapter)


def release_graph(graph: Any, adapter: Any) -> None:
    entry = GRAPHS.get(id(graph))
    if entry is not None and entry[1] is adapter:
        del GRAPHS[id(graph)]


def adapter_for(graph: Any) -> Any:
    entry = GRAPHS.get(id(graph))
    if entry is None or entry[0]() is not graph:
        return None
    return entry[1]


def patched_attributes() -> list[tuple[type, str]]:
    """The (class, attribute) pairs the adapter replaces while it is attached."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.tools import BaseTool
    from langgraph.pregel import Pregel

    return [(Pregel, "stream"), (Pregel, "astream"), (BaseChatModel, "_convert_input"),
            (BaseChatModel, "_generate_with_cache"), (BaseChatModel, "_agenerate_with_cache"), (BaseTool, "run"),
            (BaseTool, "arun")]


def acquire() -> None:
    global _count
    with _lock:
        if _count == 0:
            _install()
        _count += 1


def release() -> None:
    global _count
    with _lock:
        if _count == 0:
            return
        _count -= 1
        if _count == 0:
            for cls, name, original in reversed(_saved):
                setattr(cls, name, original)
            _saved.clear()


def installed() -> bool:
    return _count > 0


def _install() -> None:
    factories = {"stream": _wrap_graph_stream, "astream": _wrap_graph_astream, "_convert_input": _wrap_convert_input, "_generate_with_cache": _wrap_generate,
                 "_agenerate_with_cache": _wrap_agenerate, "run": _wrap_run, "arun": _wrap_arun}
    for cls, name in patched_attributes():
        original = cls.__dict__[name]
        wrapper = factories[name](original)
        functools.update_wrapper(wrapper, original)
        wrapper.__immunity_original__ = original  # type: ignore[attr-defined]
        setattr(cls, name, wrapper)
        _saved.append((cls, name, original))


def _config_context() -> RunContext | None:
    from langchain_core.runnables.config import var_child_runnable_config

    config = var_child_runnable_config.get()
    return find_context(config.get("callbacks")) if config else None


# ---------------------------------------------------------------------------------------------- graphs
def _wrap_graph_stream(original: Any) -> Any:
    def stream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        adapter = adapter_for(self) if GRAPHS else None
        if adapter is None:
            return original(self, input, config, **kwargs)
        return adapter.stream_run(self, original, input, config, kwargs)

    return stream


def _wrap_graph_astream(original: Any) -> Any:
    def astream(self: Any, input: Any, config: Any = None, **kwargs: Any) -> Any:
        adapter = adapter_for(self) if GRAPHS else None
        if adapter is None:
            return original(self, input, config, **kwargs)
        return adapter.astream_run(self, original, input, config, kwargs)

    return astream


# ---------------------------------------------------------------------------------------------- models
def _wrap_convert_input(original: Any) -> Any:
    def _convert_input(self: Any, model_input: Any) -> Any:
        prompt = original(self, model_input)
        ctx = _config_context()
        if ctx is None:
            return prompt
        try:
            return ctx.model_input(self, prompt)
        except Exception as exc:
            ctx.fail("model_start", exc)
            return prompt

    return _convert_input


FALLBACK = -1.0  # _retry_plan's answer: "call the fallback model instead"


def _retry_plan(ctx: RunContext, exc: BaseException, attempt: int, model: Any = None) -> float | None:
    """Delay before retrying a failed model call, :data:`FALLBACK` to call the adapter's fallback
    model instead, or ``None`` to give up."""
    from immunity.models import RecoveryKind

    from immunity_langgraph.adapter import model_name

    try:
        d = ctx.model_failed(exc, model_name(model) if model is not None else None)
    except Exception as inner:
        ctx.fail("model_end", inner)
        return None
    rec = d.recovery
    if rec is not None and rec.kind == RecoveryKind.FALLBACK and not d.stop:
        fallback = getattr(ctx.adapter, "fallback_model", None)
        return FALLBACK if fallback is not None and fallback is not model else None
    if rec is None or rec.kind != RecoveryKind.RETRY or attempt + 1 >= rec.max_attempts or d.stop:
        return None
    return min(max(rec.delay_s, 0.0), 30.0)


def _with_hints(ctx: RunContext, messages: list[Any]) -> list[Any]:
    from immunity_langgraph.events import hint_messages

    hints = ctx.session.take_hints()
    return [*messages, *hint_messages(hints)] if hints else messages


def _wrap_generate(original: Any) -> Any:
    from langgraph.errors import GraphBubbleUp

    def _generate_with_cache(self: Any, messages: list[Any], stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> Any:
        ctx = find_context(run_manager)
        if ctx is None:
            return original(self, messages, stop, run_manager, **kwargs)
        if ctx.session.stop_requested:
            return ctx.stopped_reply()
        attempt = 0
        while True:
            try:
                return original(self, messages, stop, run_manager, **kwargs)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                delay = _retry_plan(ctx, exc, attempt, self)
                if ctx.session.stop_requested:
                    return ctx.stopped_reply()
                if delay is None:
                    raise
                if delay == FALLBACK:  # the same messages and bound tools, another model
                    return ctx.adapter.fallback_model._generate_with_cache(messages, stop, run_manager, **kwargs)
                attempt += 1
                time.sleep(delay)
                messages = _with_hints(ctx, messages)

    return _generate_with_cache


def _wrap_agenerate(original: Any) -> Any:
    from langgraph.errors import GraphBubbleUp

    async def _agenerate_with_cache(self: Any, messages: list[Any], stop: Any = None, run_manager: Any = None,
                                    **kwargs: Any) -> Any:
        ctx = find_context(run_manager)
        if ctx is None:
            return await original(self, messages, stop, run_manager, **kwargs)
        if ctx.session.stop_requested:
            return ctx.stopped_reply()
        attempt = 0
        while True:
            try:
                return await original(self, messages, stop, run_manager, **kwargs)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                delay = _retry_plan(ctx, exc, attempt, self)
                if ctx.session.stop_requested:
                    return ctx.stopped_reply()
                if delay is None:
                    raise
                if delay == FALLBACK:
                    return await ctx.adapter.fallback_model._agenerate_with_cache(messages, stop, run_manager,
                                                                                   **kwargs)
                attempt += 1
                await asyncio.sleep(delay)
                messages = _with_hints(ctx, messages)

    return _agenerate_with_cache


# ---------------------------------------------------------------------------------------------- tools
def _tool_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> RunContext | None:
    callbacks = kwargs.get("callbacks")
    if callbacks is None and len(args) >= 4:
        callbacks = args[3]
    return find_context(callbacks) or _config_context()


def _wrap_run(original: Any) -> Any:
    from langgraph.errors import GraphBubbleUp

    def run(self: Any, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = _tool_context(args, kwargs)
        if ctx is None:
            return original(self, tool_input, *args, **kwargs)
        call_id, config = kwargs.get("tool_call_id"), kwargs.get("config")
        attempt = 0
        while True:
            try:
                action, payload = ctx.tool_before(self, tool_input, call_id, config)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                ctx.fail("tool_start", exc)
                action, payload = "run", tool_input
            if action == "reply":
                return payload
            tool_input = payload
            try:
                out = original(self, tool_input, *args, **kwargs)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                action, payload = ctx.tool_failed(self, tool_input, call_id, exc, attempt)
                if action == "retry":
                    attempt += 1
                    time.sleep(payload)
                    continue
                if action == "raise":
                    raise
                return payload
            return ctx.tool_after(self, tool_input, call_id, out)

    return run


def _wrap_arun(original: Any) -> Any:
    from langgraph.errors import GraphBubbleUp

    async def arun(self: Any, tool_input: Any, *args: Any, **kwargs: Any) -> Any:
        ctx = _tool_context(args, kwargs)
        if ctx is None:
            return await original(self, tool_input, *args, **kwargs)
        call_id, config = kwargs.get("tool_call_id"), kwargs.get("config")
        attempt = 0
        while True:
            try:
                action, payload = ctx.tool_before(self, tool_input, call_id, config)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                ctx.fail("tool_start", exc)
                action, payload = "run", tool_input
            if action == "reply":
                return payload
            tool_input = payload
            try:
                out = await original(self, tool_input, *args, **kwargs)
            except GraphBubbleUp:
                raise
            except Exception as exc:
                action, payload = ctx.tool_failed(self, tool_input, call_id, exc, attempt)
                if action == "retry":
                    attempt += 1
                    await asyncio.sleep(payload)
                    continue
                if action == "raise":
                    raise
                return payload
            return ctx.tool_after(self, tool_input, call_id, out)

    return arun


__all__ = ["GRAPHS", "PLUGIN", "acquire", "adapter_for", "installed", "patched_attributes", "protect_graph",
           "release", "release_graph"]
