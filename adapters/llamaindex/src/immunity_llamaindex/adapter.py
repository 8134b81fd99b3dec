"""The LlamaIndex adapter class. Importing this module does not import LlamaIndex: the framework is
imported by :meth:`LlamaIndexAdapter.instrument` (through :mod:`immunity_llamaindex.translate`)."""

from __future__ import annotations

from typing import Any, ClassVar

from immunity.adapter import Adapter


class LlamaIndexAdapter(Adapter):
    """Attaches immunity to a LlamaIndex agent (``FunctionAgent``, ``ReActAgent``,
    ``CodeActAgent``) or a multi-agent ``AgentWorkflow``::

        guard = immunity.protect(agent, domain="support")    # or Runtime(...).protect(agent)
        result = await agent.run(user_msg="...")              # unchanged

    Options (``immunity.protect(agent, **options)`` or ``Runtime.protect(agent, **options)``); the
    common ones mean the same in every adapter (:data:`immunity.adapter.COMMON_OPTIONS`):

    - ``domain``: the domain of the runs (defaults to the runtime's).
    - ``max_rollbacks`` (default 2): rollbacks allowed in one run.
    - ``node_events``: which workflow steps are stored as node events: ``"none"`` (default; model
      and tool events already mark each turn), ``"end"`` (a ``node_end`` per step), ``"all"``
      (start and end of every step) or ``"turns"`` (start and end of ``run_agent_step`` and
      ``call_tool`` only).
    - ``checkpoints``: what to record as an immunity checkpoint before each model turn.
      ``"state"`` (default): the context's state store (memory, scratchpad, counters), enough to
      roll back inside a run (encoded on the turn, re-encoding only what changed since the
      previous turn: about 0.17 ms a turn in a 6-turn chat; with ``store=None`` a copy instead,
      about 0.12 ms). ``"full"``: the whole workflow context
      (``handler.ctx.to_dict()``: queues, in-flight step and state; 1-2 ms a turn, growing with the
      run), which :meth:`restore` turns back into a ``Context`` to resume with ``agent.run(ctx=...)``,
      in this process or another. ``False``: none.
    - ``ask_human_timeout`` (seconds, default 600): how long a call waits for a human's answer.
    - ``fallback_model``: a LlamaIndex LLM to call instead when a FALLBACK recovery says so (a model
      error is retried with the recovery policy's backoff first).

    The immunity run id of a LlamaIndex run is ``"llamaindex-" + <the workflow run id>``; pass
    ``run_id=`` to ``agent.run`` to choose it, and the same ``run_id`` again (or
    :meth:`restore`) continues the same immunity run.
    """

    name = "llamaindex"
    framework = "llama-index-core"
    supported = ">=0.14,<0.15"
    extra_options: ClassVar[dict[str, Any] | None] = {"checkpoints": "state", "ask_human_timeout": 600.0,
                                                       "fallback_model": None}
    extra_node_events: ClassVar[tuple[str, ...]] = ("turns",)

    def __init__(self, runtime: Any, **options: Any):
        super().__init__(runtime, **options)
        self._bridge: Any = None
        fallback = self.options["fallback_model"]
        if fallback is not None:  # the recovery policy offers FALLBACK once a fallback is configured
            name = getattr(getattr(fallback, "metadata", None), "model_name", None) or type(fallback).__name__
            runtime.config.options.setdefault("fallback_model", str(name))

    @classmethod
    def matches(cls, obj: Any) -> bool:
        """A LlamaIndex workflow or agent, or a user subclass of one (by module name only)."""
        return any((c.__module__ or "").split(".")[0] == "llama_index" for c in type(obj).__mro__)

    # ------------------------------------------------------------------ attach / detach
    @property
    def bridge(self) -> Any:
        if self._bridge is None:
            from immunity_llamaindex.translate import Bridge

            self._bridge = Bridge(self)
        return self._bridge

    def instrument(self, target: Any = None) -> None:
        """Protect ``target`` (idempotent: protecting the same object twice changes nothing).
        Adds one span handler and one event handler to LlamaIndex's root instrumentation
        dispatcher, and wraps ``run`` / ``get_tools`` / ``take_step`` on the target object only."""
        if target is None:
            raise TypeError("LlamaIndexAdapter.instrument() needs the agent or AgentWorkflow to protect")
        bridge = self.bridge
        bridge.protect(target)
        bridge.attach_dispatcher()
        self.instrumented = True

    def uninstrument(self) -> None:
        """Detach: removes exactly the two handlers it added and restores every wrapped attribute."""
        if self._bridge is None:
            return
        self._bridge.detach_dispatcher()
        self._bridge.unpatch()
        self.instrumented = False

    # ------------------------------------------------------------------ runs
    def run_id_for(self, handler_or_run_id: Any) -> str:
        """The immunity run id of a LlamaIndex run (a ``WorkflowHandler`` or its ``run_id``)."""
        rid = getattr(handler_or_run_id, "run_id", handler_or_run_id)
        return self.bridge.run_id_for(str(rid))

    def restore(self, target: Any, run_id: str, *, checkpoint_id: str | None = None, hint: str | None = None) -> Any:
        """A LlamaIndex ``Context`` rebuilt (``Context.from_dict``) from the run's last verified
        checkpoint (or ``checkpoint_id``), from this process's memory or from the store, so in a new
        process too. Run it with ``target.run(ctx=ctx)``: the run resumes from that point, as the
        same immunity run, and ``hint`` (if given) is added to its next model call::

            ctx = guard.restore(agent, run_id, hint="Do not call delete_file.")
            result = await agent.run(ctx=ctx)
        """
        return self.bridge.restore(target, run_id, checkpoint_id=checkpoint_id, hint=hint)

    def _resume_target(self, run_id: str | None, target: Any) -> tuple[str, Any]:
        from immunity.errors import ImmunityError

        rid = run_id or self.run_id
        if rid is None:
            raise ImmunityError("this guard has not seen a run yet: pass run_id=")
        if target is None:
            targets = list(self.bridge.targets.values())
            live = self.runtime.session(rid)
            run = live.run if live is not None else (self.runtime.store.get_run(rid) if self.runtime.store else None)
            named = [t for t in targets if run is not None and
                     (getattr(t, "name", None) or type(t).__name__) == run.agent]
            candidates = named if len(named) == 1 else targets
            if len(candidates) != 1:
                raise ImmunityError(f"this guard protects {len(targets)} agents; pass target= to resume {rid}")
            target = candidates[0]
        return rid, target

    async def aresume(self, run_id: str | None = None, *, target: Any = None, hint: str | None = None,  # type: ignore[override]
                      checkpoint_id: str | None = None) -> Any:
        """Continue ``run_id`` (default: the latest) from its last verified checkpoint (needs
        ``checkpoints="full"``): :meth:`restore` then ``await target.run(ctx=ctx)``. Returns the
        run's result; the immunity run goes on under the same id."""
        rid, target = self._resume_target(run_id, target)
        ctx = self.restore(target, rid, checkpoint_id=checkpoint_id, hint=hint)
        return await target.run(ctx=ctx)

    def resume(self, run_id: str | None = None, *, target: Any = None, hint: str | None = None,  # type: ignore[override]
               checkpoint_id: str | None = None) -> Any:
        """:meth:`aresume` from synchronous code (runs its own event loop; inside a running loop use
        ``await guard.aresume(...)``)."""
        import asyncio

        return asyncio.run(self.aresume(run_id, target=target, hint=hint, checkpoint_id=checkpoint_id))

    # ------------------------------------------------------------------ demo
    @classmethod
    def demo(cls, runtime: Any) -> str:
        """A FunctionAgent on the scripted model calls a tool with a bad argument; the tool fails;
        immunity adds a typed hint to the next model call only; the model follows it and the run
        finishes. Returns the immunity run id."""
        import asyncio

        from llama_index.core.agent.workflow import FunctionAgent

        from immunity_llamaindex.testing import ScriptedLLM, tool_call

        def get_forecast(city: str, days: int) -> str:
            """The weather forecast for a city, 1 to 7 days ahead."""
            if not 1 <= int(days) <= 7:
                raise ValueError(f"days must be between 1 and 7, got {days}")
            return f"{city}: sunny for the next {days} days, 18-22C"

        def second(messages: list[Any]) -> Any:
            hinted = any("[immunity]" in (m.content or "") for m in messages if m.role.value == "user")
            return tool_call("get_forecast", {"city": "Paris", "days": 7 if hinted else 30})

        llm = ScriptedLLM([tool_call("get_forecast", {"city": "Paris", "days": 30}), second,
                           "Paris will be sunny all week (18-22C)."])
        agent = FunctionAgent(name="forecaster", tools=[get_forecast], llm=llm,
                              system_prompt="You answer weather questions with the get_forecast tool.")
        adapter = runtime.protect(agent, framework=cls.name)
        try:
            async def go() -> Any:
                handler = agent.run(user_msg="What's the weather in Paris for the next month?")
                await handler
                return handler

            handler = asyncio.run(go())
        finally:
            adapter.uninstrument()
        return adapter.run_id_for(handler)
