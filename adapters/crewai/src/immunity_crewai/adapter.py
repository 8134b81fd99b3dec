"""The CrewAI adapter: attaches immunity to a crew through CrewAI's own interception hooks.

Importing this module does not import CrewAI; :meth:`CrewAIAdapter.instrument` does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from immunity.adapter import Adapter
from immunity.errors import ImmunityError
from immunity.models import Checkpoint, RecoveryKind
from immunity.runtime import RunSession

log = logging.getLogger("immunity.crewai")

#: the answers to an approval question that allow the tool call
APPROVALS = frozenset({"y", "yes", "ok", "approve", "approved", "allow"})


def model_name(llm: Any) -> str:
    """A model's name for events and the recovery policy (its ``model`` string, else its class)."""
    value = getattr(llm, "model", None)
    return value if isinstance(value, str) and value else type(llm).__name__


class CrewAIAdapter(Adapter):
    """Observe, verify, intervene and recover in CrewAI crews.

    ::

        guard = immunity.protect(crew, store="immunity.db")   # or Runtime(...).protect(crew)
        crew.kickoff(inputs=...)                                # unchanged
        guard.uninstrument()

    ``instrument(crew)`` watches that crew (and its checkpoint restores, which keep its id);
    ``instrument()`` with no target watches every crew in the process.

    Options: the common ones (``domain``, ``max_rollbacks`` (2): rollbacks carried out in one run;
    ``node_events`` (``"none"``): ``"end"`` / ``"all"`` record a
    ``node_end`` / also a ``node_start`` event per task), ``ask_human`` (a callable ``(question,
    tool_name, tool_input) -> str`` answering an approval question; by default CrewAI's own console
    prompt is used), ``task_retries`` (how many times a task whose answer failed its checks is re-run
    through CrewAI's task guardrail retry, default 1; 0 switches it off), ``fallback_model`` (a CrewAI
    ``BaseLLM`` to call instead when a model call fails and the recovery policy says FALLBACK; a
    transient model error is first retried with the policy's backoff), ``rollback`` (``"task"``, the
    default: a rollback re-runs the running task from its start inside the same ``kickoff()``,
    through CrewAI's task guardrail retry, with the steps after the task's start compensated;
    ``"stop"``: the crew stops and :meth:`resume` restores the last verified CrewAI checkpoint,
    which can lie before earlier tasks. ``"task"`` also stops and waits for :meth:`resume` when an
    earlier task of the run failed its checks, or the task's ``guardrail_max_retries`` is spent).
    """

    name = "crewai"
    framework = "crewai"
    supported = ">=1.15,<2"
    extra_options: ClassVar[dict[str, Any] | None] = {"ask_human": None, "task_retries": 1, "fallback_model": None,
                                                      "rollback": "task"}

    def __init__(self, runtime: Any, *, ask_human: Callable[[str, str, dict[str, Any]], str] | None = None,
                 task_retries: int = 1, fallback_model: Any = None, rollback: str = "task", **options: Any):
        if rollback not in ("task", "stop"):
            raise ValueError(f"rollback must be 'task' or 'stop', not {rollback!r}")
        super().__init__(runtime, ask_human=ask_human, task_retries=task_retries, fallback_model=fallback_model,
                         rollback=rollback, **options)
        self._ask_human = ask_human
        self.task_retries = int(task_retries)
        self.fallback_model = fallback_model
        if fallback_model is not None:  # the recovery policy offers FALLBACK once a fallback is configured
            runtime.config.options.setdefault("fallback_model", model_name(fallback_model))
        self._crew_ids: set[str] = set()
        self._watch_all = False
        self._hooks: list[tuple[Any, Callable[..., Any]]] = []
        self._bus_handlers: list[tuple[type, Callable[..., Any]]] = []
        self._lock = threading.Lock()
        self._bridge: Any = None
        self._crews: dict[str, Any] = {}

    # ------------------------------------------------------------------ attach / detach
    @classmethod
    def matches(cls, obj: Any) -> bool:
        module = type(obj).__module__ or ""
        return module == "crewai" or module.startswith("crewai.")

    def watches(self, crew: Any) -> bool:
        return self._watch_all or str(getattr(crew, "id", "")) in self._crew_ids

    def instrument(self, target: Any = None) -> None:
        """Watch ``target`` (a crew, or a list of crews; ``None``: every crew) and register the
        hooks once. Calling it again adds targets and registers nothing twice."""
        from crewai import Crew
        from crewai.events import crewai_event_bus
        from crewai.events.types.checkpoint_events import CheckpointCompletedEvent
        from crewai.hooks import InterceptionPoint, register_hook

        if self.version_supported() is False:
            log.warning("immunity-crewai supports crewai %s; crewai %s is installed", self.supported,
                        self.framework_version())
        targets = target if isinstance(target, list | tuple) else [target]
        for t in targets:
            if t is None:
                self._watch_all = True
            elif isinstance(t, Crew):
                self._crew_ids.add(str(t.id))
                self._crews[str(t.id)] = t
            else:
                raise ImmunityError(f"immunity-crewai attaches to a crewai.Crew, not {type(t).__name__} "
                                    "(an agent or task is covered through the crew that runs it)")
        with self._lock:
            if self.instrumented:
                return
            from immunity_crewai.events import Bridge

            bridge = self._bridge = Bridge(self)
            table = [
                (InterceptionPoint.EXECUTION_START, "execution_start", bridge.execution_start),
                (InterceptionPoint.PRE_STEP, "pre_step", bridge.pre_step),
                (InterceptionPoint.PRE_MODEL_CALL, "pre_model_call", bridge.pre_model_call),
                (InterceptionPoint.POST_MODEL_CALL, "post_model_call", bridge.post_model_call),
                (InterceptionPoint.PRE_TOOL_CALL, "pre_tool_call", bridge.pre_tool_call),
                (InterceptionPoint.POST_TOOL_CALL, "post_tool_call", bridge.post_tool_call),
                (InterceptionPoint.POST_STEP, "post_step", bridge.post_step),
                (InterceptionPoint.OUTPUT, "output", bridge.output),
                (InterceptionPoint.EXECUTION_END, "execution_end", bridge.execution_end),
            ]
            for point, where, fn in table:
                hook = bridge.guarded(where, fn)
                register_hook(point, hook)
                self._hooks.append((point, hook))

            def on_checkpoint(source: Any, event: Any) -> None:
                bridge.checkpoint_completed(source, event)

            crewai_event_bus.on(CheckpointCompletedEvent)(on_checkpoint)
            self._bus_handlers.append((CheckpointCompletedEvent, on_checkpoint))
            self.instrumented = True

    def uninstrument(self) -> None:
        """Remove exactly the hooks and handlers :meth:`instrument` added (and any task guardrail
        still attached to a running task)."""
        with self._lock:
            if not self.instrumented:
                return
            from crewai.events import crewai_event_bus
            from crewai.hooks import unregister_hook

            for point, hook in self._hooks:
                unregister_hook(point, hook)
            for event_type, handler in self._bus_handlers:
                crewai_event_bus.off(event_type, handler)
            self._hooks.clear()
            self._bus_handlers.clear()
            if self._bridge is not None:
                for run in list(self._bridge.runs.values()):
                    self._bridge._release_guardrails(run)
                    self._bridge._unguard_models(run)
            self._crew_ids.clear()
            self._crews.clear()
            self._watch_all = False
            self.instrumented = False

    # ------------------------------------------------------------------ asking a human
    def ask_human(self, question: str, ctx: Any) -> str:
        """Ask a human whether a tool call may run: the ``ask_human`` option if given, else
        CrewAI's own console prompt (``ToolCallHookContext.request_human_input``). No answer
        (no console) counts as "no"."""
        if self._ask_human is not None:
            return str(self._ask_human(question, ctx.tool_name, dict(ctx.tool_input)) or "")
        try:
            return str(ctx.request_human_input(
                prompt=f"[immunity] {question}\nTool: {ctx.tool_name} {ctx.tool_input}",
                default_message="Type 'yes' to allow this tool call; anything else blocks it:") or "")
        except (EOFError, OSError):
            return ""

    # ------------------------------------------------------------------ runs across resumes
    def continue_run(self, run_id: str, crew: Any) -> RunSession | None:
        """The session of ``run_id`` if this run exists (a rollback or a resume from a CrewAI
        checkpoint, in this process or from the store), reopened; ``None`` for a new run."""
        rt = self.runtime
        bridge = self._bridge
        pending = bridge.rollbacks.pop(run_id, None) if bridge is not None else None
        session = rt.session(run_id)
        if session is not None:
            session.reopen()
            session.run.ended_at = None
            session.run.metadata["resumed"] = int(session.run.metadata.get("resumed", 0)) + 1
            if pending is not None and pending.rollback is not None:
                session.run.metadata.setdefault("rollbacks", []).append(pending.rollback.reason)
            rt.save("runs", session.run)
            return session
        store = rt.store
        stored = store.get_run(run_id) if store is not None else None
        if stored is None:
            return None
        # a run of another process: core reloads it from the store (its steps folded back into the
        # signals, its checkpoints) and continues it under the same id
        session = rt.resume_run(run_id)
        if session is None:
            return None
        session.state.tokens = stored.tokens
        session.run.tokens, session.run.steps = stored.tokens, session.state.n_steps
        session.run.metadata["resumed"] = int(stored.metadata.get("resumed", 0)) + 1
        if stored.status == "rolling_back":
            rollbacks = [r for r in store.recoveries(run_id) if r.kind == RecoveryKind.ROLLBACK and r.hint]
            if rollbacks:
                session.add_hint(rollbacks[-1].hint or "", source="resume")
        rt.save("runs", session.run)
        return session

    def rolled_back(self) -> list[str]:
        """Runs stopped for a rollback in this process, waiting for :meth:`resume`."""
        return list(self._bridge.rollbacks) if self._bridge is not None else []

    def _restore(self, run_id: str | None, checkpoint: Checkpoint | None, llms: dict[str, Any] | None) -> Any:
        from crewai import Crew
        from crewai.events import crewai_event_bus
        from crewai.state import CheckpointConfig, JsonProvider, SqliteProvider

        # checkpoints are recorded from CrewAI's event bus: its checkpoint handler emits the
        # completion event from a worker thread, so wait for the handlers those spawn too
        for _ in range(3):
            crewai_event_bus.flush()
        if run_id is None:
            waiting = self.rolled_back()
            if not waiting:
                raise ImmunityError("no run is waiting for a rollback; pass run_id=")
            run_id = waiting[-1]
        cp = checkpoint
        if cp is None:  # CrewAI's own checkpoints (a task start recorded for an in-kickoff rollback has no file)
            session = self.runtime.session(run_id)
            cps = [c for c in (session.checkpoints if session is not None else []) if c.verified and
                   c.ref.get("location")]
            cp = cps[-1] if cps else None
        if cp is None and self.runtime.store is not None:
            cps = [c for c in self.runtime.store.checkpoints(run_id) if c.verified and c.ref.get("location")]
            cp = cps[-1] if cps else None
        if cp is None or not cp.ref.get("location"):
            raise ImmunityError(f"run {run_id} has no verified CrewAI checkpoint to roll back to (give the crew "
                                "checkpoint=CheckpointConfig(...))")
        session = self.runtime.session(run_id)
        if session is not None:
            session.rollback(cp)  # compensations for side effects after the checkpoint (core)
        provider = SqliteProvider() if cp.ref.get("provider") == "SqliteProvider" else JsonProvider()
        restored = Crew.from_checkpoint(CheckpointConfig(restore_from=cp.ref["location"], provider=provider))
        # CrewAI rebuilds a custom model from its model name only: give the agents their models back
        pending = self._bridge.rollbacks.get(run_id) if self._bridge is not None else None
        original = pending.crew_ref() if pending is not None else self._crews.get(str(restored.id))
        by_role = dict(llms or {})
        if original is not None:
            for agent in original.agents:
                by_role.setdefault(agent.role, agent.llm)
        for agent in restored.agents:
            if agent.role in by_role:
                agent.llm = by_role[agent.role]
        self._crew_ids.add(str(restored.id))
        return restored

    def resume(self, run_id: str | None = None, *, checkpoint: Checkpoint | None = None,  # type: ignore[override]
               llms: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None) -> Any:
        """Roll back to the last verified CrewAI checkpoint of ``run_id`` (default: the last run
        stopped for a rollback) and resume it: tasks completed before the checkpoint are not run
        again, the rollback's hint goes into the next model call, and the immunity run continues
        (same run id). ``llms`` maps agent roles to models to use (by default the models of the
        crew that was rolled back). Returns the crew's output."""
        restored = self._restore(run_id, checkpoint, llms)
        return restored.kickoff(inputs=inputs)

    async def aresume(self, run_id: str | None = None, *, checkpoint: Checkpoint | None = None,  # type: ignore[override]
                      llms: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None) -> Any:
        """:meth:`resume` with CrewAI's native async kickoff."""
        restored = self._restore(run_id, checkpoint, llms)
        return await restored.akickoff(inputs=inputs)

    # ------------------------------------------------------------------ demo
    @classmethod
    def demo(cls, runtime: Any) -> str:
        """A support crew on the real CrewAI runtime with a scripted model: the model keeps calling
        a tool with a malformed argument; immunity sees the repeated error, tells the model what
        to change in its next call, and the model recovers. Returns the immunity run id."""
        from immunity_crewai.demo import run_demo

        return run_demo(cls, runtime)
