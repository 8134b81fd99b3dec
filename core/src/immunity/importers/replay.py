"""Feed an imported run through a live :class:`~immunity.runtime.RunSession`, step by step, the way
an adapter reports the same actions: a tool step is ``tool_start`` + ``tool_end``; a message step
is ``message`` (``final_answer`` for a final answer, ``model_end`` for a step the model's own
output made). Verifiers, matchers and policies then see the run as if it were happening now;
:mod:`immunity.learning` uses this to score detectors on imported runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from immunity.importers.base import ImportedRun
from immunity.models import Step

if TYPE_CHECKING:  # pragma: no cover
    from immunity.runtime import Decision, RunSession, Runtime


@dataclass
class ReplayedStep:
    """One imported step and what the runtime decided while it was fed in."""

    step: Step
    decisions: list[Decision] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(d.block for d in self.decisions)

    @property
    def verdicts(self) -> list[Any]:
        return [v for d in self.decisions for v in d.verdicts]


def replay(imported: ImportedRun, session: RunSession, *, end: bool = False,
           stop_on_block: bool = False, stop_on_stop: bool = False) -> list[ReplayedStep]:
    """Feed ``imported``'s steps through ``session`` in order and return each step's decisions.

    The session makes its own steps as it goes (``session.state.steps``); they equal the imported
    steps (action types, tools, arguments, results, errors, return codes) unless a plugin blocks a
    call: a blocked call is recorded as the runtime records it and its result is not fed in, as a
    live adapter would not run it. With ``stop_on_block`` the replay stops there (and at a stop);
    with ``stop_on_stop`` it stops only where the runtime stopped the run, as a live adapter would
    have ended it. ``end`` ends the session with the imported outcome.
    """
    out: list[ReplayedStep] = []
    for step in imported.steps:
        fed = ReplayedStep(step)
        out.append(fed)
        data = step.data
        if step.tool:
            call_id = data.get("tool_call_id")
            start = session.tool_start(step.tool, step.arguments, tool_call_id=call_id, agent=step.agent)
            fed.decisions.append(start)
            if start.block:
                if stop_on_block:
                    break
                continue
            if start.cached_result is not None or data.get("blocked"):
                continue
            result = data.get("_raw_result", step.result)
            error = data.get("_raw_error", step.error)
            fed.decisions.append(session.tool_end(step.tool, result, error=error, return_code=step.return_code,
                                                  tool_call_id=call_id, agent=step.agent))
        else:
            text = data.get("_raw_text", step.text) or ""
            if data.get("final"):
                fed.decisions.append(session.final_answer(text, agent=step.agent))
            elif data.get("from_model"):
                fed.decisions.append(session.model_end(text, agent=step.agent))
            else:
                fed.decisions.append(session.message(text, agent=step.agent))
        if session.stop_requested and (stop_on_block or stop_on_stop):
            break
    if end:
        session.end(imported.run.outcome)
    return out


def replay_run(imported: ImportedRun, runtime: Runtime, *, run_id: str | None = None, end: bool = False,
               stop_on_block: bool = False) -> tuple[RunSession, list[ReplayedStep]]:
    """Start a run in ``runtime`` with the imported run's task, domain and framework, and replay it.
    The new run's id is ``run_id`` or ``replay-<imported id>``."""
    run = imported.run
    session = runtime.start_run(task=run.task, framework=run.framework, domain=run.domain,
                                run_id=run_id or f"replay-{run.run_id}", agent=run.agent, task_id=run.task_id,
                                metadata={"replay_of": run.run_id}, source=run.source)
    return session, replay(imported, session, end=end, stop_on_block=stop_on_block)
