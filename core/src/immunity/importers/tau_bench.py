"""The ``tau-bench`` format: tau-bench's historical trajectory files (a JSON list of
``{task_id, trial, reward, info, traj}``; ``traj`` holds OpenAI chat messages).

- steps: each assistant tool call with its tool result is a step; an assistant text message (to
  the user) is a message step, which the support domain maps to ``RESPOND``. Each customer turn
  after the first (the task) is a message step with ``agent="user"``, so the support domain's
  signals read the customer's words (frustration, "transfer me"). A tool result that
  starts with ``Error:`` (how tau-bench's tools report a failure) is the step's error.
- outcome: ``reward`` 1 is success, anything lower failure.
- ``run.task``: the first user message (what the agent was told); the user simulator's
  instruction is kept in ``metadata["instruction"]``.
- ``metadata["expected_actions"]``: the ground-truth actions ``info.task.actions``.
- ``failure_step`` (a derived label, failed runs only): the first state-changing call (a step
  the domain maps as a side effect, or ``EDIT``) whose name and arguments match no ground-truth
  action. ``None`` when every state-changing call matches (the run failed some other way: a missing
  action, a wrong answer). ``metadata["failure_step_rule"]`` says how it was derived.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from immunity.importers.base import (
    ImportedRun,
    ImportProblem,
    Record,
    as_dict,
    bounded,
    describe,
    each_record,
    iter_objects,
    new_run,
    stable_id,
)
from immunity.importers.chat import chat_steps
from immunity.models import ActionType, Outcome, Step

FAILURE_STEP_RULE = "first state-changing call whose name and arguments match no ground-truth action"


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def derive_failure_step(steps: list[Step], expected: list[dict[str, Any]]) -> int | None:
    """The index of the first state-changing step that matches no expected action, if any."""
    wanted = {(_canon(a.get("name")), _canon(a.get("kwargs") or a.get("arguments") or {}))
              for a in expected if isinstance(a, dict)}
    for step in steps:
        if not step.tool:
            continue
        if not (step.side_effect or step.action_type == ActionType.EDIT):
            continue
        if (_canon(step.tool), _canon(step.arguments or {})) not in wanted:
            return step.index
    return None


class TauBenchImporter:
    name = "tau-bench"
    default_domain = "support"
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        start = head.lstrip()
        return start[:1] in "[{" and '"traj"' in head and ('"reward"' in head or '"task_id"' in head)

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        yield from each_record(path, iter_objects(path), lambda rec: self._one(rec, path))

    def _one(self, rec: Record, path: str) -> ImportedRun | ImportProblem:
        value = rec.value
        task_id, trial = value.get("task_id"), value.get("trial")
        where = describe(rec, task_id=task_id, trial=trial)
        if not isinstance(value.get("traj"), list):
            return ImportProblem(path, where, "no 'traj' list of messages")
        try:
            parsed = chat_steps(value["traj"], error_prefixes=("Error:",), user_turns=True)
        except ValueError as exc:
            return ImportProblem(path, where, str(exc))
        info = as_dict(value.get("info"))
        task = as_dict(info.get("task"))
        reward = value.get("reward")
        if isinstance(reward, int | float) and not isinstance(reward, bool):
            outcome = Outcome.SUCCESS if reward >= 1.0 - 1e-9 else Outcome.FAILURE
        else:
            outcome = Outcome.UNKNOWN
        expected = task.get("actions") if isinstance(task.get("actions"), list) else []
        meta: dict[str, Any] = {
            "reward": reward, "trial": trial, "expected_actions": bounded(expected),
            "instruction": task.get("instruction"), "user_id": task.get("user_id"),
            "expected_outputs": task.get("outputs"), "system_prompt": parsed.system,
        }
        if isinstance(info.get("reward_info"), dict):
            meta["reward_info"] = bounded({k: v for k, v in info["reward_info"].items() if k != "actions"})
        key = f"{task_id}/{trial}" if task_id is not None else f"{rec.where}"
        run = new_run(self.name, path, where, run_id=stable_id(self.name, path, key), task=parsed.task,
                      task_id=None if task_id is None else str(task_id), outcome=outcome,
                      metadata=bounded({k: v for k, v in meta.items() if v is not None}))
        warnings = list(parsed.warnings) + ([rec.warning] if rec.warning else [])
        return ImportedRun(run, parsed.steps, path, where, warnings)

    def finish(self, imported: ImportedRun) -> None:
        """Derive ``failure_step`` once the steps are mapped (state-changing is the domain's call)."""
        run = imported.run
        if run.outcome != Outcome.FAILURE or run.failure_step is not None:
            return
        expected = run.metadata.get("expected_actions") or []
        run.failure_step = derive_failure_step(imported.steps, expected)
        run.metadata["failure_step_rule"] = FAILURE_STEP_RULE
        run.metadata["failure_step_derived"] = run.failure_step is not None
