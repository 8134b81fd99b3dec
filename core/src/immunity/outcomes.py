"""Run outcomes: who said how a run went, and the reward the intervention bandit learns from.

An outcome comes from one of two places:

- the **framework** (recorded by the adapter when the run ends): an exception, a maximum number of
  iterations or turns reached, a guardrail that tripped, a stop by immunity are failures; a run
  that completed normally stays ``unknown`` (completing is not succeeding);
- the **user**, who knows whether the answer was right: ``guard.set_outcome(run_id, "success",
  reason=...)`` in the process that ran the agent, or ``immunity runs mark RUN success`` later.

The user's verdict wins: a framework outcome never overwrites it. The reason and the source are
kept in ``run.metadata["outcome_reason"]`` / ``run.metadata["outcome_source"]``. Setting a success
or failure rewards every hint the bandit chose in the run (success 1, failure 0); changing it later
takes the old reward back first (see :meth:`~immunity.interventions.bandit.BanditStore.reward_run`).
"""

from __future__ import annotations

import logging
from typing import Any

from immunity.models import Outcome, Run

log = logging.getLogger("immunity")

#: ``run.metadata`` keys
REASON, SOURCE = "outcome_reason", "outcome_source"
#: who set an outcome
FRAMEWORK, USER = "framework", "user"


def parse_verdict(outcome: Any) -> Outcome:
    """``"success"`` / ``"failure"`` (or an :class:`Outcome`, a bool, the usual aliases); ``unknown``
    takes a verdict back."""
    return Outcome.parse(outcome)


def user_set(run: Run) -> bool:
    """Whether the user already gave this run a verdict (a framework outcome must not replace it)."""
    return run.metadata.get(SOURCE) == USER and run.outcome != Outcome.UNKNOWN


def annotate(run: Run, outcome: Outcome, reason: str | None, source: str) -> None:
    """Write the outcome, its reason and its source on the run (in memory)."""
    run.outcome = outcome
    if reason:
        run.metadata[REASON] = reason
    else:
        run.metadata.pop(REASON, None)
    run.metadata[SOURCE] = source


def end_run(session: Any, outcome: Outcome | str | None = None, *, reason: str | None = None,
            output: str | None = None, error: str | None = None) -> None:
    """End a live run with the outcome the framework reported (``None``: it did not say). Adapters
    call this instead of ``session.end`` so that a user's verdict given during the run is kept and
    the reason is stored. Does nothing if the run already ended."""
    if session.ended:
        return
    run = session.run
    if outcome is not None and not user_set(run):
        parsed = Outcome.parse(outcome)
        if parsed != Outcome.UNKNOWN:
            annotate(run, parsed, reason, FRAMEWORK)
            session.end(parsed, output=output, error=error)
            return
    if outcome is None and run.metadata.get(SOURCE) == FRAMEWORK and run.outcome != Outcome.UNKNOWN:
        # a run that failed (a stop), was resumed and then completed: the old failure no longer holds
        # (rewards already given for it stay; the user's verdict corrects them)
        run.outcome = Outcome.UNKNOWN
        run.metadata.pop(REASON, None)
        run.metadata.pop(SOURCE, None)
    session.end(None, output=output, error=error)


def set_outcome(runtime: Any, run_id: str, outcome: Outcome | str, *, reason: str | None = None,
                source: str = USER) -> Run:
    """Record a verdict on ``run_id`` (live in ``runtime`` or stored in its store) and reward the
    bandit. Raises ``KeyError`` for an unknown run."""
    verdict = parse_verdict(outcome)
    session = runtime.session(run_id)
    if session is not None:
        annotate(session.run, verdict, reason, source)
        # saves the run; a run that already ended is rewarded now, a live one when it ends
        session.set_outcome(verdict)
        return session.run
    store = runtime.store
    if store is None:
        raise KeyError(f"no run {run_id!r} in this runtime (and it has no store)")
    options = getattr(getattr(runtime, "config", None), "options", None) or {}
    run = mark_stored(store, run_id, verdict, reason=reason, source=source, evolution=options.get("evolution"))
    selector = getattr(runtime, "_selector", None)
    bandit = getattr(selector, "bandit", None)
    if bandit is not None and hasattr(bandit, "load"):
        try:  # the live selector takes the new counts (the reward was written to the store)
            bandit.load()
            evolution = getattr(selector, "evolution", None)
            if evolution is not None:
                evolution.lineage.load()  # and the candidates promoted or retired by them
        except Exception as exc:  # pragma: no cover - fail open
            log.warning("could not reload the bandit after an outcome: %s", exc)
    return run


def mark_stored(store: Any, run_id: str, outcome: Outcome | str, *, reason: str | None = None,
                source: str = USER, evolution: dict[str, Any] | None = None) -> Run:
    """Set the outcome of a stored run (a unique prefix of its id is enough) and reward the bandit's
    pulls of that run in the same store. Returns the run. Raises ``KeyError`` if the store does not
    have exactly one such run."""
    verdict = parse_verdict(outcome)
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id!r} in the store (or the prefix is not unique)")
    annotate(run, verdict, reason, source)
    store.save("runs", run)
    store.flush()
    reward_stored(store, run.run_id, verdict, evolution=evolution)
    return run


def reward_stored(store: Any, run_id: str, outcome: Outcome, *, evolution: dict[str, Any] | None = None) -> int:
    """Reward the bandit pulls of ``run_id`` kept in ``store`` (success 1, failure 0) and judge the
    evolved candidates of the classes rewarded (``evolution``: the options of
    :class:`~immunity.interventions.evolution.Evolution`); returns how many pulls changed. A store
    without the bandit's tables has nothing to reward."""
    reward = {Outcome.SUCCESS: 1, Outcome.FAILURE: 0}.get(outcome)
    db = getattr(store, "db", None)
    if reward is None or db is None:
        return 0
    from immunity.interventions.bandit import PULLS, BanditStore

    if PULLS not in db.table_names():
        return 0
    bandit = BanditStore(store)
    bandit.load()
    changed = bandit.reward_run(run_id, reward)
    if changed:
        from immunity.interventions.evolution import Evolution

        evo = Evolution(evolution, store)
        evo.lineage.load()
        for cls in sorted({p.error_class for p in changed}):
            evo.judge(cls, bandit.arms)
    return len(changed)
