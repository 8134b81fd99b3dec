"""CrewAI's interception hooks -> immunity events, and immunity decisions -> CrewAI's own mechanisms.

Everything on the hot path runs inline, in CrewAI's global interception layer (``crewai.hooks``):

=====================  =====================================================================
CrewAI point           what happens here
=====================  =====================================================================
``EXECUTION_START``    a crew kickoff begins (the immunity run starts at the first step, once
                       CrewAI has given the kickoff its id)
``PRE_STEP``           a task starts: ``node_start``, and ``handoff`` when the agent changes
``PRE_MODEL_CALL``     ``model_start``; pending hints are appended to the live message list of
                       *this* call and taken out again right after it
``POST_MODEL_CALL``    ``model_end`` for a text answer (with usage), ``final_answer`` for the
                       task's answer; a failed check on it retries the task (task guardrail)
``PRE_TOOL_CALL``      ``model_end`` for a tool-call answer, then ``tool_start``: block, rewrite,
                       ask a human, replay a cached side effect, stop
``POST_TOOL_CALL``     ``tool_end`` with the result or error; the model receives a block message
                       or a cached result as the tool's result; a rollback ends the task's
                       attempt and re-runs the task from its start (task guardrail)
``POST_STEP``          ``node_end``; the task's verified state (for checkpoints)
``OUTPUT``             a stopped run's answer becomes the crew's output
``EXECUTION_END``      ``run_end`` (success or the kickoff's error)
=====================  =====================================================================

CrewAI's event bus (whose handlers run on a thread pool, not inline) is used for one thing only:
recording CrewAI's checkpoints (``CheckpointCompletedEvent``) as immunity checkpoints.

Every hook body is wrapped: an error inside immunity is recorded on the run and the crew goes on
(with ``fail_closed=True`` it aborts the crew with CrewAI's ``HookAborted``, since CrewAI swallows
any other exception raised by a hook).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from immunity.errors import PluginError
from immunity.interventions.quoting import QUOTE_TOOL, split
from immunity.models import (
    Checkpoint,
    Event,
    EventKind,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Severity,
    new_id,
)
from immunity.outcomes import end_run
from immunity.runtime import Decision, RunSession

log = logging.getLogger("immunity.crewai")

PLUGIN = "immunity_crewai"
#: the prefix CrewAI puts on a tool result when the tool raised
TOOL_ERROR_PREFIX = "Error executing tool:"
#: the crew run and agent role of the task running in this context (CrewAI's forced final-answer
#: call after ``max_iter`` carries no agent, task or crew: this is how it is attributed)
_TASK: ContextVar[tuple[Any, str | None] | None] = ContextVar("immunity_crewai_task", default=None)
#: the answer of a task attempt ended by a rollback (CrewAI shows it to the task's next attempt)
ROLLED_BACK_ANSWER = "(rolled back by immunity: this attempt's steps were undone)"


@functools.cache
def _force_final_text() -> str:
    """The message CrewAI adds when an agent reached ``max_iter`` (its own i18n text)."""
    try:
        from crewai.utilities.i18n import I18N_DEFAULT

        return str(I18N_DEFAULT.errors("force_final_answer"))
    except Exception:  # pragma: no cover - another CrewAI version: the signal is simply not seen
        return "\x00"


@dataclass
class _PendingTool:
    call_id: str
    name: str
    mode: str = "run"            # run | blocked | cached | stopped
    message: str | None = None   # what the model receives instead of running the tool


@dataclass
class _PendingModel:
    model: str | None
    usage_before: tuple[int, int, int] | None
    llm: Any = None
    agent: str | None = None  # the role of the agent that made the call


@dataclass
class CrewRun:
    """One crew kickoff as this adapter tracks it."""

    crew_ref: Any
    crew_id: str
    session: RunSession | None = None
    last_agent: str | None = None
    models: dict[tuple[int, int], _PendingModel] = field(default_factory=dict)
    hints: dict[int, tuple[list[Any], list[dict[str, Any]]]] = field(default_factory=dict)
    tools: dict[int, _PendingTool] = field(default_factory=dict)
    stop_answer: str | None = None
    task_feedback: dict[int, str] = field(default_factory=dict)
    task_retries: dict[int, int] = field(default_factory=dict)
    task_flagged: dict[str, bool] = field(default_factory=dict)
    task_verified: dict[str, bool] = field(default_factory=dict)
    final_emitted: set[int] = field(default_factory=set)
    rollback: Recovery | None = None
    #: tasks (by id) whose attempt was rolled back: the checkpoint at the task's start and the
    #: feedback CrewAI's guardrail retry gives the task's next attempt
    task_rollbacks: dict[int, tuple[Checkpoint, str]] = field(default_factory=dict)
    #: the checkpoint at each running task's start and the context CrewAI gave the task
    task_starts: dict[int, tuple[Checkpoint, str]] = field(default_factory=dict)
    guarded_tasks: list[tuple[Any, Any]] = field(default_factory=list)
    #: roles of the agents that reached ``max_iter`` (CrewAI forced their final answer)
    max_iterations: list[str] = field(default_factory=list)
    #: models whose calls go through the adapter's retry / fallback for this run
    guarded_models: list[Any] = field(default_factory=list)
    #: models (by id) that fell back in this run: their later calls go to the fallback model
    fell_back: set[int] = field(default_factory=set)


def _usage_of(llm: Any) -> tuple[int, int, int] | None:
    getter = getattr(llm, "get_token_usage_summary", None)
    if getter is None:
        return None
    u = getter()
    return int(u.prompt_tokens or 0), int(u.completion_tokens or 0), int(u.total_tokens or 0)


def _delta(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    i, o, t = (a - b for a, b in zip(after, before, strict=True))
    return {"input_tokens": i, "output_tokens": o, "total_tokens": t or i + o}


def _plain_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append({"role": "user", "content": str(m)})
            continue
        item: dict[str, Any] = {"role": m.get("role"), "content": m.get("content")}
        if m.get("tool_calls"):
            item["tool_calls"] = m["tool_calls"]
        if m.get("tool_call_id"):
            item["tool_call_id"] = m["tool_call_id"]
        out.append(item)
    return out


def hint_messages(texts: list[str], *, native: bool) -> list[dict[str, Any]]:
    """The messages that carry immunity's hints into one model call.

    A hint that quotes outside text (a tool's output, see :func:`immunity.interventions.quoting.split`)
    goes, when the agent uses native tool calling, as tool-role data: an assistant message calling
    the synthetic tool ``QUOTE_TOOL`` (a fresh call id, no arguments), the ``tool`` message answering
    that id with the quoted text, then immunity's own words as a user message. In CrewAI's text
    (ReAct) protocol the model gets no tool role, so such a hint stays one user message with the
    quote delimited inline. A hint with no quote is one user message, as before."""
    out: list[dict[str, Any]] = []
    for text in texts:
        parts = split(text) if native else None
        if parts is None or not parts.quotes:
            out.append({"role": "user", "content": text})
            continue
        call_id = new_id("call_immunity_")
        out.append({"role": "assistant", "content": None,
                    "tool_calls": [{"id": call_id, "type": "function",
                                    "function": {"name": QUOTE_TOOL, "arguments": "{}"}}]})
        out.append({"role": "tool", "tool_call_id": call_id, "name": QUOTE_TOOL, "content": parts.data})
        out.append({"role": "user", "content": parts.words})
    return out


def _remove_by_identity(items: list[Any], targets: list[Any]) -> None:
    for i in range(len(items) - 1, -1, -1):
        if any(items[i] is t for t in targets):
            del items[i]


def _shift_counts(task: Any, at: int, by: int) -> None:
    """Move CrewAI's per-position guardrail retry counts of ``task`` along with a guardrail
    inserted (``by=+1``) or removed (``by=-1``) at position ``at``; the removed one's count goes."""
    counts = getattr(task, "_guardrail_retry_counts", None)
    if not isinstance(counts, dict) or not counts:
        return
    moved = {}
    for i, n in counts.items():
        if not isinstance(i, int) or i < at:
            moved[i] = n
        elif by < 0 and i == at:
            continue
        else:
            moved[i + by] = n
    counts.clear()
    counts.update(moved)


class Bridge:
    """The hook functions registered on CrewAI's interception points, and the runs they track."""

    def __init__(self, adapter: Any):
        self.adapter = adapter
        self.runtime = adapter.runtime
        self._lock = threading.RLock()
        self.runs: dict[int, CrewRun] = {}
        self._ids = itertools.count(1)
        #: crews that were stopped for a rollback, by immunity run id
        self.rollbacks: dict[str, CrewRun] = {}
        #: runs that ended lately (a checkpoint written for them may still be on its way)
        self.finished: collections.deque[CrewRun] = collections.deque(maxlen=16)
        self.version = adapter.framework_version()  # read once: a metadata lookup costs milliseconds

    # ------------------------------------------------------------------ plumbing
    def guarded(self, where: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a hook body so an error inside immunity never breaks the crew (fail-open)."""

        @functools.wraps(fn)
        def hook(ctx: Any) -> Any:
            try:
                return fn(ctx)
            except Exception as exc:
                if type(exc).__name__ == "HookAborted":
                    raise
                return self._failed(where, ctx, exc)

        hook.__name__ = f"immunity_{where}"
        hook.__qualname__ = f"immunity_{where}"
        return hook

    def _failed(self, where: str, ctx: Any, exc: Exception) -> Any:
        run = self._find(ctx)
        try:
            if run is not None and run.session is not None:
                run.session.record_error(PLUGIN, where, exc)
            else:
                log.warning("immunity-crewai failed in %s: %s: %s", where, type(exc).__name__, exc)
                if self.runtime.config.fail_closed:
                    raise PluginError(PLUGIN, f"{where}: {exc}") from exc
        except PluginError as err:  # fail closed: CrewAI only lets HookAborted through
            from crewai.hooks import HookAborted

            raise HookAborted(str(err), source=PLUGIN) from err
        return None

    @staticmethod
    def _crew_of(ctx: Any) -> Any:
        crew = getattr(ctx, "crew", None)
        if crew is None:
            agent = getattr(ctx, "agent", None) or getattr(getattr(ctx, "task", None), "agent", None)
            crew = getattr(agent, "crew", None)
        return None if crew is None or isinstance(crew, str) else crew

    def _find(self, ctx: Any) -> CrewRun | None:
        crew = self._crew_of(ctx)
        return None if crew is None else self.runs.get(id(crew))

    def _active(self, ctx: Any) -> CrewRun | None:
        """The tracked run of this context's crew, its immunity session started if need be."""
        run = self._find(ctx)
        if run is not None and run.session is None:
            self._start_session(run, self._crew_of(ctx))
        return run

    @staticmethod
    def _key(ctx: Any) -> tuple[int, int]:
        return id(getattr(ctx, "agent", None)), id(getattr(ctx, "task", None))

    @staticmethod
    def _role(agent: Any) -> str | None:
        role = getattr(agent, "role", None)
        return str(role) if role is not None else None

    # ------------------------------------------------------------------ run lifecycle
    def execution_start(self, ctx: Any) -> None:
        crew = ctx.crew
        if crew is None or not self.adapter.watches(crew):
            return
        run = CrewRun(crew_ref=weakref.ref(crew), crew_id=str(crew.id))
        with self._lock:
            self.runs[id(crew)] = run
        for agent in list(getattr(crew, "agents", None) or []):
            self._guard_model(run, getattr(agent, "llm", None))

    # ------------------------------------------------------------------ model errors: retry, fallback
    def _guard_model(self, run: CrewRun, llm: Any) -> None:
        """Route this model's calls through :meth:`_call_model` for the run (a model error is then
        retried or sent to the fallback model inside the same executor step). CrewAI's hooks cannot
        change which model a call goes to, so the instance's ``call``/``acall`` are shadowed for the
        run's duration and restored when it ends (:meth:`_unguard_models`)."""
        if llm is None or isinstance(llm, str) or "call" in getattr(llm, "__dict__", {}) \
                or not callable(getattr(llm, "call", None)):
            return
        bridge, call, acall = self, llm.call, getattr(llm, "acall", None)

        def guarded_call(messages: Any, *args: Any, **kwargs: Any) -> Any:
            return bridge._call_model(llm, call, messages, args, kwargs)

        object.__setattr__(llm, "call", guarded_call)
        if acall is not None:
            async def guarded_acall(messages: Any, *args: Any, **kwargs: Any) -> Any:
                return await bridge._acall_model(llm, acall, messages, args, kwargs)

            object.__setattr__(llm, "acall", guarded_acall)
        run.guarded_models.append(llm)

    @staticmethod
    def _unguard_models(run: CrewRun) -> None:
        for llm in run.guarded_models:
            for name in ("call", "acall"):
                llm.__dict__.pop(name, None)
        run.guarded_models.clear()

    def _sticky_fallback(self, llm: Any, kwargs: dict[str, Any]) -> bool:
        """Whether this model already fell back in this run: its later calls go to the fallback
        model straight away (the pending model call is recorded under the fallback's name)."""
        agent = kwargs.get("from_agent")
        crew = getattr(agent, "crew", None)
        run = self.runs.get(id(crew)) if crew is not None and not isinstance(crew, str) else None
        if run is None or id(llm) not in run.fell_back:
            return False
        pending = run.models.get((id(agent), id(kwargs.get("from_task"))))
        if pending is not None:
            fb = self.adapter.fallback_model
            pending.model, pending.llm = getattr(fb, "model", None) or type(fb).__name__, fb
            pending.usage_before = _usage_of(fb)
        return True

    def _call_model(self, llm: Any, call: Callable[..., Any], messages: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        attempt, fn, fallback = 0, call, False
        if self._sticky_fallback(llm, kwargs):
            fn, fallback = self.adapter.fallback_model.call, True
        while True:
            try:
                return fn(messages, *args, **kwargs)
            except Exception as exc:
                plan = self._model_failed(llm, messages, kwargs, exc, attempt, fallback)
                if plan is None:
                    raise
                if plan == "fallback":
                    fallback, fn = True, self.adapter.fallback_model.call
                else:
                    attempt += 1
                    time.sleep(float(plan))

    async def _acall_model(self, llm: Any, acall: Callable[..., Any], messages: Any, args: tuple[Any, ...],
                           kwargs: dict[str, Any]) -> Any:
        attempt, fn, fallback = 0, acall, False
        if self._sticky_fallback(llm, kwargs):
            fn, fallback = self.adapter.fallback_model.acall, True
        while True:
            try:
                return await fn(messages, *args, **kwargs)
            except Exception as exc:
                plan = self._model_failed(llm, messages, kwargs, exc, attempt, fallback)
                if plan is None:
                    raise
                if plan == "fallback":
                    fallback, fn = True, self.adapter.fallback_model.acall
                else:
                    attempt += 1
                    await asyncio.sleep(float(plan))

    def _model_failed(self, llm: Any, messages: Any, kwargs: dict[str, Any], exc: Exception, attempt: int,
                      fallback: bool) -> float | str | None:
        """A model call raised: record it and return the recovery policy's plan: ``"fallback"``, a
        delay before calling the same model again, or ``None`` (the error goes on to CrewAI)."""
        try:
            agent, task = kwargs.get("from_agent"), kwargs.get("from_task")
            crew = getattr(agent, "crew", None)
            run = self.runs.get(id(crew)) if crew is not None and not isinstance(crew, str) else None
            if run is None or run.session is None:
                return None
            key = (id(agent), id(task))
            d = self._model_end(run, key, error=f"{type(exc).__name__}: {exc}")
            if d is None or d.stop or d.recovery is None:
                return None
            rec = d.recovery
            plan: float | str | None = None
            if rec.kind == RecoveryKind.FALLBACK and not fallback and self.adapter.fallback_model is not None:
                plan = "fallback"
                run.fell_back.add(id(llm))
            elif rec.kind == RecoveryKind.RETRY and attempt + 1 < rec.max_attempts:
                plan = min(max(float(rec.delay_s), 0.0), 30.0)
            if plan is None:
                return None
            nxt = self.adapter.fallback_model if plan == "fallback" or fallback else llm
            model = getattr(nxt, "model", None) or type(nxt).__name__
            role = self._role(agent)
            run.session.model_start(_plain_messages(messages if isinstance(messages, list) else []),
                                    model=model, agent=role)
            run.models[key] = _PendingModel(model=model, usage_before=_usage_of(nxt), llm=nxt, agent=role)
            return plan
        except Exception as err:  # fail open: the model's own error goes on
            log.warning("immunity-crewai could not handle a model error: %s", err)
            return None

    def _start_session(self, run: CrewRun, crew: Any) -> None:
        kickoff_id = getattr(crew, "checkpoint_kickoff_event_id", None) or getattr(crew, "_kickoff_event_id", None)
        run_id = f"crewai-{kickoff_id}" if kickoff_id else None
        tasks = list(getattr(crew, "tasks", None) or [])
        agents = list(getattr(crew, "agents", None) or [])
        task_text = getattr(tasks[0], "description", None) if tasks else None
        agent = self._role(agents[0]) if agents else None
        session = None
        resuming = getattr(crew, "checkpoint_kickoff_event_id", None) is not None
        if run_id is not None and (resuming or self.runtime.session(run_id) is not None):
            session = self.adapter.continue_run(run_id, crew)
        if session is None:
            session = self.runtime.start_run(
                task=task_text, framework="crewai", agent=agent, run_id=run_id, domain=self.adapter.options["domain"],
                metadata={"crew_id": str(crew.id), "crew_name": getattr(crew, "name", None),
                          "framework_version": self.version})
        run.session = session
        self.adapter.saw_run(session.run.run_id)

    def execution_end(self, ctx: Any) -> None:
        crew = ctx.crew
        with self._lock:
            run = self.runs.pop(id(crew), None) if crew is not None else None
        if run is None:
            return
        self.finished.append(run)
        self._unguard_models(run)
        self._release_guardrails(run)
        for agent_key in list(run.hints):
            self._drop_hints(run, agent_key)
        if run.session is None:
            if getattr(ctx, "status", "completed") != "failed":
                return
            self._start_session(run, crew)
        session = run.session
        assert session is not None
        for key in list(run.models):
            self._model_end(run, key, error="the model call did not complete" if ctx.status == "failed" else None)
        if run.rollback is not None:
            # the run goes on after the rollback: keep it open for resume()
            session.run.status = "rolling_back"
            self.runtime.save("runs", session.run)
            with self._lock:
                self.rollbacks[session.run.run_id] = run
            return
        if ctx.status == "failed":
            err = ctx.error
            reason = f"raised {type(err).__name__}: {err}" if err is not None else "the crew failed"
            if err is not None and "guardrail" in str(err).lower():
                reason = f"a task guardrail failed: {err}"
            end_run(session, "failure", reason=reason,
                    error=f"{type(err).__name__}: {err}" if err is not None else "crew failed")
        else:
            output = getattr(ctx.output, "raw", None)
            if run.stop_answer is not None:
                end_run(session, "failure", reason=f"stopped by immunity: {run.stop_answer}", output=run.stop_answer)
            elif run.max_iterations:
                end_run(session, "failure", reason=f"max iterations reached (max_iter) by {', '.join(run.max_iterations)}",
                        output=output)
            else:  # completed: whether it succeeded is the user's call (set_outcome)
                end_run(session, None, output=output)

    def output(self, ctx: Any) -> None:
        run = self._find(ctx)
        if run is None or run.stop_answer is None:
            return
        payload = ctx.payload
        if payload is not None and hasattr(payload, "raw"):
            payload.raw = run.stop_answer

    # ------------------------------------------------------------------ tasks
    def pre_step(self, ctx: Any) -> None:
        if getattr(ctx, "kind", None) != "task":
            return
        run = self._active(ctx)
        if run is None:
            return
        session = run.session
        assert session is not None
        crew = self._crew_of(ctx)
        if crew is not None and getattr(crew, "checkpoint", None) and run.task_verified:
            # CrewAI writes checkpoints on its bus's worker threads from the live crew: let the last
            # task's checkpoint be written before this task changes the crew's state
            from crewai.events import crewai_event_bus

            crewai_event_bus.flush(timeout=10)
        role = ctx.agent_role or self._role(ctx.agent)
        task = ctx.task
        if run.last_agent is not None and role != run.last_agent:
            # a sequential crew hands over with the next task: its description is the handoff's reason
            what = getattr(task, "name", None) or getattr(task, "description", None)
            session.handoff(run.last_agent, role or "agent", arguments={"task": str(what)} if what else None)
        run.last_agent = role
        _TASK.set((run, role))
        if self.adapter.options["rollback"] == "task" and task is not None:
            # where a rollback inside this task goes back to: the task's start (verified when every
            # earlier task passed its checks), with the context CrewAI gave it
            cp = session.checkpoint({"task_id": str(getattr(task, "id", "")), "task_name": ctx.step_name,
                                     "task_start": True}, verified=all(run.task_verified.values()))
            run.task_starts[id(task)] = (cp, ctx.payload if isinstance(ctx.payload, str) else "")
        if self.adapter.options["node_events"] == "all":
            session.emit(Event(kind=EventKind.NODE_START, node=ctx.step_name, agent=role,
                               data={"task_id": str(getattr(task, "id", ""))}))
        run.task_flagged[str(getattr(task, "id", ""))] = False

    def post_step(self, ctx: Any) -> None:
        if getattr(ctx, "kind", None) != "task":
            return
        run = self._find(ctx)
        if run is None or run.session is None:
            return
        task = ctx.task
        key = (id(ctx.agent), id(task))
        self._model_end(run, key)
        self._drop_hints(run, id(ctx.agent))
        out = ctx.payload
        raw = getattr(out, "raw", None)
        if id(task) not in run.final_emitted and raw is not None:
            self._final(run, ctx, str(raw))
        run.final_emitted.discard(id(task))
        run.task_retries.pop(id(task), None)
        run.task_feedback.pop(id(task), None)
        run.task_starts.pop(id(task), None)
        run.task_rollbacks.pop(id(task), None)
        self._release_guardrails(run, task)
        task_id = str(getattr(task, "id", ""))
        flagged = run.task_flagged.get(task_id, False) or run.stop_answer is not None or run.rollback is not None
        run.task_flagged[task_id] = flagged
        run.task_verified[task_id] = not flagged
        if self.adapter.options["node_events"] != "none":
            run.session.emit(Event(kind=EventKind.NODE_END, node=ctx.step_name, agent=ctx.agent_role,
                                   output=None if raw is None else str(raw)[:4000],
                                   data={"task_id": task_id, "verified": not flagged}))

    # ------------------------------------------------------------------ model calls
    def pre_model_call(self, ctx: Any) -> Any:
        run = self._active(ctx)
        if run is None:
            current = _TASK.get()
            messages = getattr(ctx, "messages", None) or []
            if current is not None and messages and str(messages[-1].get("content")) == _force_final_text():
                role = current[1] or "agent"
                if role not in current[0].max_iterations:
                    current[0].max_iterations.append(role)
            return None
        session = run.session
        assert session is not None
        key = self._key(ctx)
        self._drop_hints(run, id(ctx.agent))
        if run.stop_answer is not None:
            # the run was stopped: this agent finishes with the stop answer (CrewAI makes this one
            # call anyway; its answer is replaced); pending hints stay for a resume
            self._finish_executor(ctx.agent, run.stop_answer)
            return None
        if key in run.models:  # the previous call on this executor raised: no answer came back
            self._model_end(run, key, error="the model call raised an error")
        llm = ctx.llm
        model = getattr(llm, "model", None) if llm is not None and not isinstance(llm, str) else llm
        d = session.model_start(_plain_messages(ctx.messages), model=model, agent=self._role(ctx.agent))
        run.models[key] = _PendingModel(model=model, usage_before=_usage_of(llm) if llm is not None else None,
                                        llm=llm, agent=self._role(ctx.agent))
        if d.inject:
            hints = hint_messages(d.inject, native=self._native(ctx))
            ctx.messages.extend(hints)  # in place: this list *is* what the model receives
            run.hints[id(ctx.agent)] = (ctx.messages, hints)
        if d.stop:
            self._stop(run, ctx, d)
        return None

    def post_model_call(self, ctx: Any) -> Any:
        run = self._find(ctx)
        if run is None or run.session is None:
            return None
        key = self._key(ctx)
        self._drop_hints(run, id(ctx.agent))
        text = ctx.response
        if run.stop_answer is not None:  # stopped: this task's answer is the stop answer
            self._model_end(run, key, output=text)
            self._finish_executor(ctx.agent, run.stop_answer)
            return run.stop_answer
        d = self._model_end(run, key, output=text)
        if d is not None and d.stop:
            return self._stop(run, ctx, d)
        final = self._final_text(text, ctx)
        if final is None:
            return None
        fd = self._final(run, ctx, final)
        if fd.stop:
            return self._stop(run, ctx, fd)
        return None

    @staticmethod
    def _native(ctx: Any) -> bool:
        """Whether this agent talks to its model with native tool calls (OpenAI-style messages with
        ``tool_calls`` and ``tool`` roles) rather than CrewAI's text (ReAct) protocol."""
        executor = getattr(ctx, "executor", None) or getattr(getattr(ctx, "agent", None), "agent_executor", None)
        return bool(getattr(getattr(executor, "state", None), "use_native_tools", False))

    @staticmethod
    def _final_text(text: str | None, ctx: Any) -> str | None:
        """The task's final answer in this model response, if it is one: with native tool calling
        any text answer is final; in CrewAI's text protocol only a ``Final Answer:``."""
        if not text:
            return None
        if "Final Answer:" in text:
            return text.split("Final Answer:")[-1].strip()
        executor = getattr(ctx, "executor", None) or getattr(getattr(ctx, "agent", None), "agent_executor", None)
        native = bool(getattr(getattr(executor, "state", None), "use_native_tools", False))
        return text if native else None

    def _final(self, run: CrewRun, ctx: Any, text: str) -> Decision:
        session = run.session
        assert session is not None
        task = getattr(ctx, "task", None)
        run.final_emitted.add(id(task))
        d = session.final_answer(text, agent=self._role(getattr(ctx, "agent", None)),
                                 node=getattr(task, "name", None))
        bad = [v for v in d.verdicts if not v.ok and (v.block or Severity(v.severity).rank >= Severity.ERROR.rank)]
        if bad and task is not None:
            run.task_flagged[str(getattr(task, "id", ""))] = True
            iv = d.intervention
            text = iv.text if iv is not None and iv.kind != InterventionKind.WARN else (bad[0].hint or bad[0].message)
            run.task_feedback[id(task)] = text
            # CrewAI reads a task's guardrails after its agent finished, so attaching one now (only
            # when it is needed: guardrails cost CrewAI several ms per task) makes it retry the task
            if self.adapter.task_retries > 0 and not any(t is task for t, _ in run.guarded_tasks):
                self._attach_guardrail(run, task)
        return d

    def _model_end(self, run: CrewRun, key: tuple[int, int], *, output: str | None = None,
                   tool_calls: list[dict[str, Any]] | None = None, error: str | None = None) -> Decision | None:
        pending = run.models.pop(key, None)
        if pending is None or run.session is None:
            return None
        usage = _delta(pending.usage_before, _usage_of(pending.llm)) if pending.llm is not None else None
        return run.session.model_end(None if tool_calls else output, tool_calls=tool_calls, usage=usage,
                                     model=pending.model, error=error, agent=pending.agent)

    def _drop_hints(self, run: CrewRun, agent_key: int) -> None:
        """Take this adapter's hint messages out of the executor's history again (the model call
        they were meant for has happened), so they are never kept in the crew's messages."""
        entry = run.hints.pop(agent_key, None)
        if entry is not None:
            messages, hints = entry
            _remove_by_identity(messages, hints)

    # ------------------------------------------------------------------ tool calls
    def pre_tool_call(self, ctx: Any) -> Any:
        run = self._active(ctx)
        if run is None:
            return None
        session = run.session
        assert session is not None
        agent = ctx.agent
        self._drop_hints(run, id(agent))
        key = self._key(ctx)
        calls = self._tool_calls_of(getattr(agent, "agent_executor", None))
        if key in run.models:
            self._model_end(run, key, tool_calls=calls or [{"name": ctx.tool_name, "arguments": ctx.tool_input}])
        call_id = self._call_id(calls, ctx.tool_name, ctx.tool_input) or f"crewai_call_{next(self._ids)}"
        pending = _PendingTool(call_id=call_id, name=ctx.tool_name)
        run.tools[id(ctx.tool_input)] = pending
        if run.stop_answer is not None:
            pending.mode, pending.message = "stopped", f"Not run: the run was stopped ({run.stop_answer})."
            return False
        d = session.tool_start(ctx.tool_name, dict(ctx.tool_input), tool_call_id=call_id,
                               agent=self._role(agent))
        if d.stop:
            pending.mode, pending.message = "stopped", f"Not run: the run was stopped ({d.final_answer})."
            self._stop(run, ctx, d)
            return False
        if d.cached_result is not None:
            pending.mode, pending.message = "cached", d.cached_result
            return False
        if d.block:
            pending.mode = "blocked"
            pending.message = f"Blocked by immunity: {d.message or 'this call is not allowed'}"
            self._flag_task(run, ctx)
            return False
        if d.ask_human:
            answer = self.adapter.ask_human(d.ask_human, ctx)
            approved = (answer or "").strip().lower() in {"y", "yes", "ok", "approve", "approved", "allow"}
            session.emit(Event(kind=EventKind.CUSTOM, tool=ctx.tool_name, tool_call_id=call_id,
                               data={"ask_human": d.ask_human, "answer": answer, "approved": approved}))
            if not approved:
                pending.mode = "blocked"
                pending.message = f"Blocked: a human did not approve this call ({d.ask_human}). Answer: {answer!r}"
                session.tool_end(ctx.tool_name, error="not approved by a human", tool_call_id=call_id)
                return False
        if d.rewrite is not None:
            ctx.tool_input.clear()  # in place: CrewAI calls the tool with this very dict
            ctx.tool_input.update(d.rewrite)
        return None

    @staticmethod
    def _tool_calls_of(executor: Any) -> list[dict[str, Any]]:
        messages = getattr(executor, "messages", None) or []
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "assistant":
                out = []
                for tc in m.get("tool_calls") or []:
                    fn = tc.get("function", {}) if isinstance(tc, dict) else {}
                    out.append({"id": tc.get("id") if isinstance(tc, dict) else None, "name": fn.get("name"),
                                "arguments": fn.get("arguments")})
                return out
        return []

    @staticmethod
    def _call_id(calls: list[dict[str, Any]], name: str, arguments: dict[str, Any]) -> str | None:
        """The model's own id of this tool call (from the assistant message CrewAI just recorded)."""
        matching = []
        for tc in calls:
            if tc.get("name") != name:
                continue
            args = tc.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except ValueError:
                    continue
            if args == arguments and tc.get("id"):
                matching.append(tc["id"])
        return matching[0] if len(matching) == 1 else None

    def post_tool_call(self, ctx: Any) -> Any:
        run = self._find(ctx)
        if run is None or run.session is None:
            return None
        pending = run.tools.pop(id(ctx.tool_input), None)
        if pending is None:
            return None
        if pending.mode != "run":
            return pending.message  # the model receives this as the tool's result
        result = ctx.tool_result
        raw = ctx.raw_tool_result
        failed = isinstance(result, str) and result.startswith(TOOL_ERROR_PREFIX) and raw == result
        d = run.session.tool_end(ctx.tool_name, None if failed else result,
                                 error=result[len(TOOL_ERROR_PREFIX):].strip() if failed else None,
                                 tool_call_id=pending.call_id, arguments=dict(ctx.tool_input),
                                 agent=self._role(ctx.agent))
        if any(not v.ok and Severity(v.severity).rank >= Severity.ERROR.rank for v in d.verdicts):
            self._flag_task(run, ctx)
        rec = d.recovery
        requested = int(run.session.run.metadata.get("rollbacks_requested", 0))
        if rec is not None and rec.kind == RecoveryKind.ROLLBACK and requested < self.adapter.options["max_rollbacks"]:
            run.session.run.metadata["rollbacks_requested"] = requested + 1
            if self._rollback_task(run, ctx, rec):
                return None
            run.rollback = rec
            self._flag_task(run, ctx)
            reason = rec.reason or "rolling back to the last verified checkpoint"
            run.session.request_stop(f"rollback: {reason}")
            self._stop(run, ctx, Decision(stop=True, final_answer=f"Rolled back by immunity: {reason}"))
            return None
        if d.stop:
            self._stop(run, ctx, d)
        return None

    def _rollback_task(self, run: CrewRun, ctx: Any, rec: Recovery) -> bool:
        """Roll back inside the kickoff: end the task's attempt now (no further model call) and
        have CrewAI re-run the task from its start through its guardrail retry, where
        :class:`TaskGuard` undoes the attempt's steps. ``False`` when that cannot be done (the
        option is ``"stop"``, an earlier task failed its checks, the task's retries are spent): the
        caller stops the crew for :meth:`CrewAIAdapter.resume`."""
        task = getattr(ctx, "task", None)
        start = run.task_starts.get(id(task)) if task is not None else None
        if start is None or not start[0].verified or not isinstance(getattr(task, "_guardrails", None), list):
            return False
        if run.task_retries.get(id(task), 0) >= int(getattr(task, "guardrail_max_retries", 3) or 0):
            return False
        cp, context = start
        asked = next((c for c in run.session.checkpoints if c.checkpoint_id == rec.checkpoint_id), None) \
            if rec.checkpoint_id and run.session is not None else None
        if asked is not None and asked.step < cp.step:  # the policy wants to go back before this task
            return False
        reason = rec.reason or "a step failed its checks"
        feedback = f"rolled back by immunity ({reason}); the previous attempt's steps were undone: do the task " \
                   f"again from its start."
        if context:  # a retry's prompt carries this feedback instead of the task's context: keep the context
            feedback += f"\n\nContext from the earlier tasks:\n{context}"
        run.task_rollbacks[id(task)] = (cp, feedback)
        self._flag_task(run, ctx)
        if not any(t is task for t, _ in run.guarded_tasks):
            self._attach_guardrail(run, task)
        self._finish_executor(getattr(ctx, "agent", None), ROLLED_BACK_ANSWER)
        return True

    def _flag_task(self, run: CrewRun, ctx: Any) -> None:
        task = getattr(ctx, "task", None)
        if task is not None:
            run.task_flagged[str(getattr(task, "id", ""))] = True

    # ------------------------------------------------------------------ stop
    def _stop(self, run: CrewRun, ctx: Any, d: Decision) -> str:
        """End the run cleanly: the running agent finishes with the stop answer (no further model
        call on this task), later tasks of the crew answer it too, and the crew's output is it."""
        answer = d.final_answer or (run.session.stop_requested if run.session else None) or "Stopped by immunity."
        answer = str(answer)
        if run.stop_answer is None:
            run.stop_answer = answer
            if run.session is not None and not run.session.stop_requested:
                run.session.request_stop(answer)
        self._flag_task(run, ctx)
        self._finish_executor(getattr(ctx, "agent", None), run.stop_answer)
        return run.stop_answer

    @staticmethod
    def _finish_executor(agent: Any, answer: str) -> None:
        """Mark the agent's executor finished with ``answer``: CrewAI's executor checks
        ``state.is_finished`` before its next model call and returns ``state.current_answer``."""
        executor = getattr(agent, "agent_executor", None)
        state = getattr(executor, "state", None)
        if state is None or not hasattr(state, "is_finished"):
            return
        from crewai.agents.parser import AgentFinish

        state.current_answer = AgentFinish(thought="Stopped by immunity", output=answer, text=answer)
        state.is_finished = True

    # ------------------------------------------------------------------ task retries (guardrail)
    def _attach_guardrail(self, run: CrewRun, task: Any) -> None:
        guardrails = getattr(task, "_guardrails", None)
        if not isinstance(guardrails, list):
            return
        check = TaskGuard(self, run, task)

        def immunity_task_guard(output: Any) -> tuple[bool, Any]:
            # a plain function: CrewAI reads a guardrail's source for its events
            return check(output)

        guard = immunity_task_guard
        # first, so the task's own guardrails never see a rolled-back attempt's placeholder answer
        # and do check the answer of the attempt immunity's retry produces (CrewAI re-checks a
        # retried answer only with the guardrail that asked for the retry and those after it).
        # CrewAI keeps retry counts by guardrail position: shift them with the guardrails.
        guardrails.insert(0, guard)
        _shift_counts(task, 0, +1)
        run.guarded_tasks.append((task, guard))

    def _release_guardrails(self, run: CrewRun, task: Any = None) -> None:
        keep = []
        for t, guard in run.guarded_tasks:
            if task is not None and t is not task:
                keep.append((t, guard))
                continue
            lst = getattr(t, "_guardrails", None)
            if isinstance(lst, list):
                at = next((i for i, g in enumerate(lst) if g is guard), None)
                if at is not None:
                    del lst[at]
                    _shift_counts(t, at, -1)
        run.guarded_tasks = keep

    # ------------------------------------------------------------------ checkpoints (event bus)
    def checkpoint_completed(self, source: Any, event: Any) -> None:
        try:
            run = self._run_for_checkpoint(event)
            if run is None or run.session is None:
                return
            task_id = getattr(event, "task_id", None)
            # verified: the task had finished and passed its checks (decided when it finished, so a
            # checkpoint written late on CrewAI's worker thread is judged by its own task)
            verified = run.task_verified.get(str(task_id)) is True
            run.session.checkpoint({"location": event.location, "checkpoint_id": event.checkpoint_id,
                                    "provider": event.provider, "trigger": event.trigger,
                                    "task_id": task_id, "task_name": getattr(event, "task_name", None),
                                    "crew_id": run.crew_id}, verified=verified)
        except Exception as exc:  # the bus runs this on a worker thread: never raise there
            log.warning("immunity-crewai could not record a checkpoint: %s", exc)

    def _run_for_checkpoint(self, event: Any) -> CrewRun | None:
        """The run a checkpoint belongs to, by its task. CrewAI writes checkpoints on its event
        bus's worker threads, so one may arrive after its kickoff returned: recently finished runs
        are kept for that."""
        task_id = getattr(event, "task_id", None)
        if not task_id:
            return None
        with self._lock:
            runs = list(self.runs.values()) + list(reversed(self.finished))
        for run in runs:
            crew = run.crew_ref()
            if crew is not None and any(str(t.id) == str(task_id) for t in crew.tasks):
                return run
        return None


class TaskGuard:
    """A CrewAI task guardrail that fails when immunity's checks failed the task's answer, so
    CrewAI re-runs the task with the reason as feedback (its own retry mechanism). It passes
    once this adapter's retry budget (or the task's ``guardrail_max_retries``) is spent, so it
    never makes CrewAI raise."""

    def __init__(self, bridge: Bridge, run: CrewRun, task: Any):
        self.bridge, self.run, self.task = bridge, run, task
        self.__name__ = "immunity_task_guard"

    def __call__(self, output: Any) -> tuple[bool, Any]:
        try:
            return self._check(output)
        except Exception as exc:
            session = self.run.session
            try:
                if session is not None:
                    session.record_error(PLUGIN, "task_guardrail", exc)
            except PluginError:
                raise
            return True, self._passthrough(output)

    def _check(self, output: Any) -> tuple[bool, Any]:
        run, task = self.run, self.task
        rolled_back = run.task_rollbacks.pop(id(task), None)
        if rolled_back is not None and run.stop_answer is None:
            cp, again = rolled_back
            run.task_feedback.pop(id(task), None)
            run.task_retries[id(task)] = run.task_retries.get(id(task), 0) + 1
            run.final_emitted.discard(id(task))
            run.task_flagged[str(getattr(task, "id", ""))] = False
            if run.session is not None:
                # compensate the attempt's side effects and record the rollback carried out
                run.session.rollback(cp)
            return False, again
        feedback = run.task_feedback.pop(id(task), None)
        if feedback is None or run.stop_answer is not None:
            return True, self._passthrough(output)
        used = run.task_retries.get(id(task), 0)
        limit = min(int(self.bridge.adapter.task_retries), int(getattr(task, "guardrail_max_retries", 3) or 0))
        if used >= limit:
            return True, self._passthrough(output)
        run.task_retries[id(task)] = used + 1
        run.final_emitted.discard(id(task))
        if run.session is not None:
            run.session.runtime.save("recoveries", Recovery(
                kind=RecoveryKind.RETRY, hint=feedback, reason="task answer failed its checks",
                run_id=run.session.run.run_id, step=run.session.state.n_steps, max_attempts=limit))
        return False, feedback

    @staticmethod
    def _passthrough(output: Any) -> Any:
        # the same value CrewAI would keep without a guardrail: a structured output as is, else the
        # raw text (which CrewAI then converts exactly as it does without guardrails)
        if getattr(output, "pydantic", None) is not None or getattr(output, "json_dict", None) is not None:
            return output
        return getattr(output, "raw", output)
