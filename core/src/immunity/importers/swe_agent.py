"""The ``swe-agent`` format: classic SWE-agent ``<instance>.traj`` files (a JSON object with a
``trajectory`` list of ``{action, observation, thought, response, state, execution_time}``, plus
``history`` and ``info``).

- steps: every ``trajectory`` item with an action is a step. ``arguments={"command": <action>}``;
  ``tool`` is SWE-agent's own command when the action starts with one (``open``, ``edit``,
  ``search_dir``, ``str_replace_editor``, ``submit``, ...: see :data:`SWE_AGENT_COMMANDS`), else
  ``bash`` (a plain shell command). ``result`` = the observation, ``data["thought"]`` = the thought.
  Classic trajectories record no return codes, so ``return_code`` stays empty.
- an item with no action (the model answered without one) is a message step with its response.
- outcome: ``info.resolved`` or a top-level ``resolved`` when present (the SWE-bench evaluation is
  not in the file), else unknown.
- ``run.task_id``: the file's instance id (``<instance>.traj``); ``run.task``: the first user
  message of ``history`` (the issue), when present.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from immunity.importers.base import (
    ImportedRun,
    ImportProblem,
    Record,
    as_dict,
    as_text,
    bounded,
    describe,
    each_record,
    iter_objects,
    message_step,
    new_run,
    stable_id,
    tool_step,
)
from immunity.models import Outcome

#: SWE-agent's own commands (0.x and 1.x tool bundles); any other action is a shell command.
SWE_AGENT_COMMANDS = frozenset({
    "open", "goto", "scroll_up", "scroll_down", "create", "edit", "insert", "append", "search_dir",
    "search_file", "find_file", "submit", "str_replace_editor", "filemap", "view", "skip",
    "exit_cost", "exit_context", "exit_format", "exit_api", "exit_forfeit", "forfeit", "review_on_submit_m",
})
ISSUE = re.compile(r"<pr_description>\s*(.*?)\s*</pr_description>|ISSUE:\s*\n(.*?)\n\s*INSTRUCTIONS:", re.S)


def command_tool(action: str) -> str:
    """``edit 10:12`` -> ``edit``; ``ls -la`` -> ``bash``."""
    first = action.strip().split(None, 1)[0] if action.strip() else ""
    return first if first in SWE_AGENT_COMMANDS else "bash"


def _task(history: Any) -> str | None:
    if not isinstance(history, list):
        return None
    for msg in history:
        if isinstance(msg, dict) and msg.get("role") == "user":
            text = as_text(msg.get("content")) or ""
            m = ISSUE.search(text)
            return (m.group(1) or m.group(2)) if m else text
    return None


class SweAgentImporter:
    name = "swe-agent"
    default_domain = "coding"
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        return '"trajectory"' in head and ('"action"' in head or '"observation"' in head or path.endswith(".traj"))

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        yield from each_record(path, iter_objects(path), lambda rec: self._one(rec, path))

    def _one(self, rec: Record, path: str) -> ImportedRun | ImportProblem:
        value = rec.value
        info = as_dict(value.get("info"))
        instance = value.get("instance_id") or info.get("instance_id")
        if instance is None:
            base = os.path.basename(path)
            instance = re.sub(r"(\.traj)?(\.json)?(\.gz)?$", "", base)
        where = describe(rec, instance_id=instance)
        traj = value.get("trajectory")
        if not isinstance(traj, list):
            return ImportProblem(path, where, "no 'trajectory' list")
        warnings: list[str] = [rec.warning] if rec.warning else []
        steps = []
        for i, item in enumerate(traj):
            if not isinstance(item, dict):
                warnings.append(f"trajectory {i}: not an object; left out")
                continue
            action = as_text(item.get("action")) or ""
            thought = as_text(item.get("thought"))
            if action.strip():
                steps.append(tool_step(command_tool(action), {"command": action.strip()},
                                       result=as_text(item.get("observation")), thought=thought,
                                       execution_time=item.get("execution_time")))
            else:
                text = as_text(item.get("response")) or thought or ""
                if text.strip():
                    steps.append(message_step(text, from_model=True))
        resolved = info.get("resolved", value.get("resolved"))
        outcome = Outcome.parse(resolved) if isinstance(resolved, bool) else Outcome.UNKNOWN
        meta = {k: info.get(k) for k in ("exit_status", "submission", "model_stats", "swe_agent_version")
                if info.get(k) is not None}
        if isinstance(value.get("environment"), str):
            meta["environment"] = value["environment"]
        run = new_run(self.name, path, where, run_id=stable_id(self.name, path, str(instance)),
                      task=_task(value.get("history")), task_id=str(instance), outcome=outcome,
                      metadata=bounded(meta))
        return ImportedRun(run, steps, path, where, warnings)
