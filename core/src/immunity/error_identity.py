"""What makes two failures the same failure.

A failed step's *identity* keeps what tells failures apart and drops what changes between two
occurrences of the same one:

- kept: the failing program and its subcommand (``git diff``, ``python reproduce.py``,
  ``python -m pytest``, or the tool's name for a tool that is not a shell), the error's type
  (``ModuleNotFoundError``, ``AssertionError``), its informative line (the exception line of a
  traceback, else the first line that reads like an error, else the first line of output), the
  ids of the failing tests (``tests/test_x.py::test_y``, ``test_y (module.Case)``), and the exit
  status when there is nothing else;
- dropped: numbers (line numbers, timings, counts), hexadecimal ids and memory addresses, and the
  directories of paths (a temporary directory differs each time; the file name is kept).

So ``grep`` failing twice with nothing found and ``pytest`` failing twice on the same test are
each the same failure; ``python reproduce.py`` raising ``ImportError`` and ``git apply`` failing
are not, although both exit with status 1.

:func:`benign_exit` tells the non-zero exits that are an answer, not an error: ``grep`` / ``rg`` /
``diff`` / ``cmp`` / ``test`` exit with status 1 to say "no match", "they differ", "false"
(their manuals say so; status 2 and above is their error).

Pure functions over bounded text; no shell is run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

_HEX = re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,}\b", re.I)
_NUM = re.compile(r"\d+(?:\.\d+)?")
_PATH = re.compile(r"(?:[\w.\-~]*/)+([\w.\-]+)")
_WS = re.compile(r"\s+")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXC_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure|Warning|Fault))"
                       r"\b(?::\s*(.*))?$")
_EXC_NAME = re.compile(r"\b([A-Z]\w*(?:Error|Exception))\b")
_ERRORISH = re.compile(r"error|exception|failed|failure|fatal|not found|no such|denied|invalid|cannot|can't|"
                       r"unable|refused|timed out|timeout|unknown|missing|required|traceback", re.I)
_TEST_IDS = [
    re.compile(r"^(?:FAILED|ERROR)\s+(\S+::\S+)", re.M),                      # pytest summary
    re.compile(r"^(?:FAIL|ERROR):\s+(\w+)\s+\(([\w.]+)\)", re.M),             # unittest / django
    re.compile(r"^---\s+FAIL:\s+(\S+)", re.M),                                # go test
]
_NOISE_LINE = re.compile(r"^\s*(?:<\/?\w+>|Traceback \(most recent call last\):|File \".*\", line \d+.*|\^+|"
                         r"During handling of the above exception.*|The above exception was the direct cause.*|"
                         r"={3,}.*|-{3,}.*)\s*$")
_WRAPPERS = {"sudo", "time", "nohup", "env", "exec", "command", "builtin", "xargs", "stdbuf", "nice"}
_SUBCOMMANDS = {"git", "pip", "pip3", "npm", "yarn", "pnpm", "cargo", "go", "docker", "kubectl", "make", "uv",
                "poetry", "conda", "apt", "apt-get", "brew", "gh", "dotnet", "mvn", "gradle", "bundle", "rake",
                "django-admin", "tox", "nox", "hatch", "systemctl", "helm", "terraform"}
_INTERPRETERS = re.compile(r"^(?:python|pypy)(?:\d(?:\.\d+)?)?$|^(?:node|ruby|perl|bash|sh|zsh|php|Rscript)$")
#: Programs whose exit status 1 is an answer ("no match", "they differ", "false"), not an error.
_ANSWER_ON_1 = {"grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "git-grep", "diff", "cmp", "test", "[",
                "[[", "false", "which", "pgrep", "comm"}
_SHELL_KEYS = ("command", "cmd", "script", "input", "code")

LIMIT = 240


@dataclass(frozen=True)
class ErrorIdentity:
    """``key`` compares equal for the same failure; ``text`` is the original wording, for people
    and for hints (not lower-cased, numbers kept)."""

    key: str
    text: str
    program: str = ""
    error_type: str = ""
    tests: tuple[str, ...] = ()


def command_text(arguments: Any) -> str | None:
    """The command line of a shell-like tool call (``{"command": ...}``), or ``None``."""
    if not isinstance(arguments, dict):
        return None
    for key in _SHELL_KEYS:
        value = arguments.get(key)
        if isinstance(value, str):
            return value[:20000]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return " ".join(value)[:20000]
    return None


def _strip_heredocs(command: str) -> str:
    out: list[str] = []
    lines = command.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            end = m.group(1)
            i += 1
            while i < len(lines) and lines[i].strip() != end:
                i += 1
        i += 1
    return "\n".join(out)


def _last_simple_command(command: str) -> list[str]:
    """The words of the simple command whose exit status a command line returns (its last one),
    with variable assignments and wrappers (``sudo``, ``timeout 10``, ``env``) taken off."""
    text = _strip_heredocs(command)
    parts = [p for p in re.split(r"\n|&&|\|\||;|\|", text) if p.strip()]
    while parts:
        last = parts.pop().strip()
        try:
            words = shlex.split(last, comments=True)
        except ValueError:
            words = last.split()
        while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in _WRAPPERS):
            words = words[1:]
        if words and words[0] == "timeout":
            words = words[1:]
            while words and (words[0].startswith("-") or re.match(r"^\d", words[0])):
                words = words[1:]
        if words and words[0] not in ("cd", "pushd", "popd", "export", "source", ".", "set", "echo", "true", ":"):
            return words
    return []


def failing_program(command: str) -> str:
    """``program subcommand`` of the command whose exit status the line returns, with what it
    ran on: ``git diff``, ``python reproduce.py``, ``python -m pytest tests/test_x.py``,
    ``python -c``, ``pytest tests/test_x.py``, ``grep pattern``."""
    words = _last_simple_command(command)
    if not words:
        return ""
    prog = words[0].rsplit("/", 1)[-1]
    rest = words[1:]
    if _INTERPRETERS.match(prog):
        for i, w in enumerate(rest):
            if w == "-m" and i + 1 < len(rest):
                prog, rest = f"{prog} -m {rest[i + 1]}", rest[i + 2:]
                break
            if w == "-c":
                return f"{prog} -c"
            if not w.startswith("-"):
                prog, rest = f"{prog} {w}", rest[i + 1:]
                break
        else:
            return prog
    elif prog in _SUBCOMMANDS:
        sub = next((w for w in rest if not w.startswith("-")), "")
        return f"{prog} {sub}".strip()
    # what it ran on: the first positional argument (a test file, a script's first argument)
    target = next((w for w in rest if not w.startswith("-")), "")
    return f"{prog} {target[:80]}".strip()


def benign_exit(arguments: Any, return_code: int | None, output: str | None) -> bool:
    """A non-zero exit that is the command's answer, not an error: status 1 from ``grep``, ``diff``,
    ``test`` and their kin (no match / they differ / false), with no error text in the output."""
    if return_code != 1:
        return False
    command = command_text(arguments)
    if not command:
        return False
    words = _last_simple_command(command)
    if not words:
        return False
    prog = words[0].rsplit("/", 1)[-1]
    if prog == "git" and len(words) > 1 and words[1] in ("grep", "diff"):
        prog = "git-grep" if words[1] == "grep" else "diff"
    if prog not in _ANSWER_ON_1:
        return False
    text = output or ""
    return not re.search(r"(?i)\b(?:error|no such file|permission denied|invalid|unrecognized|usage:)", text[:2000])


def _informative_line(text: str) -> tuple[str, str]:
    """``(error type, line)``: the last exception line of a traceback, else the first line that
    reads like an error, else the first line that is not decoration."""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    lines = [ln.rstrip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    for ln in reversed(lines):
        m = _EXC_LINE.match(ln)
        if m and not m.group(1).endswith("Warning"):
            return m.group(1), ln.strip()
    for ln in lines:
        if _NOISE_LINE.match(ln):
            continue
        if _ERRORISH.search(ln):
            m = _EXC_NAME.search(ln)
            return (m.group(1) if m else ""), ln.strip()
    for ln in lines:
        if not _NOISE_LINE.match(ln):
            return "", ln.strip()
    return "", ""


def _failing_tests(text: str) -> tuple[str, ...]:
    found: list[str] = []
    for pat in _TEST_IDS:
        for m in pat.finditer(text):
            tid = "::".join(g for g in m.groups() if g) if pat.groups > 1 else m.group(1)
            tid = tid.split(" - ")[0]
            if tid not in found:
                found.append(tid)
    return tuple(sorted(found)[:8])


def normalise_message(line: str, limit: int = 160) -> str:
    """An error line with what changes between occurrences taken out (numbers, ids, directories);
    case, names and quoted values are kept."""
    line = _ANSI.sub("", line)
    line = _HEX.sub("<id>", line)
    line = _PATH.sub(lambda m: "<dir>/" + m.group(1), line)
    line = _NUM.sub("<n>", line)
    return _WS.sub(" ", line).strip()[:limit]


def error_identity(tool: str | None, arguments: Any, error: str | None, result: str | None = None,
                   return_code: int | None = None) -> ErrorIdentity | None:
    """The identity of a failed step (``None`` if it has no error and exited 0)."""
    text = str(error or "")
    if not text.strip() and return_code in (None, 0):
        return None
    if _PLACEHOLDER.fullmatch(text):  # an importer's placeholder: no text at all
        text = ""
    if not text.strip():
        text = str(result or "")
    text = text[:8000]
    command = command_text(arguments)
    program = failing_program(command) if command else (tool or "")
    if command is not None and not program:
        program = tool or ""
    etype, line = _informative_line(text)
    tests = _failing_tests(text)
    status = f"exit {return_code}" if return_code not in (None, 0) else ""
    if not line:
        line = status or "failed"
    parts = [program or (tool or "?"), etype, normalise_message(line), ",".join(tests)]
    if not etype and not tests and status and status not in line:
        parts.append(status)
    key = " | ".join(p for p in parts if p)[:LIMIT]
    shown = line[:LIMIT]
    if program and not shown.startswith(program):
        shown = f"{program}: {shown}"
    return ErrorIdentity(key=key, text=shown, program=program, error_type=etype, tests=tests)


def step_error_identity(step: Any) -> ErrorIdentity | None:
    """:func:`error_identity` of a :class:`~immunity.models.Step`."""
    return error_identity(step.tool, step.arguments, step.error, step.result, step.return_code)


_PLACEHOLDER = re.compile(r"\s*return code -?\d+\s*")


def output_of(step: Any) -> str:
    """What a step answered: its error text or result, without the importers' ``return code N``
    placeholder for a command that printed nothing."""
    text = step.error or step.result or ""
    if text and step.error and _PLACEHOLDER.fullmatch(text):
        text = step.result or ""
    return str(text)


def question_of(step: Any) -> str:
    """What a tool call asks: for a shell-like tool, its command (a shell is a general tool; two
    different commands are two different questions); for any other tool, the tool itself."""
    command = command_text(step.arguments)
    if command is not None:
        return f"{step.tool}:{_WS.sub(' ', _NUM.sub('<n>', command)).strip()[:500]}"
    return str(step.tool)


def quote_error(text: str | None, limit: int = 200) -> str:
    """The original error text as a hint quotes it: through
    :func:`immunity.interventions.quoting.quote` (redacted, on one line, clipped at ``limit``
    characters, delimited as data), so that every hint takes tool output from one place."""
    from immunity.interventions.quoting import quote

    return quote(text or "", limit)
