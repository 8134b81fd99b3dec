"""The ``mini-swe-agent`` format: mini-swe-agent runs, either JSON Lines with one run a line
(``instance_id``, ``resolved``, ``exit_status``, ``messages``) or the agent's native
``<instance>.traj.json`` (``info``, ``messages``, ``trajectory_format``).

How steps are built (text-based actions, mini-swe-agent 1.x):

- a step is one assistant message (``THOUGHT: ...`` plus one fenced ```` ```bash ```` block) with
  the user message that answers it. ``tool="bash"``, ``arguments={"command": <the block>}``, the
  thought in ``data["thought"]``;
- ``<returncode>N</returncode>`` gives ``return_code=N``; ``result`` is the output (inside
  ``<output>`` when present); ``error`` is the same output when N != 0, so a failing command is a
  failed step whatever a reader looks at;
- a command that timed out (``The last command <command>...</command> timed out``): no return
  code, ``error`` = the message, ``data["timeout"] = True``;
- a message the agent rejected for its format (no or several bash blocks: ``Please always provide
  EXACTLY ONE action``) is a message step (no tool, ``text`` = the message) with the feedback in
  ``data["format_error"]``;
- the final submission (the command prints ``COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT``; the answer
  is the patch, not a return code) is a bash step with ``result`` = the submission and
  ``data["submitted"] = True``; its action type is whatever the coding domain maps it to;
- messages cut short in the data (the shared SWE-bench set keeps 2,000 characters a message): a
  bash block with no closing fence is taken up to the cut (``data["command_truncated"]``); a
  command cut off entirely is ``{"command": ""}`` with ``data["command_missing"]``.

Outcome: ``resolved`` (JSON Lines) or ``info.resolved`` when present, else unknown.
Tool-calling runs (mini-swe-agent 2 with a tool-call model) are read like the ``chat`` format.
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
from immunity.importers.chat import chat_steps
from immunity.models import Outcome, Step

BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.S)
OPEN_BLOCK = re.compile(r"```bash\s*\n(.*)\Z", re.S)
RETURNCODE = re.compile(r"^\s*<returncode>\s*(-?\d+)\s*</returncode>\s*", re.S)
OUTPUT = re.compile(r"<output>\n?(.*?)\n?</output>", re.S)
TIMEOUT = re.compile(r"^\s*The last command <command>(.*?)</command> timed out", re.S)
FORMAT_ERROR = re.compile(r"^\s*(Please always provide EXACTLY ONE action|Please format your (response|action))",
                          re.I)
SUBMIT_MARKERS = ("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", "MINI_SWE_AGENT_FINAL_OUTPUT")
PR = re.compile(r"<pr_description>\s*(.*?)\s*</pr_description>", re.S)


def _thought(content: str) -> str:
    text = content.split("```bash", 1)[0].strip()
    return re.sub(r"^THOUGHT:\s*", "", text)


def _command(content: str) -> tuple[str | None, dict[str, Any]]:
    """The one bash command in an assistant message, and notes about how it was read."""
    blocks = BLOCK.findall(content)
    if len(blocks) == 1:
        return blocks[0], {}
    if len(blocks) > 1:
        return None, {"blocks": len(blocks)}
    cut = OPEN_BLOCK.search(content)
    if cut:
        return cut.group(1), {"command_truncated": True}
    return None, {"blocks": 0}


def _observation(text: str) -> tuple[int | None, str]:
    m = RETURNCODE.match(text)
    if not m:
        return None, text
    rest = text[m.end():]
    return int(m.group(1)), _output(rest)


def _output(rest: str) -> str:
    """``OUTPUT.search(rest).group(1)``, or ``rest`` when it does not match, found with ``str.find``
    (the lazy expression tries the closing tag at every character of a long output): the text
    between the first ``<output>`` and the first ``</output>`` after it, less one newline at each
    end."""
    i = rest.find("<output>")
    if i < 0:
        return rest
    j = rest.find("</output>", i + 8)
    if j < 0:
        return rest
    start = i + 9 if rest.startswith("\n", i + 8) else i + 8
    end = j - 1 if j - 1 >= start and rest[j - 1] == "\n" else j
    return rest[start:end]


def bash_steps(messages: list[Any]) -> tuple[list[Step], list[str], str | None]:
    """Steps, warnings and the task from mini-swe-agent's text-based messages."""
    steps: list[Step] = []
    warnings: list[str] = []
    task: str | None = None
    n = len(messages)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            warnings.append(f"message {i}: not an object; left out")
            continue
        role = msg.get("role")
        content = as_text(msg.get("content")) or ""
        if role in ("system", "developer", "tool"):
            continue
        if role == "user":
            if task is None:
                m = PR.search(content)
                task = m.group(1) if m else content
            continue
        if role != "assistant":
            warnings.append(f"message {i}: unknown role {role!r}; left out")
            continue
        nxt = messages[i + 1] if i + 1 < n and isinstance(messages[i + 1], dict) else None
        answer: str | None = None
        if nxt is not None and nxt.get("role") == "user":
            answer = as_text(nxt.get("content")) or ""
        command, notes = _command(content)
        thought = _thought(content)
        if answer is not None and FORMAT_ERROR.match(answer):
            steps.append(message_step(content, from_model=True, format_error=answer[:500]))
            continue
        timeout = TIMEOUT.match(answer) if answer is not None else None
        rc, output = _observation(answer) if answer is not None else (None, "")
        executed = rc is not None or timeout is not None
        submitted = command is not None and any(mark in command for mark in SUBMIT_MARKERS)
        if answer is not None and not executed and not submitted and i + 1 == n - 1:
            submitted = True  # the last answer, neither an observation nor a complaint: the submission
        if command is None and timeout is not None:
            command, notes = timeout.group(1), {"command_from_timeout": True}
        if command is None and (executed or submitted):
            command, notes = "", {"command_missing": True}
        if command is None:
            # no command and nothing ran: a plain message from the model
            steps.append(message_step(content, from_model=True))
            continue
        if timeout is not None:
            step = tool_step("bash", {"command": command}, result=None, error=answer, thought=thought, timeout=True)
        elif rc is not None:
            step = tool_step("bash", {"command": command}, result=output,
                             error=(output or f"return code {rc}") if rc != 0 else None,
                             return_code=rc, thought=thought)
        elif submitted:
            step = tool_step("bash", {"command": command}, result=answer, thought=thought, submitted=True)
        elif answer is not None:
            step = tool_step("bash", {"command": command}, result=answer, thought=thought, unparsed_observation=True)
        else:
            step = tool_step("bash", {"command": command}, thought=thought, no_result=True)
        step.data.update(notes)
        steps.append(step)
    return steps, warnings, task


class MiniSweAgentImporter:
    name = "mini-swe-agent"
    default_domain = "coding"
    #: one run per record, read through the shared JSON readers (see ``iter_runs(..., share=...)``)
    splits_records = True

    def detect(self, path: str, head: str) -> bool:
        if path.endswith((".traj.json", ".traj.json.gz")) and '"messages"' in head:
            return True
        if '"trajectory_format"' in head and "mini-swe-agent" in head:
            return True
        return '"messages"' in head and '"instance_id"' in head and ("<returncode>" in head or "```bash" in head
                                                                     or '"resolved"' in head)

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        yield from each_record(path, iter_objects(path), lambda rec: self._run(rec, path))

    def _run(self, rec: Record, path: str) -> ImportedRun | ImportProblem:
        value = rec.value
        info = as_dict(value.get("info"))
        instance = value.get("instance_id") or info.get("instance_id")
        if instance is None and rec.where == "file":
            base = os.path.basename(path)
            for suffix in (".traj.json.gz", ".traj.json", ".json.gz", ".json"):
                if base.endswith(suffix):
                    instance = base[: -len(suffix)]
                    break
        where = describe(rec, instance_id=instance)
        messages = value.get("messages")
        if not isinstance(messages, list):
            return ImportProblem(path, where, "no 'messages' list")
        warnings: list[str] = [rec.warning] if rec.warning else []
        if any(isinstance(m, dict) and m.get("tool_calls") for m in messages):
            parsed = chat_steps(messages)
            steps, task = parsed.steps, parsed.task
            for s in steps:  # tool results carry the return code in the text, as in 1.x
                if s.tool and s.result is not None and s.return_code is None:
                    rc, _ = _observation(s.data.get("_raw_result", s.result))
                    if rc is not None:
                        s.return_code = rc
                        if rc != 0 and s.error is None:
                            s.error = s.result[:2000]
            warnings += parsed.warnings
            m = PR.search(task or "")
            task = m.group(1) if m else task
        else:
            steps, more, task = bash_steps(messages)
            warnings += more
        resolved = value.get("resolved", info.get("resolved"))
        outcome = Outcome.parse(resolved) if isinstance(resolved, bool) else Outcome.UNKNOWN
        meta: dict[str, Any] = {"exit_status": value.get("exit_status") or info.get("exit_status"),
                                "model_stats": info.get("model_stats"), "mini_version": info.get("mini_version"),
                                "trajectory_format": value.get("trajectory_format")}
        if info.get("submission"):
            meta["submission"] = info["submission"]
        run = new_run(self.name, path, where, run_id=stable_id(self.name, path, str(instance or where)), task=task,
                      task_id=None if instance is None else str(instance), outcome=outcome,
                      metadata=bounded({k: v for k, v in meta.items() if v is not None}))
        return ImportedRun(run, steps, path, where, warnings)
