"""The ``who-and-when`` format: the Who&When failure-attribution set (JSON Lines or JSON, one
multi-agent run a record: ``history``, ``mistake_step``, ``mistake_agent``, ``mistake_reason``,
``question``, ``is_correct``).

- steps: every ``history`` item is a step: a message (``tool`` None) with ``text`` = its content and
  ``agent`` = its ``name`` (the speaking agent, or ``Computer_terminal`` for code output). Step i
  is ``history[i]``, so ``failure_step`` = ``mistake_step`` indexes the same item.
- outcome: ``is_correct`` (false for every record of the published set: all runs failed).
- ``run.task``: ``question``; ``run.task_id``: ``question_ID``; ``metadata`` keeps
  ``mistake_agent``, ``mistake_reason``, ``level`` and the agents' system prompts (bounded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from immunity.importers.base import (
    ImportedRun,
    ImportProblem,
    as_text,
    bounded,
    describe,
    each_record,
    iter_objects,
    message_step,
    new_run,
    stable_id,
)
from immunity.models import Outcome


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


class WhoAndWhenImporter:
    name = "who-and-when"
    default_domain = "research"
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        return '"history"' in head and ('"mistake_step"' in head or '"mistake_agent"' in head)

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        def one(rec: Any) -> ImportedRun | ImportProblem:
            qid = rec.value.get("question_ID") or rec.value.get("question_id")
            where = describe(rec, question_ID=qid)
            return self._run(rec.value, path, where, rec.warning, key=str(qid or rec.where))

        yield from each_record(path, iter_objects(path), one)

    def _run(self, value: dict[str, Any], path: str, where: str, warning: str | None,
             key: str) -> ImportedRun | ImportProblem:
        history = value.get("history")
        if not isinstance(history, list):
            return ImportProblem(path, where, "no 'history' list")
        warnings: list[str] = [warning] if warning else []
        steps = []
        for i, item in enumerate(history):
            if not isinstance(item, dict):
                warnings.append(f"history {i}: not an object; kept as an empty message")
                item = {}
            agent = item.get("name") or item.get("role")
            steps.append(message_step(as_text(item.get("content")) or "", agent=agent, role=item.get("role")))
        is_correct = value.get("is_correct")
        outcome = Outcome.parse(is_correct) if isinstance(is_correct, bool) else Outcome.FAILURE
        mistake = _int(value.get("mistake_step"))
        if value.get("mistake_step") not in (None, "") and mistake is None:
            warnings.append(f"mistake_step {value.get('mistake_step')!r} is not a number; no failure step")
        if mistake is not None and not 0 <= mistake < len(steps):
            warnings.append(f"mistake_step {mistake} is outside the history ({len(steps)} items); kept as given")
        meta = {k: value.get(k) for k in ("mistake_agent", "mistake_reason", "level", "file", "ground_truth")
                if value.get(k) is not None}
        if value.get("system_prompt"):
            meta["system_prompts"] = value["system_prompt"]
        run = new_run(self.name, path, where, run_id=stable_id(self.name, path, key), task=value.get("question"),
                      task_id=None if value.get("question_ID") is None else str(value.get("question_ID")),
                      outcome=outcome, failure_step=mistake, metadata=bounded(meta))
        return ImportedRun(run, steps, path, where, warnings)
