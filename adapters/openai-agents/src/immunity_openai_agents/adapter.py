"""The OpenAI Agents SDK adapter. Importing this module does not import the SDK: it is imported
when an agent is instrumented (see :mod:`immunity_openai_agents.bridge` for the hook points)."""

from __future__ import annotations

import logging
import weakref
from typing import Any, ClassVar

from immunity.adapter import Adapter

log = logging.getLogger("immunity.openai_agents")

_MISSING = object()


class OpenAIAgentsAdapter(Adapter):
    """Attach immunity to an :class:`agents.Agent` (and every agent reachable through its handoffs)::

        import immunity
        guard = immunity.protect(agent, domain="support", store="immunity.db")
        result = Runner.run_sync(agent, "...")      # unchanged
        guard.uninstrument()                          # everything back as it was

    What is patched, per agent: ``hooks`` (chained with the user's), ``tool_use_behavior``; per
    :class:`agents.FunctionTool`: ``tool_input_guardrails`` (one added), ``on_invoke_tool`` and
    ``needs_approval`` (wrapped); globally: the default agent runner, which only acts on runs of
    instrumented agents. :meth:`uninstrument` puts back the very objects that were there.
    """

    name = "openai-agents"
    framework = "openai-agents"
    supported = ">=0.20,<0.21"
    #: the common options (``domain``, ``max_rollbacks`` (2), ``node_events`` (``"none"``; a node is one
    #: agent's turn)) and ``fallback_model``: an ``agents.Model`` to switch to when a FALLBACK
    #: recovery says so (an agent's model must be a ``Model`` object for retry and fallback)
    extra_options: ClassVar[dict[str, Any] | None] = {"fallback_model": None}

    def __init__(self, runtime: Any, **options: Any):
        super().__init__(runtime, **options)
        fallback = self.options["fallback_model"]
        if fallback is not None:  # the recovery policy offers FALLBACK once a fallback is configured
            runtime.config.options.setdefault("fallback_model", str(getattr(fallback, "name", None) or
                                                                    getattr(fallback, "model", None) or
                                                                    type(fallback).__name__))
        self._agents: list[tuple[Any, dict[str, Any]]] = []
        self._tools: list[tuple[Any, dict[str, Any]]] = []
        self._guarded_tools: set[int] = set()
        self._runner = False
        #: the immunity run ids of the SDK runs this adapter saw, oldest first
        self.run_ids: list[str] = []
        self._fallback: dict[int, Any] = {}
        self._open: dict[str, Any] = {}
        self._interrupted: dict[str, str] = {}
        self._guardrail: Any = None
        #: runs paused for a human's approval: run id -> (starting agent, the SDK's result)
        self._paused: dict[str, tuple[Any, Any]] = {}

    @classmethod
    def matches(cls, obj: Any) -> bool:
        """An object from the SDK's ``agents`` package (checked by module name, without importing)."""
        module = type(obj).__module__ or ""
        return module == "agents" or module.startswith("agents.")

    # ------------------------------------------------------------------ attach / detach
    def instrument(self, target: Any = None) -> None:
        """Attach to ``target`` (an :class:`agents.Agent`) and the agents of its handoffs. Calling it
        again (with the same or another agent) adds what is not attached yet and nothing twice."""
        if target is None:
            raise TypeError("OpenAIAgentsAdapter.instrument() needs the agent to protect")
        from immunity_openai_agents import bridge

        if self._guardrail is None:
            self._guardrail = bridge.make_input_guardrail(self)
        for agent in bridge.walk_agents(target):
            if any(a is agent for a, _ in self._agents):
                continue
            if isinstance(agent.hooks, bridge.GuardHooks):
                log.warning("agent %r is already protected by another immunity runtime; skipped", agent.name)
                continue
            saved = {"hooks": agent.hooks, "tool_use_behavior": agent.tool_use_behavior}
            agent.hooks = bridge.GuardHooks(self, agent.hooks)
            agent.tool_use_behavior = bridge.wrap_tool_use_behavior(self, saved["tool_use_behavior"])
            if bridge.is_model(agent.model):  # a Model object: model errors get retry / fallback
                saved["model"] = agent.model
                agent.model = bridge.GuardedModel(self, agent.model)
            self._agents.append((agent, saved))
            for tool in agent.tools or []:
                if bridge.is_function_tool(tool) and id(tool) not in self._guarded_tools:
                    self._guard_tool(bridge, tool)
        if not self._runner:
            _acquire_runner(self)
            self._runner = True
        self.instrumented = True

    def _guard_tool(self, bridge: Any, tool: Any) -> None:
        saved = {"tool_input_guardrails": tool.tool_input_guardrails, "on_invoke_tool": tool.on_invoke_tool,
                 "needs_approval": tool.needs_approval}
        tool.tool_input_guardrails = [*(tool.tool_input_guardrails or []), self._guardrail]
        tool.on_invoke_tool = bridge.wrap_invoke(self, tool, saved["on_invoke_tool"])
        tool.needs_approval = bridge.wrap_needs_approval(self, tool, saved["needs_approval"])
        self._tools.append((tool, saved))
        self._guarded_tools.add(id(tool))

    def uninstrument(self) -> None:
        """Put back exactly what :meth:`instrument` replaced (the same objects). Idempotent."""
        for tool, saved in reversed(self._tools):
            for attr, value in saved.items():
                setattr(tool, attr, value)
        for agent, saved in reversed(self._agents):
            for attr, value in saved.items():
                setattr(agent, attr, value)
        self._tools.clear()
        self._agents.clear()
        self._guarded_tools.clear()
        if self._runner:
            _release_runner(self)
            self._runner = False
        self.instrumented = False

    @property
    def agents(self) -> list[Any]:
        """The agents this adapter is attached to."""
        return [a for a, _ in self._agents]

    # ------------------------------------------------------------------ resume
    def _resume_state(self, run_id: str | None, approve: bool | None) -> tuple[Any, Any]:
        from immunity.errors import ImmunityError

        rid = run_id or self.run_id
        if rid is None or rid not in self._paused:
            raise ImmunityError(f"run {rid} is not waiting for an approval in this process: resume a run the "
                                "SDK interrupted (needs_approval), or call Runner.run(agent, state) yourself")
        agent, result = self._paused.pop(rid)
        state = result.to_state()
        if approve is not None:
            for item in state.get_interruptions():
                (state.approve if approve else state.reject)(item)
        return agent, state

    def resume(self, run_id: str | None = None, *, approve: bool | None = None, **runner_kwargs: Any) -> Any:
        """Continue ``run_id`` (default: the latest), paused by the SDK for a tool call's approval:
        ``approve=True`` / ``False`` approves / rejects every pending call (``None``: you already
        did, on the state), then ``Runner.run_sync(agent, state)``. Returns the SDK's result; the
        immunity run goes on under the same id."""
        from agents import Runner

        agent, state = self._resume_state(run_id, approve)
        return Runner.run_sync(agent, state, **runner_kwargs)

    async def aresume(self, run_id: str | None = None, *, approve: bool | None = None,
                      **runner_kwargs: Any) -> Any:
        """:meth:`resume` with ``await Runner.run(agent, state)``."""
        from agents import Runner

        agent, state = self._resume_state(run_id, approve)
        return await Runner.run(agent, state, **runner_kwargs)

    # ------------------------------------------------------------------ demo
    @classmethod
    def demo(cls, runtime: Any) -> str:
        """Run a small offline agent whose tool fails on a badly formatted argument; immunity's
        retry hint reaches the scripted model's next call, the model fixes the argument, the run
        ends. Returns the immunity run id."""
        from agents import Agent, Runner, function_tool

        from immunity_openai_agents.testing import ScriptedModel, call

        @function_tool
        def get_weather(city: str) -> str:
            """The current weather in a city (a bare city name, e.g. "Paris")."""
            if "," in city:
                raise ValueError(f"unknown city {city!r}: pass the bare city name")
            return f"Sunny, 21C in {city}"

        def after_error(seen: list[dict[str, Any]]) -> Any:
            hinted = any("[immunity]" in str(m.get("content")) for m in seen if m.get("role") == "user")
            return call("get_weather", city="Paris") if hinted else call("get_weather", city="Paris, FR")

        model = ScriptedModel([call("get_weather", city="Paris, FR"), after_error,
                               "It is sunny and 21C in Paris."], name="scripted-demo")
        agent = Agent(name="weather", instructions="Answer weather questions with the get_weather tool.",
                      model=model, tools=[get_weather])
        adapter = runtime.protect(agent)
        try:
            Runner.run_sync(agent, "What is the weather in Paris?")
            return adapter.run_ids[-1]
        finally:
            adapter.uninstrument()


#: adapters that currently need immunity's default runner (it is installed while this is not empty)
_RUNNER_USERS: weakref.WeakSet[OpenAIAgentsAdapter] = weakref.WeakSet()
_RUNNER: dict[str, Any] = {}


def _acquire_runner(adapter: OpenAIAgentsAdapter) -> None:
    from immunity_openai_agents import bridge

    if not _RUNNER_USERS or "installed" not in _RUNNER:
        _RUNNER["previous"], _RUNNER["installed"] = bridge.install_runner()
    _RUNNER_USERS.add(adapter)


def _release_runner(adapter: OpenAIAgentsAdapter) -> None:
    from immunity_openai_agents import bridge

    _RUNNER_USERS.discard(adapter)
    if not _RUNNER_USERS and "installed" in _RUNNER:
        bridge.uninstall_runner(_RUNNER.pop("previous"), _RUNNER.pop("installed"))
