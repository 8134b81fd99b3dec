"""The LangGraph adapter: attach immunity to a compiled graph you already have.

::

    import immunity

    graph = builder.compile(checkpointer=InMemorySaver())   # or create_react_agent(...), create_agent(...)
    guard = immunity.protect(graph, domain="coding", store="immunity.db")
    graph.invoke({"messages": [("user", "fix the tests")]}, {"configurable": {"thread_id": "t1"}})  # unchanged
    guard.uninstrument()                                    # detach; everything is as it was

What :meth:`LangGraphAdapter.instrument` changes, all restored exactly by :meth:`uninstrument`:
while at least one graph is protected, class-level wrappers on ``Pregel.stream`` / ``astream`` and
on langchain-core's chat model and tool classes (see :mod:`immunity_langgraph.patches`); the graph
object itself is not modified (so ``graph.copy()`` / ``with_config()`` keep working). For an
invocation of a protected graph (``invoke`` / ``ainvoke`` / ``stream_events`` run through
``stream`` / ``astream``) :meth:`LangGraphAdapter.stream_run` adds immunity's callback handler to
the config, passes a :class:`~langgraph.runtime.RunControl` (wrapping the caller's own) so immunity
can drain the run at a step boundary, ends the immunity run when the graph finishes, and carries
out a rollback (``get_state_history`` -> ``update_state(as_node=...)`` -> resume with ``None``)
inside the same call.

Importing this module does not import LangGraph or langchain-core; :meth:`instrument` does.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

from immunity.adapter import Adapter
from immunity.errors import ImmunityError, PluginError
from immunity.outcomes import end_run

if TYPE_CHECKING:  # pragma: no cover
    from langchain_core.runnables import RunnableConfig

log = logging.getLogger("immunity.langgraph")



def _task_text(value: Any) -> str | None:
    """The user's request in a graph input, if it has one."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    messages = value.get("messages")
    if isinstance(messages, str):
        return messages
    for m in messages or []:
        if isinstance(m, tuple) and len(m) == 2 and m[0] in ("user", "human"):
            return str(m[1])
        if isinstance(m, dict) and m.get("role") in ("user", "human"):
            return str(m.get("content"))
        if getattr(m, "type", None) == "human":
            from immunity_langgraph.events import text_of

            return text_of(m.content)
    for key in ("task", "input", "question", "query"):
        if isinstance(value.get(key), str):
            return value[key]
    return None


def _final_text(values: Any) -> str | None:
    """The graph's answer: the last AI message without tool calls in the final state."""
    if not isinstance(values, dict):
        return None
    messages = values.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if getattr(last, "type", None) == "ai" and not getattr(last, "tool_calls", None):
        from immunity_langgraph.events import text_of

        return text_of(last.content) or None
    return None


def _exact(run: Any, run_id: str) -> Any:
    """``run`` if it is the run ``run_id`` itself (the store also answers a unique id prefix)."""
    return run if run is not None and run.run_id == run_id else None


def _failure_reason(error: BaseException) -> str:
    """Why a graph run failed, as LangGraph reported it."""
    if type(error).__name__ == "GraphRecursionError":
        return f"recursion limit reached (LangGraph's max iterations): {error}"
    return f"raised {type(error).__name__}: {error}"


def model_name(model: Any) -> str:
    """A chat model's name as the runtime records it."""
    return str(getattr(model, "model_name", None) or getattr(model, "model", None) or type(model).__name__)


class LangGraphAdapter(Adapter):
    """Observe, verify, intervene and recover on LangGraph graphs (``StateGraph`` with a ``ToolNode``,
    ``create_react_agent``, ``langchain.agents.create_agent``) through their own runtime.

    Options (``immunity.protect(graph, **options)`` or ``runtime.protect(graph, **options)``); the
    common ones (``domain``, ``max_rollbacks`` (2), ``node_events`` (``"none"``)) mean the same in
    every adapter (see :data:`immunity.adapter.COMMON_OPTIONS`):

    - ``node_events``: ``"end"`` records one ``node_end`` event per node run (with its start time,
      duration and error), ``"all"`` also ``node_start``; ``"none"`` (default) none. The old values
      True / ``"both"`` / False still work with a DeprecationWarning;
    - ``max_rollbacks``: rollbacks allowed per invocation;
    - ``handle_tool_errors`` (True): when a tool raises and immunity has a recovery for it, the
      model receives the error as the tool's result (a ``ToolMessage`` with ``status="error"``)
      instead of the exception crashing the graph; False keeps the graph's own behaviour;
    - ``fallback_model`` (None): a chat model to switch to when a FALLBACK recovery says so.
    """

    name = "langgraph"
    framework = "langgraph"
    supported = ">=1.2,<2"
    extra_options: ClassVar[dict[str, Any] | None] = {"handle_tool_errors": True, "fallback_model": None}

    def __init__(self, runtime: Any, **options: Any):
        super().__init__(runtime, **options)
        self.targets: list[Any] = []
        self.handle_tool_errors = bool(self.options["handle_tool_errors"])
        modes: dict[str, str | bool] = {"none": False, "end": "end", "all": "both"}
        self.node_events: str | bool = modes[self.options["node_events"]]
        self._patched = False
        self._latest: dict[str, str] = {}
        #: a chat model to use when the graph's own model keeps failing (``protect(graph,
        #: fallback_model=ChatX(...))``); the recovery policy decides when (a FALLBACK recovery)
        self.fallback_model = self.options["fallback_model"]
        if self.fallback_model is not None:
            runtime.config.options.setdefault("fallback_model", model_name(self.fallback_model))

    # ------------------------------------------------------------------ attach / detach
    def instrument(self, target: Any = None) -> None:
        """Protect ``target`` (a compiled graph). Calling it again for the same graph does nothing;
        calling it for another graph protects that one too."""
        if target is None:
            raise ImmunityError("the LangGraph adapter needs the compiled graph: immunity.protect(graph)")
        if not (hasattr(target, "stream") and hasattr(target, "astream") and hasattr(target, "get_state")):
            raise ImmunityError(f"{type(target).__name__} is not a compiled LangGraph graph (call .compile() first)")
        if any(t is target for t in self.targets):
            return
        from immunity_langgraph import patches

        if not self._patched:
            patches.acquire()
            self._patched = True
        patches.protect_graph(target, self)
        self.targets.append(target)
        self.instrumented = True

    def uninstrument(self) -> None:
        """Detach from every protected graph and, with the last adapter, from langchain-core."""
        if self._patched:
            from immunity_langgraph import patches

            for target in self.targets:
                patches.release_graph(target, self)
            patches.release()
            self._patched = False
        self.targets.clear()
        self.instrumented = False

    # ------------------------------------------------------------------ resume
    def _resume_call(self, run_id: str | None, value: Any, graph: Any, config: Any) -> tuple[Any, Any, Any]:
        """The graph, input and config that continue ``run_id``'s thread with LangGraph's own
        resume: ``invoke(None, cfg)``, or ``invoke(Command(resume=value), cfg)`` after an interrupt."""
        rid = run_id or self.run_id
        if rid is None:
            raise ImmunityError("this guard has not seen a run yet: pass run_id=")
        live = self.runtime.session(rid)
        run = live.run if live is not None else (self.runtime.store.get_run(rid) if self.runtime.store else None)
        if run is None:
            raise ImmunityError(f"no run {rid!r} in this runtime or its store")
        thread_id = run.metadata.get("thread_id")
        if thread_id is None:
            raise ImmunityError(f"run {rid} has no LangGraph thread: only a graph with a checkpointer, invoked with "
                                "a thread_id, can be resumed")
        if graph is None:
            named = [g for g in self.targets if getattr(g, "name", None) == run.metadata.get("graph")]
            candidates = named or list(self.targets)
            if len(candidates) != 1:
                raise ImmunityError(f"this guard protects {len(self.targets)} graphs; pass graph= to resume {rid}")
            graph = candidates[0]
        from langgraph.types import Command

        cfg = dict(config or {})
        cfg["configurable"] = {**(cfg.get("configurable") or {}), "thread_id": thread_id}
        return graph, (None if value is None else Command(resume=value)), cfg

    def resume(self, run_id: str | None = None, value: Any = None, *, graph: Any = None,  # type: ignore[override]
               config: dict[str, Any] | None = None) -> Any:
        """Continue a paused run (an interrupt, a breakpoint, a drain) of ``run_id`` (default: the
        latest) on its thread: ``value`` answers an ``interrupt()`` (``Command(resume=value)``).
        Returns what ``graph.invoke`` returns; the immunity run goes on under the same id."""
        graph, inp, cfg = self._resume_call(run_id, value, graph, config)
        return graph.invoke(inp, cfg)

    async def aresume(self, run_id: str | None = None, value: Any = None, *, graph: Any = None,  # type: ignore[override]
                      config: dict[str, Any] | None = None) -> Any:
        """:meth:`resume` with ``graph.ainvoke``."""
        graph, inp, cfg = self._resume_call(run_id, value, graph, config)
        return await graph.ainvoke(inp, cfg)

    # ------------------------------------------------------------------ one invocation
    def _begin(self, graph: Any, input: Any, config: Any, kwargs: dict[str, Any]) -> Any:
        """A run context for this invocation, or ``None`` to let it run unobserved (not attached,
        already inside a protected run, or immunity itself failed: fail open)."""
        if not self.instrumented:
            return None
        try:
            from langchain_core.runnables.config import var_child_runnable_config

            from immunity_langgraph.events import RunContext, find_context

            if find_context((config or {}).get("callbacks")) is not None:
                return None
            outer = var_child_runnable_config.get()
            if outer and find_context(outer.get("callbacks")) is not None:
                return None  # a protected graph called inside a protected run: the outer run sees it
            configurable = (config or {}).get("configurable") or {}
            thread_id = configurable.get("thread_id")
            thread_id = None if thread_id is None else str(thread_id)
            checkpointer = getattr(graph, "checkpointer", None)
            checkpoints = thread_id is not None and checkpointer not in (None, False)
            session = self._session_for(graph, input, thread_id)
            self.saw_run(session.run.run_id)
            ctx = RunContext(self, session, graph, thread_id=thread_id, checkpoints=checkpoints)
            ctx.breakpoints = bool(kwargs.get("interrupt_before") or kwargs.get("interrupt_after")
                                   or getattr(graph, "interrupt_before_nodes", None)
                                   or getattr(graph, "interrupt_after_nodes", None))
            return ctx
        except PluginError:
            raise
        except Exception as exc:
            if self.runtime.config.fail_closed:
                raise
            log.warning("immunity could not start a run for this LangGraph invocation (it runs unobserved): %s: %s",
                        type(exc).__name__, exc)
            return None

    def _session_for(self, graph: Any, input: Any, thread_id: str | None) -> Any:
        """The immunity run of this invocation. With a thread id the run id is deterministic: the
        thread's first run is ``langgraph-<thread_id>``, later ones (new input after a finished run)
        ``langgraph-<thread_id>-<n>`` (a thread stored with the older ``langgraph:<thread_id>`` ids
        keeps them); a resume (``None`` or ``Command(resume=...)``) or new input on a
        paused run continues the same run, in this process or another one that shares the store."""
        rt = self.runtime
        resume = input is None or type(input).__name__ == "Command"
        domain = self.options.get("domain") or rt.config.domain
        meta: dict[str, Any] = {"framework_version": self.framework_version(), "graph": getattr(graph, "name", None)}
        agent = getattr(graph, "name", None)
        if thread_id is None:
            return rt.start_run(task=_task_text(input), framework="langgraph", domain=domain, agent=agent,
                                metadata=meta)
        meta["thread_id"] = thread_id
        base, sep = f"langgraph-{thread_id}", "-"
        if rt.store is not None and self._latest.get(thread_id) is None and rt.session(base) is None \
                and rt.store.get_run(base) is None and _exact(rt.store.get_run(f"langgraph:{thread_id}"),
                                                              f"langgraph:{thread_id}"):
            base, sep = f"langgraph:{thread_id}", ":"  # a thread stored before run ids took one format
        latest = self._latest.get(thread_id)
        stored = None
        if latest is None and rt.store is not None:
            n = 1
            while True:
                rid = base if n == 1 else f"{base}{sep}{n}"
                live = rt.session(rid)
                run = live.run if live is not None else _exact(rt.store.get_run(rid), rid)
                if run is None:
                    break
                if str(run.metadata.get("thread_id", thread_id)) == thread_id:  # not another thread's id
                    latest, stored = rid, run
                n += 1
        if latest is not None:
            live = rt.session(latest)
            if live is not None and not live.ended:
                return live
            if stored is None and rt.store is not None:
                stored = rt.store.get_run(latest)
            status = stored.status if stored is not None else (live.run.status if live is not None else "finished")
            if resume or status in ("running", "paused", "unfinished"):
                task = stored.task if stored is not None else (live.run.task if live is not None else None)
                session = rt.start_run(task=task, framework="langgraph", domain=domain, run_id=latest, agent=agent,
                                       metadata={**meta, "resumed": True})
                return session
            tail = latest[len(base) + 1:] if latest != base else ""
            n = int(tail) + 1 if tail.isdigit() else 2
            run_id = f"{base}{sep}{n}"
            while rt.session(run_id) is not None or (rt.store is not None and _exact(rt.store.get_run(run_id), run_id)):
                n += 1
                run_id = f"{base}{sep}{n}"
        else:
            run_id = base
        self._latest[thread_id] = run_id
        return rt.start_run(task=_task_text(input), framework="langgraph", domain=domain, run_id=run_id, agent=agent,
                            metadata=meta)

    def _prepare(self, ctx: Any, config: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        from langchain_core.runnables.config import merge_configs, var_child_runnable_config

        from immunity_langgraph.events import ImmunityControl

        outer = kwargs.get("control")
        if outer is None:
            parent = var_child_runnable_config.get()
            runtime = ((parent or {}).get("configurable") or {}).get("__pregel_runtime")
            outer = getattr(runtime, "control", None)
        ctx.outer_control = outer
        ctx.control = ImmunityControl(outer)
        return merge_configs(config, {"callbacks": [ctx.observer]}), {**kwargs, "control": ctx.control}

    def _after_drain(self, ctx: Any, config: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        """After immunity drained the run: the config to resume from after a rollback, or ``None``
        when the run is over (stopped)."""
        from langchain_core.runnables.config import merge_configs

        from immunity_langgraph.events import ImmunityControl

        if ctx.rollback is None:
            return None
        try:
            fork = self._rollback(ctx, config)
        except Exception as exc:
            ctx.fail("rollback", exc)
            fork = None
        if fork is None:
            # could not roll back: go on from where the run stopped, the hint still goes to the model
            fork = {**(config or {}), "configurable": {**((config or {}).get("configurable") or {})}}
        ctx.control = ImmunityControl(ctx.outer_control)
        return merge_configs(cast("RunnableConfig", fork), {"callbacks": [ctx.observer]}), \
            {**kwargs, "control": ctx.control}

    def _rollback(self, ctx: Any, config: Any) -> dict[str, Any] | None:
        """Go back to the last verified checkpoint with LangGraph's own state history: find it in
        the thread's lineage, fork from it with ``update_state(as_node=...)`` and return the fork's
        config (the caller resumes with ``None``)."""
        ctx.rollback = None
        ctx.rollbacks += 1
        cp = ctx.session.last_verified_checkpoint()
        if cp is None:
            return None
        graph, target_step = ctx.graph, int(cp.ref["step"])
        configurable = {k: v for k, v in ((config or {}).get("configurable") or {}).items() if k != "checkpoint_id"}
        base = {**(config or {}), "configurable": {**configurable, "thread_id": ctx.thread_id, "checkpoint_ns": ""}}
        base.pop("callbacks", None)
        history = list(graph.get_state_history(base))
        by_id = {s.config["configurable"]["checkpoint_id"]: s for s in history}
        snap = history[0] if history else None
        while snap is not None and int((snap.metadata or {}).get("step", -1)) > target_step:
            parent = snap.parent_config
            snap = by_id.get(parent["configurable"]["checkpoint_id"]) if parent else None
        if snap is None or int((snap.metadata or {}).get("step", -1)) != target_step:
            log.info("checkpoint at step %s not found in thread %s; no rollback", target_step, ctx.thread_id)
            return None
        # immunity's side of the rollback: compensations for undone side effects, replay protection
        ctx.session.rollback(cp)
        as_node = cp.ref.get("as_node")
        fork_config = snap.config
        if as_node:
            fork_config = graph.update_state(snap.config, None, as_node=as_node)
            if tuple(graph.get_state(fork_config).next) != tuple(snap.next):
                fork_config = snap.config  # the router chose differently: replay the checkpoint itself
        for step in [s for s in ctx.step_nodes if s > target_step]:
            ctx.step_nodes.pop(step, None)
        ctx.checkpointed_steps = {s for s in ctx.checkpointed_steps if s <= target_step}
        ctx.open_calls = 0
        ctx.session.run.metadata.setdefault("rollbacks", []).append(
            {"to_checkpoint": snap.config["configurable"]["checkpoint_id"], "step": target_step,
             "fork": fork_config["configurable"].get("checkpoint_id")})
        return {**base, "configurable": {**base["configurable"], **fork_config["configurable"]}}

    def _paused(self, ctx: Any) -> bool:
        if not ctx.checkpoints or not (ctx.interrupted or ctx.breakpoints):
            return False
        state = ctx.graph.get_state({"configurable": {"thread_id": ctx.thread_id}})
        return bool(state.next)

    def _finish(self, ctx: Any, error: BaseException | None = None) -> None:
        if not ctx.active:
            return
        ctx.active = False
        try:
            session = ctx.session
            if error is None and self._paused(ctx):
                session.pause("interrupt" if ctx.interrupted else "breakpoint")
                return
            if session.stop_requested:
                end_run(session, "failure", reason=f"stopped by immunity: {session.stop_requested}",
                        output=ctx.stop_text)
                return
            final = _final_text(ctx.final_values) if error is None else None
            if final:
                session.final_answer(final)
            if error is None:  # completed: whether it succeeded is the user's call (set_outcome)
                end_run(session, None, output=final)
            else:
                end_run(session, "failure", reason=_failure_reason(error), output=final,
                        error=f"{type(error).__name__}: {error}")
        except PluginError:
            raise
        except Exception as exc:
            ctx.session.record_error("immunity_langgraph", "run_end", exc)

    # ------------------------------------------------------------------ one invocation, driven
    def stream_run(self, graph: Any, original: Any, input: Any, config: Any, kwargs: dict[str, Any]) -> Iterator[Any]:
        """``graph.stream(...)`` of a protected graph (``invoke`` runs through it too)."""
        ctx = self._begin(graph, input, config, kwargs)
        if ctx is None:
            yield from original(graph, input, config, **kwargs)
            return
        from langgraph.errors import GraphDrained

        cfg, kw = self._prepare(ctx, config, kwargs)
        try:
            while True:
                try:
                    yield from original(graph, input, cfg, **kw)
                except GraphDrained:
                    if not ctx.control.requested_by_immunity:
                        raise
                    nxt = self._after_drain(ctx, config, kwargs)
                    if nxt is None:
                        break
                    input, (cfg, kw) = None, nxt
                    continue
                break
        except GeneratorExit:
            self._finish(ctx)
            raise
        except BaseException as exc:
            if isinstance(exc, GraphDrained):  # the caller's own drain: the run is paused, not over
                ctx.active = False
            else:
                self._finish(ctx, exc)
            raise
        self._finish(ctx)

    async def astream_run(self, graph: Any, original: Any, input: Any, config: Any,
                          kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        """``graph.astream(...)`` of a protected graph (``ainvoke`` runs through it too)."""
        ctx = self._begin(graph, input, config, kwargs)
        if ctx is None:
            async for chunk in original(graph, input, config, **kwargs):
                yield chunk
            return
        from langgraph.errors import GraphDrained

        cfg, kw = self._prepare(ctx, config, kwargs)
        try:
            while True:
                try:
                    async for chunk in original(graph, input, cfg, **kw):
                        yield chunk
                except GraphDrained:
                    if not ctx.control.requested_by_immunity:
                        raise
                    nxt = self._after_drain(ctx, config, kwargs)
                    if nxt is None:
                        break
                    input, (cfg, kw) = None, nxt
                    continue
                break
        except GeneratorExit:
            self._finish(ctx)
            raise
        except BaseException as exc:
            if isinstance(exc, GraphDrained):
                ctx.active = False
            else:
                self._finish(ctx, exc)
            raise
        self._finish(ctx)

    # ------------------------------------------------------------------ demo
    @classmethod
    def demo(cls, runtime: Any) -> str:
        """Run the offline demo (``immunity demo --framework langgraph``); returns the run id."""
        from immunity_langgraph.demo import run_demo

        return run_demo(runtime)
