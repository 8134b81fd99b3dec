"""The runtime: the one place that runs observe -> verify -> intervene for each event and recover
on errors. Adapters call a :class:`RunSession`; users call :func:`protect` or use :class:`Runtime`.

Fail-open: an exception raised by a plugin is logged, recorded in the store (``plugin_errors``)
and on the run (``run.metadata["plugin_errors"]``), and the agent goes on. With
``fail_closed=True`` it is re-raised as :class:`~immunity.errors.PluginError` instead.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from immunity.config import Config
from immunity.domain import ActionMapping, count_unmapped, heuristic_mapping
from immunity.errors import ImmunityError, PluginError
from immunity.hookcall import PER_EVENT_HOOKS, POLICY, CallPolicy
from immunity.models import (
    ActionType,
    Checkpoint,
    Event,
    EventKind,
    Intervention,
    InterventionKind,
    Outcome,
    Recovery,
    RecoveryKind,
    Run,
    Severity,
    Step,
    Verdict,
    now,
)
from immunity.plugins import PluginManager, active_plugins_filter, build, get_plugin_manager
from immunity.state import RunState

log = logging.getLogger("immunity")

#: How many times a plugin may overrun the step budget before the runtime skips it for good
#: (the default of ``Config.max_overruns``).
MAX_OVERRUNS = 3
#: Text kept per field when events are stored (raw content is bounded, never unbounded).
STORE_TEXT_LIMIT = 8000


@dataclass
class Decision:
    """What the runtime asks the adapter to do after an event.

    - ``inject``: texts to add to *this* model call (on ``model_start``), never saved to history.
    - ``block`` / ``message``: do not run the pending tool call; tell the model ``message``.
    - ``rewrite``: run the pending tool call with these arguments instead.
    - ``ask_human``: a question for a human before going on (where the framework supports it).
    - ``stop`` / ``final_answer``: end the run cleanly with this answer.
    - ``cached_result``: this side-effecting tool call already ran in this run (the same call id again
      after a retry or a resume, or the same arguments again after a rollback): do not run it again,
      return this result instead.
    - ``recovery``: a retry / rollback / fallback / skip / abort the adapter should carry out.
    """

    inject: list[str] = field(default_factory=list)
    block: bool = False
    message: str | None = None
    rewrite: dict[str, Any] | None = None
    ask_human: str | None = None
    stop: bool = False
    final_answer: str | None = None
    cached_result: str | None = None
    recovery: Recovery | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    intervention: Intervention | None = None

    @property
    def ok(self) -> bool:
        return not (self.block or self.stop or self.rewrite or self.ask_human)


def _clip(text: Any, limit: int = STORE_TEXT_LIMIT) -> Any:
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


def idempotency_key(run_id: str, tool: str | None, arguments: Any) -> str:
    """The idempotency key of a side-effecting call: the run, the tool and its exact arguments.

    32 hex digits: 8 of the run (:func:`_run_key_prefix`), then 24 of the call, so a run's keys
    sit together in the store's index on keys (a key that is all hash lands on a random page of
    that index, and every commit rewrites one page per key). Keys stored before had 32 digits of
    the call alone; :meth:`Runtime._load_idempotency` reads them back in this form too."""
    import hashlib
    import json

    blob = json.dumps([run_id, tool, arguments], sort_keys=True, default=str)
    return _run_key_prefix(run_id) + hashlib.sha256(blob.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1024)
def _run_key_prefix(run_id: str) -> str:
    import hashlib

    return hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


class RunSession:
    """One run as the runtime sees it. Thread-safe: adapters may call it from worker threads."""

    def __init__(self, runtime: Runtime, run: Run):
        self.runtime = runtime
        self.run = run
        self.state = RunState(run_id=run.run_id, task=run.task, domain=run.domain)
        self._lock = threading.RLock()
        self._pending: dict[str, Step] = {}
        self._policy = HookPolicy(runtime, self)
        if runtime.skipped:  # plugins this runtime stopped calling before the run started
            run.metadata["skipped_plugins"] = dict(runtime.skipped)
        self.checkpoints: list[Checkpoint] = []
        self.ended = False
        self.timings: deque[float] = deque(maxlen=100_000)  # the latest events' overhead, bounded

    # ------------------------------------------------------------------ convenience for adapters
    def model_start(self, messages: list[dict[str, Any]] | None = None, model: str | None = None, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.MODEL_START, messages=messages, model=model, **kw))

    def model_end(self, output: str | None = None, *, tool_calls: list[dict[str, Any]] | None = None,
                  usage: dict[str, int] | None = None, model: str | None = None, error: str | None = None,
                  **kw: Any) -> Decision:
        data = kw.pop("data", {}) or {}
        if tool_calls:
            data["tool_calls"] = tool_calls
        return self.emit(Event(kind=EventKind.MODEL_END, output=output, usage=usage, model=model, error=error,
                               data=data, **kw))

    def tool_start(self, tool: str, arguments: Any = None, *, tool_call_id: str | None = None, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.TOOL_START, tool=tool, arguments=arguments, tool_call_id=tool_call_id,
                               **kw))

    def tool_end(self, tool: str, result: Any = None, *, error: str | None = None, return_code: int | None = None,
                 tool_call_id: str | None = None, arguments: Any = None, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.TOOL_END, tool=tool, result=None if result is None else str(result),
                               error=error, return_code=return_code, tool_call_id=tool_call_id,
                               arguments=arguments, **kw))

    def message(self, text: str, *, agent: str | None = None, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.MESSAGE, output=text, agent=agent, **kw))

    def handoff(self, agent: str | None, target: str, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.HANDOFF, agent=agent, target=target, **kw))

    def final_answer(self, text: str | None, **kw: Any) -> Decision:
        return self.emit(Event(kind=EventKind.FINAL_ANSWER, output=text, **kw))

    def take_hints(self) -> list[str]:
        """Pending hints for the next model call (and forget them: they are delivered once)."""
        with self._lock:
            hints, self.state.hints_pending = self.state.hints_pending, []
        return hints

    def add_hint(self, text: str, *, source: str = "user") -> None:
        """Queue a hint for the next model call by hand."""
        iv = Intervention(kind=InterventionKind.HINT, text=text, source=source, run_id=self.run.run_id,
                          step=self.state.n_steps)
        with self._lock:
            self.state.hints_pending.append(text)
        self.runtime._save("interventions", iv)

    @property
    def pending_hints(self) -> tuple[str, ...]:
        """The hints queued for the next model call (read-only)."""
        return tuple(self.state.hints_pending)

    def discard_hint(self, text: str) -> bool:
        """Withdraw a queued hint that is no longer true (e.g. a retry already succeeded)."""
        with self._lock:
            if text in self.state.hints_pending:
                self.state.hints_pending.remove(text)
                return True
        return False

    def pause(self, reason: str = "", *, status: str = "paused") -> None:
        """Mark the run paused (waiting for a human, an interrupt, a rollback, a resume) in the
        store; ``status`` names the kind of pause (``"interrupted"``, ``"rolling_back"``...)."""
        self.run.status = status
        if reason:
            self.run.metadata["paused_because"] = reason
        self.runtime._save("runs", self.run)

    def request_stop(self, reason: str) -> None:
        self.state.stop_requested = reason

    @property
    def stop_requested(self) -> str | None:
        return self.state.stop_requested

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, ref: dict[str, Any], *, verified: bool | None = None) -> Checkpoint:
        """Record a framework checkpoint. ``verified`` defaults to "the last step passed its checks"."""
        if verified is None:
            last = self.state.last_step
            verified = last is None or (not last.failed and not last.data.get("flagged"))
        cp = Checkpoint(run_id=self.run.run_id, step=self.state.n_steps, verified=verified, ref=ref)
        with self._lock:
            self.checkpoints.append(cp)
        self.runtime._save("checkpoints", cp)
        return cp

    def rollback(self, checkpoint: Checkpoint | None = None, *, record: bool = True) -> list[str]:
        """Undo what happened after ``checkpoint`` (default: the last verified one) as far as
        immunity can: call the compensating action registered for every side-effecting step after
        it, newest first, and forget those steps' idempotency keys so a retry may run them again.
        Steps with no compensation keep their keys, so a resume never repeats them. A compensation
        that raises is recorded and the others still run. Returns the tools compensated. The
        adapter restores the framework's own state."""
        cp = checkpoint or self.last_verified_checkpoint()
        since = cp.step if cp is not None else 0
        self.state.extras["rolled_back"] = True
        done: list[str] = []
        for step in reversed(self.state.steps[since:]):
            if not step.side_effect or step.failed or step.data.get("compensated") or step.data.get("replayed"):
                continue
            fn = self.runtime.compensations.get(step.tool or "")
            if fn is None:
                continue
            try:
                fn(**(step.arguments or {}))
            except Exception as exc:
                self.record_error(f"compensation:{step.tool}", "rollback", exc)
                continue
            step.data["compensated"] = True
            for key in (step.data.get("idempotency_key"), step.data.get("call_key")):
                if key:
                    self.runtime.forget_result(key)
            self.runtime._save("steps", step)
            done.append(step.tool or "")
        if record:  # an adapter carrying out a decision's own ROLLBACK passes record=False
            rec = Recovery(kind=RecoveryKind.ROLLBACK, checkpoint_id=cp.checkpoint_id if cp else None,
                           run_id=self.run.run_id, step=self.state.n_steps,
                           reason=f"rolled back to step {since}; compensated {done or 'nothing'}")
            self.runtime._save("recoveries", rec)
        return done

    def last_verified_checkpoint(self, before_step: int | None = None) -> Checkpoint | None:
        for cp in reversed(self.checkpoints):
            if cp.verified and (before_step is None or cp.step <= before_step):
                return cp
        return None

    # ------------------------------------------------------------------ the pipeline
    def emit(self, event: Event) -> Decision:
        """Run one event through observe -> verify -> intervene (-> recover). Never raises unless
        the runtime is fail-closed; a malformed event is recorded and ignored."""
        t0 = time.perf_counter()
        token = POLICY.set(self._policy)  # once per event, not once per hook call
        try:
            decision = self._emit(event)
            if decision.inject or decision.message:  # the last net: no secret reaches a prompt
                red = self.runtime.redactor
                decision.inject = [red.text(h) for h in decision.inject]
                decision.message = red.text(decision.message) if decision.message else decision.message
            return decision
        except ImmunityError:
            raise
        except Exception as exc:  # an error in immunity itself: fail open
            self.record_error("immunity.runtime", "emit", exc)
            return Decision()
        finally:
            POLICY.reset(token)
            self.timings.append(time.perf_counter() - t0)

    def _emit(self, event: Event) -> Decision:
        rt = self.runtime
        if not isinstance(event, Event):
            raise TypeError(f"emit() takes an immunity Event, not {type(event).__name__}")
        with self._lock:
            event.run_id = self.run.run_id
            run, state = self.run, self.state
            decision = Decision()
            step: Step | None = None
            relabelled: Step | None = None

            if event.kind == EventKind.MODEL_END:
                tokens = int((event.usage or {}).get("total_tokens") or sum(
                    int(v) for k, v in (event.usage or {}).items() if k in ("input_tokens", "output_tokens")))
                cost = event.cost or 0.0
                state.add_usage(tokens, cost)
                run.tokens, run.cost = state.tokens, state.cost
                if event.output and not event.data.get("tool_calls"):
                    step = self._new_step(event, tool=None, text=event.output)
                    step.data["from_model"] = True
            elif event.kind == EventKind.TOOL_START:
                pending = self._new_step(event, tool=event.tool, arguments=event.arguments)
                self._pending[event.tool_call_id or f"tool:{event.tool}"] = pending
                if pending.side_effect:
                    # the same tool call again (a node retried, a run resumed) never runs twice; after
                    # a rollback the same tool with the same arguments does not either. A deliberate
                    # new call with the same arguments in the normal course of a run does run.
                    key = idempotency_key(run.run_id, event.tool, event.arguments)
                    pending.data["idempotency_key"] = key
                    call_key = idempotency_key(run.run_id, event.tool, {"call_id": event.tool_call_id}) \
                        if event.tool_call_id else None
                    pending.data["call_key"] = call_key
                    done = rt.idempotent_result(call_key, run.run_id) if call_key else None
                    if done is None and state.extras.get("rolled_back"):
                        done = rt.idempotent_result(key, run.run_id)
                    if done is not None:
                        decision.cached_result = done
                        self._pending.pop(event.tool_call_id or f"tool:{event.tool}", None)
                        pending.result, pending.data["replayed"] = done, True
                        state.add_step(pending)
                        run.steps = state.n_steps
                        rt._save("events", event)
                        rt._save("steps", pending)
                        self._broadcast("immunity_observe", event=event, run=run, state=state, session=self)
                        self._broadcast("immunity_observe_step", step=pending, run=run, state=state, session=self)
                        return decision
            elif event.kind == EventKind.TOOL_END:
                key = event.tool_call_id or f"tool:{event.tool}"
                step = self._pending.pop(key, None)
                if step is None:
                    step = self._new_step(event, tool=event.tool, arguments=event.arguments)
                step.result = _clip(event.result, 4000)
                step.error = _clip(event.error, 2000)
                step.return_code = event.return_code
                judge = getattr(rt.domain(run.domain), "judge_result", None)
                if judge is not None and step.action_type == ActionType.VERIFY and not step.failed:
                    try:
                        if judge(step) is False:  # e.g. a test run that printed "2 failed" with exit code 0
                            step.data["check_failed"] = True
                    except Exception as exc:
                        self.record_error(f"domain:{run.domain}", "judge_result", exc)
                if step.side_effect and not step.failed:
                    key = step.data.get("idempotency_key") or idempotency_key(run.run_id, event.tool,
                                                                             step.arguments or event.arguments)
                    rt.remember_result(key, run.run_id, event.tool or "", event.result or "")
                    if step.data.get("call_key"):
                        rt.remember_result(step.data["call_key"], run.run_id, event.tool or "", event.result or "")
            elif event.kind in (EventKind.MESSAGE, EventKind.FINAL_ANSWER):
                final = event.kind == EventKind.FINAL_ANSWER
                last = state.last_step
                if final and last is not None and last.tool is None and last.data.get("from_model") and \
                        (last.text or "").strip() == _clip(event.output or "", 4000).strip():
                    # the model's last message *is* the final answer: relabel that step, don't add one
                    state.relabel_last(ActionType.DONE)
                    last.data["final"] = True
                    rt._save("steps", last)
                    relabelled = last
                else:
                    step = self._new_step(event, tool=None, text=event.output, final=final)
                if final:
                    run.final_answer = _clip(event.output, 4000)
            elif event.kind == EventKind.HANDOFF:
                relabelled = self._handoff_tool_step(event)
                if relabelled is None:
                    step = self._new_step(event, tool=None, arguments=event.arguments,
                                          text=f"handoff to {event.target}")
                    step.action_type = ActionType.DELEGATE
                    step.data["target"] = event.target
                else:  # the handoff tool's step is the handoff: one DELEGATE step, not two
                    rt._save("steps", relabelled)
            if step is not None:
                state.add_step(step)
                run.steps = state.n_steps

            rt._save("events", event)
            self._broadcast("immunity_observe", event=event, run=run, state=state, session=self)
            if step is not None:
                rt._save("steps", step)
                self._broadcast("immunity_observe_step", step=step, run=run, state=state, session=self)

            if event.kind in (EventKind.MODEL_START, EventKind.TOOL_START, EventKind.TOOL_END, EventKind.MODEL_END,
                              EventKind.FINAL_ANSWER, EventKind.MESSAGE, EventKind.HANDOFF):
                target = self._pending.get(event.tool_call_id or f"tool:{event.tool}") \
                    if event.kind == EventKind.TOOL_START else (step or relabelled)
                decision.verdicts = self._verify(event, target)

            failed = [v for v in decision.verdicts if not v.ok]
            failed.sort(key=lambda v: (not v.block, -Severity(v.severity).rank))
            if failed and step is not None:
                step.data["flagged"] = [v.error_class for v in failed]
            observe_only = rt.config.observe_only
            if failed and observe_only:
                for v in failed:
                    v.block = False
            if failed and not observe_only:
                # the hook guard drops (and reports) anything that is not an Intervention
                iv = self._decide("immunity_intervene", verdicts=failed, event=event, run=run, state=state, session=self)
                if iv is not None:
                    self._apply(iv, event, decision)
            if event.kind == EventKind.TOOL_START and any(v.block for v in failed) and not decision.block:
                # a blocking verdict blocks even if no policy turned it into an intervention
                v = next(v for v in failed if v.block)
                decision.block, decision.message = True, v.hint or v.message
            if decision.block and event.kind == EventKind.TOOL_START:
                blocked = self._pending.pop(event.tool_call_id or f"tool:{event.tool}", None)
                if blocked is not None:
                    blocked.error = f"blocked by immunity: {decision.message}"
                    blocked.data["blocked"] = True
                    state.add_step(blocked)
                    run.steps = state.n_steps
                    rt._save("steps", blocked)

            if not observe_only and (event.error or event.failed or decision.block or
                                     (failed and event.kind == EventKind.TOOL_END)):
                rec = self._decide("immunity_recover", event=event, verdicts=failed, run=run, state=state, session=self)
                if rec is not None:
                    rec.run_id, rec.step = run.run_id, state.n_steps
                    decision.recovery = rec
                    rt._save("recoveries", rec)
                    if rec.kind != RecoveryKind.ABORT and rec.hint and rec.hint not in state.hints_pending and \
                            not (decision.intervention and decision.intervention.kind == InterventionKind.HINT):
                        state.hints_pending.append(rec.hint)
                    if rec.kind == RecoveryKind.ABORT:
                        state.stop_requested = state.stop_requested or rec.reason or "aborted by immunity"

            if event.kind == EventKind.MODEL_START and state.hints_pending:
                decision.inject = self.take_hints()
            if state.stop_requested and not decision.stop:
                decision.stop = True
                decision.final_answer = decision.final_answer or state.stop_requested
            if event.kind == EventKind.RUN_END:
                self._end(event)
            return decision

    def _handoff_tool_step(self, event: Event) -> Step | None:
        """The step of the tool call that carried out this handoff (a handoff tool, e.g. one
        returning LangGraph's ``Command(goto=...)`` or LlamaIndex's ``handoff``), made the handoff's
        DELEGATE step with its target; ``None`` when the handoff had no such call. The call is the
        one with the event's ``tool_call_id``, or else the latest DELEGATE tool call of the same agent
        among the tool calls just before (no model message in between) that names no target yet."""
        steps = self.state.steps
        for back in range(1, min(len(steps) - steps.offset, 8) + 1):
            s = steps[-back]
            if s.tool is None or s.data.get("target") or (event.agent and s.agent and s.agent != event.agent):
                return None
            if event.tool_call_id and s.data.get("tool_call_id") != event.tool_call_id:
                continue
            if event.tool_call_id or (s.action_type == ActionType.DELEGATE and not s.failed):
                break
        else:
            return None
        if s.action_type != ActionType.DELEGATE:
            self.state.action_counts[s.action_type.value] -= 1
            self.state.action_counts[ActionType.DELEGATE.value] += 1
            s.action_type = ActionType.DELEGATE
        s.data["target"] = event.target
        s.text = f"handoff to {event.target}"
        return s

    def _new_step(self, event: Event, *, tool: str | None, arguments: dict[str, Any] | None = None,
                  text: str | None = None, final: bool = False) -> Step:
        rt = self.runtime
        if final:
            mapping = ActionMapping(ActionType.DONE, 1.0, mapped_by="final_answer")
        else:
            mapping = self._decide("immunity_map_action", tool=tool, arguments=arguments, text=text, run=self.run,
                                   domain=rt.domain(self.run.domain))
            if not isinstance(mapping, ActionMapping):
                mapping = heuristic_mapping(tool, arguments, text)
        if mapping.mapped_by == "heuristic" and tool:
            count_unmapped(self.run.domain, tool)
        step = Step(run_id=self.run.run_id, index=self.state.n_steps, action_type=mapping.action_type,
                    confidence=mapping.confidence, tool=tool, arguments=arguments, text=_clip(text, 4000),
                    agent=event.agent, side_effect=mapping.side_effect, tokens=0, ts=event.ts)
        step.data["mapped_by"] = mapping.mapped_by
        if mapping.needs_verification:
            step.data["needs_verification"] = True
        if mapping.destructive:
            step.data["destructive"] = True
        if event.tool_call_id:
            step.data["tool_call_id"] = event.tool_call_id
        return step

    def _verify(self, event: Event, step: Step | None) -> list[Verdict]:
        verdicts: list[Verdict] = []
        # each result is a list of Verdicts already checked and attributed by the hook guard
        for res in self._broadcast("immunity_verify", event=event, step=step, run=self.run, state=self.state,
                                   session=self):
            for v in res:
                v.run_id = self.run.run_id
                v.step = step.index if step is not None else self.state.n_steps
                verdicts.append(v)
                if not v.ok:
                    self.runtime._save("verdicts", v)
        return verdicts

    def _apply(self, iv: Intervention, event: Event, decision: Decision) -> None:
        state = self.state
        iv.run_id, iv.step = self.run.run_id, state.n_steps
        decision.intervention = iv
        if iv.kind == InterventionKind.HINT:
            state.hints_pending.append(iv.text)
            state.last_hint = iv.text
        elif iv.kind == InterventionKind.BLOCK:
            if event.kind == EventKind.TOOL_START:
                decision.block, decision.message = True, iv.text
            else:  # nothing left to block: tell the model instead
                state.hints_pending.append(iv.text)
        elif iv.kind == InterventionKind.REWRITE:
            if event.kind == EventKind.TOOL_START and iv.arguments is not None:
                decision.rewrite = iv.arguments
        elif iv.kind == InterventionKind.ASK_HUMAN:
            decision.ask_human = iv.text
        elif iv.kind == InterventionKind.STOP:
            state.stop_requested = iv.text or "stopped by immunity"
            decision.stop, decision.final_answer = True, state.stop_requested
        if iv.kind != InterventionKind.WARN:
            state.interventions += 1
            state.last_intervention_step = state.n_steps
        iv.delivered = iv.kind != InterventionKind.WARN
        self.runtime._save("interventions", iv)

    def _end(self, event: Event) -> None:
        run = self.run
        if self.ended:
            return
        self.ended = True
        run.ended_at = event.ts
        if event.outcome is not None:
            run.outcome = event.outcome
        run.status = "stopped" if self.state.stop_requested else ("error" if event.error else "finished")
        if event.output and not run.final_answer:
            run.final_answer = _clip(event.output, 4000)
        run.metadata["signals"] = self.state.summary()
        self.runtime._save("runs", run)
        self.runtime._run_ended(self)

    def end(self, outcome: Outcome | str | None = None, *, output: str | None = None, error: str | None = None) -> None:
        """End the run (adapters call this once; calling it again does nothing)."""
        if self.ended:
            return
        self.emit(Event(kind=EventKind.RUN_END, outcome=None if outcome is None else Outcome.parse(outcome),
                        output=output, error=error))

    def reopen(self) -> None:
        """Continue a run that ended (a resume after a stop, an interrupt or an approval)."""
        with self._lock:
            self.ended = False
            self.run.status = "running"
            self.state.stop_requested = None
        self.runtime._save("runs", self.run)

    def set_outcome(self, outcome: Outcome | str) -> None:
        """Record the run's outcome when it becomes known (possibly after the run ended)."""
        self.run.outcome = Outcome.parse(outcome)
        self.runtime._save("runs", self.run)
        if self.ended:
            self.runtime._run_ended(self)

    # ------------------------------------------------------------------ hook calling
    @property
    def skipped_plugins(self) -> dict[str, str]:
        """Plugins the runtime stopped calling (name -> why): skips last the runtime's life."""
        return dict(self.runtime.skipped)

    @property
    def _skipped(self) -> set[str]:  # the per-run set older callers read
        return set(self.runtime.skipped)

    def _broadcast(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a broadcast hook (every implementation, each isolated): the non-``None`` results."""
        return self.runtime.pm.call(hook_name, self._policy, **kwargs)  # type: ignore[no-any-return]

    def _decide(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a ``firstresult`` hook: the first usable result, or ``None``."""
        return self.runtime.pm.call(hook_name, self._policy, **kwargs)

    def record_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        """Log and store an error raised inside immunity or a plugin; re-raise if fail-closed
        (never for a timeout: a slow plugin is skipped, not fatal)."""
        msg = _clip(f"{type(exc).__name__}: {exc}", 2000)
        run_id = getattr(self.run, "run_id", None)
        log.warning("immunity plugin %s failed in %s (run %s): %s", plugin, hook, run_id, msg)
        try:
            meta = self.run.metadata
            if not isinstance(meta, dict):  # a plugin replaced it: start a fresh one
                meta = self.run.metadata = {}
            errs = meta.get("plugin_errors")
            if not isinstance(errs, list):
                errs = meta["plugin_errors"] = []
            if len(errs) < 50:
                errs.append({"plugin": plugin, "hook": hook, "error": msg})
        except Exception as inner:  # pragma: no cover - the run object itself is broken
            log.warning("could not note the error on run %s: %s", run_id, inner)
        self.runtime._save("plugin_errors", {"run_id": run_id, "plugin": plugin, "hook": hook,
                                             "error": msg, "ts": now()})
        if self.runtime.config.fail_closed and not isinstance(exc, TimeoutError):
            raise PluginError(plugin, f"{hook}: {msg}") from exc


class HookPolicy(CallPolicy):
    """How a runtime calls plugins: errors recorded (on the run when there is one), per-event
    hooks under the step budget, configure / unconfigure / registration hooks under
    ``Config.hook_timeout_ms``, and a plugin over the budget ``max_overruns`` times skipped for
    the rest of the runtime's life (core's built-ins never are)."""

    def __init__(self, runtime: Runtime, session: RunSession | None = None):
        super().__init__(runtime.pm, timeout=_seconds(runtime.config.hook_timeout_ms, 10.0))
        self.runtime, self.session = runtime, session
        self.budget = _seconds(runtime.config.step_budget_ms, 0.0)
        self.inactive = runtime.inactive

    def skipped(self, plugin: str) -> bool:
        return plugin in self.runtime.skipped

    def deadline(self, plugin: str, hook: str) -> float | None:
        if hook in PER_EVENT_HOOKS:
            budget = _seconds(self.runtime.config.step_budget_ms, 0.0)
            if budget > 0:
                return budget
        return self.timeout

    def error(self, plugin: str, hook: str, exc: BaseException) -> None:
        if hook.startswith("immunity_") and hook not in PER_EVENT_HOOKS:
            # configure / unconfigure / registration: ``immunity plugins`` shows it too
            info = self.runtime.pm.infos.get(plugin)
            if info is not None and not info.error:
                info.error = f"{hook} failed: {type(exc).__name__}: {exc}"
        if self.session is not None:
            self.session.record_error(plugin, hook, exc)
        else:
            self.runtime.record_error(plugin, hook, exc)

    def charge(self, plugin: str, hook: str, seconds: float, timed_out: bool) -> None:
        rt = self.runtime
        budget = _seconds(rt.config.step_budget_ms, 0.0)
        if not budget or (seconds <= budget and not timed_out):
            return
        with rt._lock:
            n = rt.overruns[plugin] = rt.overruns.get(plugin, 0) + 1
        limit = rt.config.max_overruns
        if rt.pm.is_builtin(plugin):  # core's own checks are never switched off
            if n == 1 or n % 100 == 0:
                log.warning("built-in %s took %.1f ms in %s, over the %.0f ms step budget (%d times so far; "
                            "built-ins are never skipped)", plugin, seconds * 1000, hook, budget * 1000, n)
            return
        log.warning("plugin %s took %.1f ms in %s, over the %.0f ms step budget (%d/%d)", plugin, seconds * 1000,
                    hook, budget * 1000, n, limit)
        if n >= limit and plugin not in rt.skipped:
            reason = f"over the {budget * 1000:.0f} ms step budget {n} times; skipped for the rest of this runtime"
            rt.skipped[plugin] = reason
            if self.session is not None:
                self.session.run.metadata["skipped_plugins"] = dict(rt.skipped)
                self.session.runtime._save("runs", self.session.run)
            self.error(plugin, "budget", TimeoutError(reason))


def _seconds(ms: Any, default: float) -> float:
    try:
        value = float(ms) / 1000.0
    except (TypeError, ValueError):
        return default
    return value if value == value and value >= 0 else default  # NaN and negatives: the default


class Runtime:
    """Holds the plugins, the configuration and the store; starts runs.

    ::

        rt = Runtime(domain="coding", store="immunity.db")
        with rt:                                  # closes (flushes the store) at the end
            rt.protect(graph)                     # attach the right adapter
            graph.invoke(...)
    """

    def __init__(self, *, domain: str | None = None, store: Any = None, fail_closed: bool = False,
                 step_budget_ms: float = 50.0, verifiers: list[str] | None = None, selector: str = "bandit",
                 packs: list[Any] | None = None, plugins: list[Any] | None = None,
                 pm: PluginManager | None = None, config: Config | None = None, **options: Any):
        if config is None:
            from immunity.guard import check_runtime_options

            # plugin options may come as keywords or as one ``options={...}`` mapping (or both)
            extra = options.pop("options", None)
            if extra is not None and not isinstance(extra, dict):
                raise TypeError(f"Runtime(options=...) takes a mapping, not {type(extra).__name__}")
            check_runtime_options(options)
            known = {f.name for f in fields(Config)} - {"options"}
            config = Config(domain=domain, store=store if isinstance(store, str) or store is None else None,
                            fail_closed=fail_closed, step_budget_ms=step_budget_ms, verifiers=verifiers,  # type: ignore[arg-type]
                            selector=selector, packs=packs,  # type: ignore[arg-type]
                            **{k: v for k, v in options.items() if k in known},
                            options={**(extra or {}), **{k: v for k, v in options.items() if k not in known}})
        # bad configuration: a warning and the default, never an exception (unless fail-closed)
        problems = config.sanitize()
        if problems and config.fail_closed:
            raise ImmunityError("invalid configuration: " + "; ".join(problems))
        for problem in problems:
            log.warning("immunity configuration: %s", problem)
        self.config = config
        self.pm = pm or get_plugin_manager(extra=list(plugins or []))
        if pm is not None and plugins:
            for p in plugins:
                self.pm.register(p)
        self.sessions: dict[str, RunSession] = {}
        self._idem: dict[str, dict[str, str]] = {}  # run id -> idempotency key -> result
        self.compensations: dict[str, Any] = dict(self.config.options.get("compensations", {}))
        self._lock = threading.Lock()
        self.adapters: list[Any] = []
        self.adapters_by_target: dict[int, tuple[Any, Any]] = {}
        self.closed = False
        #: plugins this runtime stopped calling (name -> why); shown on every later run
        self.skipped: dict[str, str] = {}
        #: step-budget overruns per plugin, over the runtime's life
        self.overruns: dict[str, int] = {}
        #: errors of hook calls outside any run (configure, unconfigure, registrations)
        self.errors: list[dict[str, Any]] = []
        #: plugins switched off for this configuration (``immunity_active(config)`` said no):
        #: their per-event hooks are not called by this runtime
        self.inactive: frozenset[str] = frozenset()
        self._policy = HookPolicy(self)
        self.store = self._open_store(store)
        self.redactor = self._redaction_stage()
        self.pm.call("immunity_configure", self._policy, config=self.config)
        self.inactive = self._policy.inactive = active_plugins_filter(self.pm, self.config)
        self._check_selector()
        _LIVE.add(self)

    def _check_selector(self) -> None:
        try:
            selectors = self._with_policy(lambda: self.pm.registry("selectors"))
        except ImmunityError as exc:  # a name collision: reported, the default policy still runs
            self.record_error("immunity.runtime", "immunity_register_selectors", exc)
            return
        if self.config.selector not in selectors:
            msg = (f"no intervention selector named {self.config.selector!r} (installed: {sorted(selectors)}); "
                   f"using 'default'")
            if self.config.fail_closed:
                raise ImmunityError(msg)
            log.warning("immunity configuration: %s", msg)
            self.config.selector = "default"

    def _with_policy(self, fn: Any) -> Any:
        from immunity.hookcall import with_policy

        return with_policy(self._policy, fn)

    def record_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        """Log and store an error of a hook call outside any run (``run_id`` is empty); re-raise
        if fail-closed (never for a timeout)."""
        msg = _clip(f"{type(exc).__name__}: {exc}", 2000)
        log.warning("immunity plugin %s failed in %s: %s", plugin, hook, msg)
        row = {"run_id": None, "plugin": plugin, "hook": hook, "error": msg, "ts": now()}
        if len(self.errors) < 200:
            self.errors.append(row)
        self._save("plugin_errors", row)
        if self.config.fail_closed and not isinstance(exc, TimeoutError):
            raise PluginError(plugin, f"{hook}: {msg}") from exc

    # ------------------------------------------------------------------ store
    def _open_store(self, store: Any) -> Any:
        if store is None:
            return None
        if not isinstance(store, str):
            return store  # an object that already is a store
        from immunity.store import open_store

        try:
            return open_store(store, self.pm)
        except Exception as exc:
            if self.config.fail_closed:
                raise
            log.warning("immunity could not open store %r (%s); runs are kept in memory for this process and "
                        "the file is left untouched", store, exc)
            from immunity.store import SQLiteStore

            return SQLiteStore(":memory:")

    def _redaction_stage(self) -> Any:
        """The redaction stage between observe and store (see :mod:`immunity.redact`): built from
        ``Config.options["redact"]`` and plugins' patterns; a store that redacts its rows itself
        (``store.redactor``) gets it, any other store gets redacted copies from :meth:`_save`."""
        from immunity.redact import Redactor, from_config

        try:
            redactor = from_config(self.config, self.pm)
        except Exception as exc:
            if self.config.fail_closed:
                raise
            log.warning("immunity: bad redaction options (%s); using the built-in detectors", exc)
            redactor = Redactor()
        if self.store is not None and hasattr(self.store, "redactor"):
            self.store.redactor = redactor
            self._redact_copies = False
        else:
            self._redact_copies = self.store is not None and redactor.enabled
        return redactor

    def save(self, table: str, record: Any) -> None:
        """Queue a record for the store (a run, a recovery an adapter carried out, a plugin's own
        row); does nothing when there is no store. Never raises."""
        self._save(table, record)

    def _save(self, table: str, record: Any) -> None:
        if self.store is not None:
            try:
                if self._redact_copies:  # a store that does not redact its rows itself
                    record = self._redacted_copy(record)
                self.store.save(table, record)
            except Exception as exc:  # pragma: no cover - the store queues; this is a last resort
                log.warning("immunity store write to %s failed: %s", table, exc)

    def _redacted_copy(self, record: Any) -> Any:
        from pydantic import BaseModel

        if isinstance(record, BaseModel):
            return type(record).model_validate(self.redactor.value(record.model_dump(mode="json")))
        return self.redactor.value(record)

    # ------------------------------------------------------------------ runs
    def start_run(self, *, task: str | None = None, framework: str | None = None, domain: str | None = None,
                  run_id: str | None = None, agent: str | None = None, task_id: str | None = None,
                  metadata: dict[str, Any] | None = None, source: str | None = None) -> RunSession:
        """Start a run and emit its ``run_start`` event. Starting with the ``run_id`` of a run this
        runtime or its store already knows continues that run instead (see :meth:`resume_run`), so
        a resume never overwrites what was stored."""
        if run_id:
            known = run_id in self.sessions or (self.store is not None and hasattr(self.store, "get_run")
                                                and self._stored(run_id))
            if known:
                resumed = self.resume_run(run_id)
                if resumed is not None:
                    return resumed
        run = Run(task=task, framework=framework, domain=domain or self.config.domain, agent=agent, task_id=task_id,
                  metadata=dict(metadata or {}), source=source)
        if run_id:
            run.run_id = run_id
        session = RunSession(self, run)
        with self._lock:
            self.sessions[run.run_id] = session
        self._save("runs", run)
        session.emit(Event(kind=EventKind.RUN_START, agent=agent, output=task))
        return session

    def session(self, run_id: str) -> RunSession | None:
        return self.sessions.get(run_id)

    def budget_exempt(self, plugin: str) -> bool:
        """Plugins that carry their own timeout and budget (an LLM verifier) set
        ``immunity_budget_exempt = True`` on the plugin object; the step budget leaves them alone."""
        cache = self.__dict__.setdefault("_exempt", {})
        if plugin not in cache:
            obj = self.pm.get_plugin(plugin)
            cache[plugin] = bool(getattr(obj, "immunity_budget_exempt", False))
        return cache[plugin]

    def _stored(self, run_id: str) -> bool:
        """Whether the store knows ``run_id`` (committed rows only: the hot path never waits for
        the writer; a run this process started is in :attr:`sessions`)."""
        try:
            try:
                run = self.store.get_run(run_id, flush=False, prefix=False)
            except TypeError:  # a store without those options
                run = self.store.get_run(run_id)
        except Exception as exc:  # fail open: a store that cannot be read starts a new run
            log.warning("immunity could not look up run %s: %s", run_id, exc)
            return False
        return run is not None and run.run_id == run_id

    def resume_run(self, run_id: str) -> RunSession | None:
        """The session of ``run_id``, continuing it: from memory if this process knows it, else
        reloaded from the store (the run, its steps folded back into the signals and shown again to
        ``immunity_observe_step`` so plugins rebuild their per-run memos, its checkpoints), so a
        resume in another process goes on where the run stopped and appends new steps after the
        stored ones. ``None`` if the run is unknown."""
        with self._lock:
            session = self.sessions.get(run_id)
        if session is None:
            if self.store is None or not hasattr(self.store, "get_run"):
                return None
            run = self.store.get_run(run_id)
            if run is None or run.run_id != run_id:
                return None
            session = RunSession(self, run)
            for step in self.store.steps(run_id):
                session.state.add_step(step)
                # plugins rebuild what they keep per run (domain memos) from the stored steps
                session._broadcast("immunity_observe_step", step=step, run=run, state=session.state, session=session)
            session.state.tokens, session.state.cost = run.tokens, run.cost  # model calls are not steps
            session.checkpoints = list(self.store.checkpoints(run_id))
            with self._lock:
                self.sessions[run_id] = session
        if session.ended:
            session.reopen()
        else:
            session.run.status = "running"
        return session

    def _run_ended(self, session: RunSession) -> None:
        try:
            selector = self.selector
            if selector is not None and hasattr(selector, "update"):
                selector.update(session.run, session)
        except Exception as exc:  # fail open: the run has ended either way
            log.warning("intervention selector update failed: %s", exc)
        with self._lock:
            self._forget_ended()

    #: Ended runs' sessions stay in memory (for ``session(run_id)``, a late ``set_outcome``, a
    #: resume): at most ``MAX_SESSIONS`` sessions (the oldest ended half is forgotten beyond that;
    #: a forgotten run is read back from the store if it is resumed). The steps they hold are
    #: bounded too: past ``ENDED_STEPS`` steps held by finished runs in all (a step costs about
    #: 3 KB), the oldest finished runs keep only their signals and last ``TRIMMED_STEPS`` steps
    #: (the store has the rest) and no event timings. The newest ``KEEP_ENDED`` ended runs are
    #: never trimmed.
    MAX_SESSIONS = 1000
    ENDED_STEPS = 5_000
    TRIMMED_STEPS = 20
    KEEP_ENDED = 10

    def _forget_ended(self) -> None:
        ended = [(rid, s) for rid, s in self.sessions.items() if s.ended]  # oldest first
        if len(self.sessions) > self.MAX_SESSIONS:  # keep memory bounded in long-lived processes
            for rid, _s in ended[:self.MAX_SESSIONS // 2]:
                self.sessions.pop(rid, None)
                self._idem.pop(rid, None)  # read back from the store if the run is resumed
            ended = ended[self.MAX_SESSIONS // 2:]
        # finished runs only: a stopped or waiting run (a rollback, an approval) keeps its steps
        done = [s for _rid, s in ended[:-self.KEEP_ENDED or None] if s.run.status in ("finished", "error")]
        held = sum(len(s.state.steps.held()) for s in done)
        for s in done:
            if held <= self.ENDED_STEPS:
                break
            before = len(s.state.steps.held())
            s.state.steps.trim(self.TRIMMED_STEPS)
            s.timings.clear()  # up to 100,000 per run
            held -= before - len(s.state.steps.held())

    # ------------------------------------------------------------------ side-effect safety
    def idempotent_result(self, key: str, run_id: str | None = None) -> str | None:
        """The result of a side-effecting call already made with this idempotency key, if any.

        Answered from memory: the keys of ``run_id`` are read from the store's ``idempotency``
        table once per run (committed rows, without waiting for the writer; this process's own
        calls are already in memory), so a resume in a new process still never repeats a call, and
        a side-effecting call costs a dict lookup. Without ``run_id`` (an old caller) a miss asks
        the store."""
        if run_id is not None:
            known = self._idem.get(run_id)
            if known is None:
                known = self._load_idempotency(run_id)
            return known.get(key)
        for known in list(self._idem.values()):
            if key in known:
                return known[key]
        if self.store is not None and hasattr(self.store, "idempotent_result"):
            try:
                return self.store.idempotent_result(key)
            except Exception as exc:  # pragma: no cover - fail open
                log.warning("idempotency lookup failed: %s", exc)
        return None

    def _load_idempotency(self, run_id: str) -> dict[str, str]:
        loaded: dict[str, str] = {}
        store = self.store
        if store is not None:
            try:
                if hasattr(store, "idempotency_results"):
                    loaded = dict(store.idempotency_results(run_id))
            except Exception as exc:  # fail open: a store that cannot be read repeats nothing it knows of
                log.warning("idempotency lookup for run %s failed: %s", run_id, exc)
        prefix = _run_key_prefix(run_id)
        with self._lock:
            known = self._idem.setdefault(run_id, {})
            for k, v in loaded.items():
                known.setdefault(k, v)
                if len(k) == 32:  # a key in the older form (the call's hash alone): also in today's form
                    known.setdefault(prefix + k[:24], v)
        return known

    def forget_result(self, key: str) -> None:
        for rid, known in list(self._idem.items()):
            known.pop(key, None)
            known.pop(_run_key_prefix(rid) + key[:24], None)  # its form read back from an older key
        self._save("idempotency", {"key": key, "run_id": None, "tool": None, "result": None, "ts": now()})

    def compensate_with(self, tool: str, fn: Any) -> None:
        """Declare ``fn(**arguments)`` as the compensating action of side-effecting ``tool``; a
        rollback calls it for each call of ``tool`` it undoes."""
        self.compensations[tool] = fn

    def remember_result(self, key: str, run_id: str, tool: str, result: str) -> None:
        result = _clip(result)  # what the store keeps too: a resumed run gets the same text
        known = self._idem.get(run_id)
        if known is None:
            known = self._load_idempotency(run_id)
        known[key] = result
        self._save("idempotency", {"key": key, "run_id": run_id, "tool": tool, "result": result, "ts": now()})

    # ------------------------------------------------------------------ registries
    @property
    def selector(self) -> Any:
        if not hasattr(self, "_selector"):
            factory = self.pm.registry("selectors").get(self.config.selector)
            if factory is None:
                raise ImmunityError(f"no intervention selector named {self.config.selector!r}; installed: "
                                    f"{sorted(self.pm.registry('selectors'))}")
            self._selector = build(factory, self.config, self.store, runtime=self)
        return self._selector

    def domain(self, name: str | None) -> Any:
        return self.pm.lookup("domains", name) if name else None

    def map_action(self, tool: str | None, arguments: dict[str, Any] | None = None, text: str | None = None,
                   run: Run | None = None, *, domain: str | None = None) -> ActionMapping:
        """Map a native action to a universal action type outside a live run (importers, replay)."""
        run = run or Run(domain=domain or self.config.domain)
        res = self.pm.call("immunity_map_action", self._policy, tool=tool, arguments=arguments, text=text, run=run,
                           domain=self.domain(run.domain))
        if isinstance(res, ActionMapping):
            if res.mapped_by == "heuristic" and tool:
                count_unmapped(run.domain, tool)
            return res
        return heuristic_mapping(tool, arguments, text)

    # ------------------------------------------------------------------ adapters
    def protect(self, target: Any = None, *, framework: str | None = None, **kwargs: Any) -> Any:
        """Attach the adapter for ``target`` (or for ``framework`` by name) with its options and
        return it (the guard). An option the adapter does not accept raises ``TypeError``; an
        object some live guard already protects gets a warning and that guard back."""
        from immunity.guard import adapter_class, existing_guard, warn_protected_twice

        existing = existing_guard(target)
        if existing is not None:
            warn_protected_twice(target, existing)
            return existing
        cls = adapter_class(self.pm, target, framework)
        adapter = cls(self, **kwargs)
        adapter.instrument(target)
        self.adapters.append(adapter)
        self.adapters_by_target[id(adapter)] = (adapter, target)
        return adapter

    def detach(self, adapter: Any) -> None:
        """Uninstrument one adapter and forget it."""
        adapter.uninstrument()
        if adapter in self.adapters:
            self.adapters.remove(adapter)
        self.adapters_by_target.pop(id(adapter), None)

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        if self.store is not None:
            self.store.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for adapter in reversed(self.adapters):
            try:
                adapter.uninstrument()
            except Exception as exc:
                log.warning("uninstrument failed: %s", exc)
        for s in list(self.sessions.values()):
            if not s.ended and s.run.status == "running":  # keep "paused", "interrupted", ...
                s.run.status = "unfinished"
                self._save("runs", s.run)
        try:
            self.pm.call("immunity_unconfigure", self._policy, config=self.config)
        except Exception as exc:  # fail-closed re-raised a plugin's error: the store still closes
            log.warning("immunity_unconfigure failed: %s", exc)
        if self.store is not None:
            self.store.close()
        _LIVE.discard(self)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_LIVE: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # flush every store at normal exit so nothing is lost
    for rt in list(_LIVE):
        try:
            rt.close()
        except Exception:  # pragma: no cover
            pass


def protect(target: Any = None, **kwargs: Any) -> Any:
    """Attach immunity to an agent, graph or crew you already have; see :func:`immunity.guard.protect`."""
    from immunity.guard import protect as _protect

    return _protect(target, **kwargs)
