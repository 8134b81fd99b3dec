"""The coding domain's checks. Each returns a :class:`~immunity.models.Verdict` or ``None``.

All of them read a small per-run memo, ``state.extras["coding"]``, which :func:`track` keeps up to
date once per completed step (so every check is O(1) in the length of the run):

- ``source_edits_since_check``: edits to files that are not the agent's own scratch files, since the
  last passing check (a test run, a linter, or a run of a check script such as ``reproduce.py``);
  putting a file back (``git checkout FILE``) and editing documentation (``docs/``, ``*.rst``,
  ``*.md``...) are not such edits: neither can break what the tests check;
- ``created`` / ``dirs``: files and directories the agent created in this run (its scratch files);
- ``failed``: normalised command -> the count of changes (writes, runs) when it last failed.

Options come from ``Runtime(..., coding={...})`` (``Config.options["coding"]``) or the run's
metadata: ``allow_destructive`` (bool: warn instead of block), ``root`` (the repository's absolute
path, e.g. ``/testbed``), ``scope`` (globs of the paths the task may change), ``protect`` (globs it
must not change), ``block_unverified_finish`` (bool: block a submit that follows unverified edits),
``strict_finish`` (bool: flag a finish after *any* edit since the last passing check; by default only
a finish whose source changes were never followed by a passing check is flagged).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from immunity import taxonomy as tx
from immunity.models import ActionType, Event, EventKind, Run, Severity, Step, Verdict
from immunity.state import RunState

from immunity_coding import commands as sh

#: Error class added by this domain.
REPEATED_FAILING_COMMAND = "repeated_failing_command"

tx.register_class(
    REPEATED_FAILING_COMMAND,
    "A command that failed is run again unchanged although no file was edited since it failed.",
    "coding domain; mini-swe-agent trajectories",
    "This command failed before and nothing has changed since. Change the code or the command first.",
)

SCRATCH_NAME = re.compile(r"^(?:repro|reproduc|debug|check|verify|validate|scratch|tmp|temp|test_|my_|try)", re.I)
_LIMIT = 2000


def memo(state: RunState) -> dict[str, Any]:
    m = state.extras.get("coding")
    if m is None:
        m = state.extras["coding"] = {"opts": {}, "created": set(), "dirs": set(), "failed": {},
                                      "changes": 0, "source_edits": 0, "source_edits_since_check": 0, "passing_checks": 0,
                                      "edited": {}, "task_edits": {}}
    return m


def options(state: RunState, run: Run) -> dict[str, Any]:
    opts = dict(memo(state)["opts"])
    for key in ("allow_destructive", "root", "scope", "protect", "block_unverified_finish", "strict_finish"):
        if key in run.metadata:
            opts[key] = run.metadata[key]
    return opts


def is_shell(tool: str | None) -> bool:
    from immunity_coding.mapping import SHELL_TOOLS

    return bool(tool) and re.fullmatch(SHELL_TOOLS, tool or "") is not None


def _editor_path(arguments: dict[str, Any] | None) -> str | None:
    for key in ("path", "file", "file_path", "filename", "target_file", "target"):
        value = (arguments or {}).get(key)
        if isinstance(value, str) and value:
            return sh._clean(value)
    return None


def step_paths(step: Step) -> sh.Writes:
    """The paths a step changes: from the command line of a shell tool, from the ``path`` argument
    of an editor tool."""
    if is_shell(step.tool):
        return sh.written_paths(sh.command_of(step.arguments))
    if step.action_type == ActionType.EDIT:
        path = _editor_path(step.arguments)
        if path:
            creating = str((step.arguments or {}).get("command", "")).lower() == "create" or \
                (step.tool or "").lower() in ("create_file", "create")
            removing = (step.tool or "").lower() in ("delete_file", "remove_file")
            return sh.Writes([path], [path] if creating else [], [path] if removing else [], [])
        return sh.Writes(["<edit>"], [], [], [])
    return sh.Writes([], [], [], [])


def is_scratch(path: str, m: dict[str, Any], root: str | None = None) -> bool:
    """A file the agent made for itself: created in this run at the top level (a repro script) or
    inside a directory it created, or anything under ``/tmp``."""
    rel = sh.relative(path, root)
    if rel.startswith("/tmp/") or rel in m["dirs"]:
        return True
    if any(rel.startswith(d.rstrip("/") + "/") for d in m["dirs"]):
        return True
    top_level = "/" not in rel
    return top_level and (rel in m["created"] or bool(SCRATCH_NAME.match(rel)))


def _norm_command(command: str) -> str:
    return re.sub(r"\s+", " ", command.strip())[:500]


def _passed(step: Step) -> bool:
    return not step.failed and not sh.output_failed(step.result)


def track(step: Step, run: Run, state: RunState) -> None:
    """Fold one completed step into the memo (called from ``immunity_observe_step``)."""
    m = memo(state)
    root = options(state, run).get("root")
    if step.data.get("blocked"):
        return
    written, created, removed, reverted = step_paths(step)
    command = sh.command_of(step.arguments) if is_shell(step.tool) else ""
    if not step.failed and command and re.search(r"(?:^|[;&|\n]\s*)mkdir\b", command):
        for path in created:  # a directory made in this very step holds scratch files written in it
            m["dirs"].add(sh.relative(path, root))
    kinds = m.get("task_protects")
    if kinds is None:
        kinds = m["task_protects"] = _protected_by_task(run.task)
    source = 0
    for path in written:
        rel = sh.relative(path, root)
        if path in reverted or (path in removed and rel in m["created"]):
            m["task_edits"].pop(rel, None)  # put back: the deliverable no longer holds that change
        elif kinds and not is_scratch(path, m, root) and rel not in m["created"] and not path.startswith("<"):
            why = _task_protected(rel, kinds)
            if why and len(m["task_edits"]) < _LIMIT:
                m["task_edits"][rel] = why
        if is_scratch(path, m, root) or (path in created and "/" not in rel):
            continue  # the agent's own scratch files
        if path in removed and (rel in m["created"] or "/" not in rel):
            continue  # cleaning up: removing what it created, or a top-level leftover
        if path in reverted:
            continue  # putting a file back to its committed state removes a change, adds none
        if sh.is_doc_path(rel):
            continue  # documentation: changing it cannot break what the tests check
        source += 1
        if len(m["edited"]) < _LIMIT:
            m["edited"][rel] = m["edited"].get(rel, 0) + 1
    if not step.failed:
        for path in created:
            if len(m["created"]) < _LIMIT:
                m["created"].add(sh.relative(path, root))
        if command and re.search(r"(?:^|[;&|\n]\s*)mkdir\b", command):
            for path in created:
                m["dirs"].add(sh.relative(path, root))
        for path in removed:
            m["created"].discard(sh.relative(path, root))
    if written or (step.action_type == ActionType.EXECUTE and not step.failed):
        m["changes"] += 1  # anything that may change what a command does next, scratch files included
    if source:
        m["source_edits"] += 1
        m["source_edits_since_check"] += 1
    checking = step.action_type == ActionType.VERIFY or (command and sh.runs_check(command))
    if checking and _passed(step):
        m["passing_checks"] += 1
        if m["source_edits"]:
            m["verified_edits"] = True  # a check passed after the source was changed
        m["source_edits_since_check"] = 0
    if command and step.failed and step.action_type in (ActionType.VERIFY, ActionType.EXECUTE):
        failed = m["failed"]
        if len(failed) >= _LIMIT:
            failed.pop(next(iter(failed)))
        failed[_norm_command(command)] = m["changes"]


# ----------------------------------------------------------------------------------------------- checks


def destructive_command(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``unsafe_action``: a shell command that destroys work or the machine (``rm -rf /``,
    ``git reset --hard``, ``git push --force``, ``mkfs``...). Blocked unless ``allow_destructive``."""
    if event.kind != EventKind.TOOL_START or step is None or not is_shell(step.tool):
        return None
    command = sh.command_of(step.arguments)
    reason = sh.destructive_reason(command)
    if reason is None:
        return None
    allowed = bool(options(state, run).get("allow_destructive"))
    return Verdict(ok=False, error_class=tx.UNSAFE_ACTION, severity=Severity.WARNING if allowed else Severity.ERROR,
                   block=not allowed,
                   message=f"destructive shell command: {reason}",
                   hint=f"[immunity] Blocked `{reason}`: it destroys work that cannot be recovered. Remove only "
                        "the specific files you created, or use `git diff` / `git stash` to review changes instead."
                   if not allowed else f"[immunity] `{reason}` is destructive; make sure it is what the task needs.",
                   evidence={"command": command[:300], "match": reason})


def unverified_finish(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``premature_done``: finishing (a submit command, a ``submit`` tool, a final answer) with
    source edits that no passing test run or check script ever followed. Edits after a check passed
    on changed source are left alone unless ``strict_finish`` is set."""
    if step is None or step.action_type != ActionType.DONE:
        return None
    if event.kind not in (EventKind.TOOL_START, EventKind.FINAL_ANSWER, EventKind.MODEL_END, EventKind.MESSAGE):
        return None
    m = memo(state)
    pending = m["source_edits_since_check"]
    if event.kind == EventKind.TOOL_START:  # the submit itself may carry a last edit
        written, created, _, reverted = step_paths(step)
        root = options(state, run).get("root")
        pending += sum(1 for p in written if not is_scratch(p, m, root) and not (p in created and "/" not in p)
                       and p not in reverted and not sh.is_doc_path(sh.relative(p, root)))
    if pending <= 0:
        return None
    if m.get("verified_edits") and not options(state, run).get("strict_finish"):
        # A check passed after the source was changed, then more edits came (a clean-up, a
        # docstring, a removed debug print): the agent has shown it verifies its change. Finishing
        # without ever seeing a check pass on changed source is the case worth flagging.
        # ``strict_finish`` flags any edit after the last passing check.
        return None
    block = bool(options(state, run).get("block_unverified_finish")) and event.kind == EventKind.TOOL_START
    never = m["passing_checks"] == 0
    return Verdict(ok=False, error_class=tx.PREMATURE_DONE, severity=Severity.ERROR, block=block,
                   message=("finishing with edits but no passing test run in the whole run" if never else
                            f"finishing with {pending} edit(s) made after the last passing test run"),
                   hint="[immunity] Do not submit yet: you changed source files after your last passing check. "
                        "Run the relevant tests (or your reproduction script) and make sure they pass, then submit.",
                   evidence={"edits_since_check": pending, "passing_checks": m["passing_checks"],
                             "edited": sorted(m["edited"])[:20]})


def _matches(path: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, g) or fnmatch.fnmatch(path, g.rstrip("/") + "/*") for g in globs)


def _protected_by_task(task: str | None) -> set[str]:
    text = (task or "").lower()
    kinds: set[str] = set()
    if re.search(r"non-test files|do not (?:modify|change|edit|touch)[^.\n]{0,40}\btests?\b", text):
        kinds.add("tests")
    if re.search(r"do not (?:modify|change|edit|touch)[^.\n]{0,60}\bconfig", text):
        kinds.add("config")
    return kinds


def _task_protected(rel: str, kinds: set[str]) -> str | None:
    if "tests" in kinds and sh.is_test_path(rel):
        return "an existing test file (the task asks for changes to non-test files)"
    if "config" in kinds and sh.is_config_path(rel):
        return "a configuration file the task says not to change"
    return None


def out_of_scope_edit(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``scope_creep``: an edit to a path the task does not cover: installed packages, system or git
    internals, outside ``root``; outside the ``scope`` globs or inside the ``protect`` globs (when
    the edit is about to run). And, when the run finishes, existing test or configuration files
    still changed although the task says to change non-test files only (or not to touch the
    configuration): that instruction is about what is delivered, so changing a test file to try
    something and putting it back (``git checkout``) is fine."""
    if step is not None and step.action_type == ActionType.DONE and \
            event.kind in (EventKind.TOOL_START, EventKind.FINAL_ANSWER, EventKind.MODEL_END, EventKind.MESSAGE):
        left = memo(state)["task_edits"]
        if not left:
            return None
        path, why = sorted(left.items())[0]
        return Verdict(ok=False, error_class=tx.SCOPE_CREEP, severity=Severity.WARNING,
                       message=f"finishing with a change to {path}: {why}",
                       hint=f"[immunity] `{path}` is {why}. Put it back before finishing "
                            f"(`git checkout {path}`), and keep your changes to the files the task is about.",
                       evidence={"paths": sorted(left)[:10], "reasons": [left[p] for p in sorted(left)[:10]]})
    if event.kind != EventKind.TOOL_START or step is None or step.action_type != ActionType.EDIT:
        return None
    written, created, _, _ = step_paths(step)
    if not written:
        return None
    m = memo(state)
    opts = options(state, run)
    root = opts.get("root")
    scope = list(opts.get("scope") or [])
    protect = list(opts.get("protect") or [])
    bad: list[tuple[str, str]] = []
    for path in written:
        if path.startswith("<"):
            continue
        rel = sh.relative(path, root)
        if sh.is_outside(path, root):
            bad.append((path, "outside the repository (installed packages, system files or git internals)"))
        elif is_scratch(path, m, root) or rel in m["created"]:
            continue
        elif protect and _matches(rel, protect):
            bad.append((rel, "a protected path"))
        elif scope and not _matches(rel, scope):
            bad.append((rel, "outside the task's scope"))
    if not bad:
        return None
    path, why = bad[0]
    outside = any("outside the repository" in w for _, w in bad)
    return Verdict(ok=False, error_class=tx.SCOPE_CREEP, severity=Severity.ERROR if outside else Severity.WARNING,
                   message=f"edit to {path}: {why}",
                   hint=f"[immunity] `{path}` is {why}. Only change the files the task is about; "
                        "revert this change if you already made it.",
                   evidence={"paths": [p for p, _ in bad][:10], "reasons": [w for _, w in bad][:10]})


def repeated_failing_command(event: Event, step: Step | None, run: Run, state: RunState) -> Verdict | None:
    """``repeated_failing_command``: a test or script run that failed before is started again with
    nothing changed since it failed (no file written, no other program run), so it will fail the
    same way."""
    if event.kind != EventKind.TOOL_START or step is None or not is_shell(step.tool):
        return None
    if step.action_type not in (ActionType.VERIFY, ActionType.EXECUTE):
        return None
    m = memo(state)
    command = _norm_command(sh.command_of(step.arguments))
    changes_then = m["failed"].get(command)
    if changes_then is None or changes_then != m["changes"]:
        return None
    return Verdict(ok=False, error_class=REPEATED_FAILING_COMMAND, severity=Severity.WARNING,
                   message=f"re-running a command that failed, with no edit since: {command[:120]}",
                   hint="[immunity] This exact command failed before and no file changed since. Read its error "
                        "output, change the code (or the command), then run it again.",
                   evidence={"command": command[:300], "changes": m["changes"]})


CHECKS = [destructive_command, unverified_finish, out_of_scope_edit, repeated_failing_command]

ERROR_CLASSES = {
    tx.UNSAFE_ACTION: "destructive_command: rm -rf on /, ~, ., *, system dirs or .git; git reset --hard; "
                      "git clean -f; git push --force; git checkout .; mkfs; dd to a device (blocked)",
    tx.PREMATURE_DONE: "unverified_finish: submit / final answer with source edits after the last passing check",
    tx.SCOPE_CREEP: "out_of_scope_edit: an edit outside the repository or the scope globs; finishing with existing "
                    "tests or config still changed when the task says not to change them",
    REPEATED_FAILING_COMMAND: "repeated_failing_command: a failed command re-run with no edit since",
}


_FAILED_TESTS = re.compile(r"\b\d+ (failed|errors?)\b|^FAILED |^ERROR[: ]|\bFAILED \(|Traceback \(most recent call last\)",
                           re.M)
_PASSED_TESTS = re.compile(r"\b\d+ passed\b|^OK\b|\bRan \d+ tests?\b", re.M)


def test_output_passed(step: Step) -> bool | None:
    """Whether a test run that exited 0 really passed, from its output: ``False`` when it reports
    failures or errors (some runners and wrappers exit 0 anyway), ``True`` when it reports passes,
    ``None`` when the output says neither."""
    out = step.result or ""
    # each expression runs only when the output holds a word every one of its alternatives contains
    # (a substring test is far cheaper than the search; the answer is the same)
    if ("failed" in out or "error" in out or "FAILED" in out or "ERROR" in out or "Traceback" in out) \
            and _FAILED_TESTS.search(out):
        return False
    if ("passed" in out or "OK" in out or "Ran " in out) and _PASSED_TESTS.search(out):
        return True
    return None
