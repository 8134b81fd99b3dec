"""Reading shell command lines: which files a command writes, whether it runs a check, whether it is
destructive. Pure functions on the command text (no shell is run), bounded in the text they read."""

from __future__ import annotations

import posixpath
import re
import shlex
from typing import Any, NamedTuple

from immunity_coding.mapping import CHECK_SCRIPT, DESTRUCTIVE, TEST_RUNNER
from immunity_coding.shell_match import searcher

_HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
_OPEN_WRITE = re.compile(r"open\(\s*(?:r|f)?['\"]([^'\"]+)['\"]\s*,\s*(?:mode\s*=\s*)?['\"](?:w|a|r\+|wb|ab|w\+)['\"]")
_PATH_WRITE = re.compile(r"Path\(\s*['\"]([^'\"]+)['\"]\s*\)\.write_(?:text|bytes)\(")
_RUNS_TESTS = searcher(TEST_RUNNER)
_RUNS_CHECK_SCRIPT = searcher(CHECK_SCRIPT)
_IS_DESTRUCTIVE = searcher(DESTRUCTIVE)
_DESTRUCTIVE = re.compile(DESTRUCTIVE, re.I | re.S)
_FAILED_OUTPUT = re.compile(
    r"\b\d+ (?:failed|errors?)\b|^FAILED\b|^FAIL:|^ERROR:|Traceback \(most recent call last\)|^E\s{3}\S|"
    r"AssertionError|^\w*Error: ", re.M)

#: Where edits are never in scope: installed packages, system directories, git internals.
_OUTSIDE = re.compile(r"(?:^|/)(?:site-packages|dist-packages)/|^/(?:usr|etc|lib|lib64|bin|sbin|boot|root|var|opt)/|"
                      r"(?:^|/)\.git/|^~/|^\$HOME/")
_TEST_PATH = re.compile(r"(?:^|/)(?:tests?|testing)/|(?:^|/)test_[^/]*\.py$|_tests?\.py$|(?:^|/)conftest\.py$")
_CONFIG_PATH = re.compile(r"(?:^|/)(?:pyproject\.toml|setup\.cfg|setup\.py|tox\.ini|pytest\.ini|\.coveragerc|"
                          r"requirements[^/]*\.txt|package\.json|Makefile)$")

#: Documentation and other prose: changing it cannot change what a program does, so it needs no test run.
_DOC_PATH = re.compile(r"(?:^|/)(?:docs?|documentation)/|\.(?:md|rst|txt|adoc|asciidoc|rdoc|textile)$|"
                       r"(?:^|/)(?:CHANGES|CHANGELOG|HISTORY|NEWS|AUTHORS|CONTRIBUTORS|README|LICENSE|NOTICE)[^/]*$",
                       re.I)

MAX_TEXT = 20000


def command_of(arguments: dict[str, Any] | None) -> str:
    """The command line of a shell tool call."""
    if not arguments:
        return ""
    for key in ("command", "cmd", "script", "input", "code"):
        value = arguments.get(key)
        if isinstance(value, str):
            return value[:MAX_TEXT]
        if isinstance(value, list):
            return " ".join(str(v) for v in value)[:MAX_TEXT]
    return ""


def command_lines(command: str) -> list[str]:
    """The shell-level lines of a command: split at newlines outside quotes, heredoc bodies left out
    (a quoted ``sed`` script may span lines; a heredoc body is data, not commands)."""
    out: list[str] = []
    cur: list[str] = []
    quote: str | None = None
    i, n = 0, len(command)
    while i < n:
        c = command[i]
        if quote is not None:
            cur.append(c)
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"' and i + 1 < n:
                cur.append(command[i + 1])
                i += 1
        elif c in "'\"":
            quote = c
            cur.append(c)
        elif c == "\\" and i + 1 < n:
            cur.append(c + command[i + 1])
            i += 1
        elif c == "\n":
            line = "".join(cur)
            out.append(line)
            cur = []
            for marker in _HEREDOC.findall(line):
                end = re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*$", re.M).search(command, i + 1)
                if end is not None:
                    i = end.end()
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur))
    return [ln for ln in out if ln.strip()]


_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}


def simple_commands(line: str) -> list[list[str]]:
    """A shell line split into simple commands (token lists), quotes respected."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        tokens = list(lex)
    except ValueError:  # an unbalanced quote: fall back to a plain split
        tokens = re.split(r"\s+", line.strip())
    out: list[list[str]] = [[]]
    for tok in tokens:
        if tok in _OPERATORS:
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def _clean(path: str) -> str:
    path = path.strip().strip("'\"")
    if path.startswith("./"):
        path = path[2:]
    return posixpath.normpath(path) if path else path


class Writes(NamedTuple):
    """The paths a command changes, as far as its text tells.

    ``written`` holds every path it changes (``<patch>`` when a patch is applied, whose files the text
    does not name); ``created`` the ones it creates or overwrites through a redirect, ``touch``,
    ``cp``, ``mkdir`` or Python ``open(..., "w")``; ``removed`` the ones ``rm`` deletes;
    ``reverted`` the ones ``git checkout`` / ``git restore`` put back to their committed state.
    """

    written: list[str]
    created: list[str]
    removed: list[str]
    reverted: list[str]


def written_paths(command: str) -> Writes:
    """The :class:`Writes` of a shell command line."""
    written: list[str] = []
    created: list[str] = []
    removed: list[str] = []
    reverted: list[str] = []
    cwd = ""  # after ``cd DIR`` in the same command line, relative paths are under DIR

    def here(path: str) -> str:
        path = _clean(path)
        if not cwd or not path or path.startswith(("/", "~", "$", "<")):
            return path
        return posixpath.normpath(posixpath.join(cwd, path))

    for line in command_lines(command):
        for toks in simple_commands(line):
            if toks[0] in ("cd", "pushd") and len(toks) <= 2:
                where = toks[1] if len(toks) == 2 else "~"
                if where in ("-", "~") or where.startswith(("~", "$")):
                    cwd = ""
                else:
                    cwd = posixpath.normpath(posixpath.join(cwd, _clean(where))) if cwd else _clean(where)
                continue
            # redirects first: ``cat <<EOF > f``, ``echo x >> f``
            for i, tok in enumerate(toks):
                target = None
                if tok in (">", ">>") and i + 1 < len(toks):
                    target = toks[i + 1]
                elif tok.startswith(">") and not tok.startswith(">&") and len(tok.lstrip(">")) > 0:
                    target = tok.lstrip(">")
                if target and not target.startswith(("&", "/dev/")):
                    p = here(target)
                    written.append(p)
                    created.append(p)
            while toks and re.fullmatch(r"[A-Za-z_]\w*=\S*|sudo|timeout|\d+s?|env|time", toks[0]):
                toks = toks[1:]
            if not toks:
                continue
            cmd, args = posixpath.basename(toks[0]), [t for t in toks[1:] if not t.startswith(">")]
            plain = [a for a in args if not a.startswith("-")]
            if cmd in ("sed", "perl") and any(a.startswith("-i") or a == "--in-place" for a in args):
                has_e = any(a in ("-e", "--expression") for a in args)
                files = plain if has_e else plain[1:]
                written.extend(here(f) for f in files)
            elif cmd == "tee":
                files = [here(f) for f in plain]
                written.extend(files)
                created.extend(files)
            elif cmd in ("touch", "mkdir"):
                files = [here(f) for f in plain]
                written.extend(files)
                created.extend(files)
            elif cmd in ("rm", "rmdir", "unlink"):
                files = [here(f) for f in plain]
                written.extend(files)
                removed.extend(files)
            elif cmd in ("cp", "mv") and len(plain) >= 2:
                dest = here(plain[-1])
                written.append(dest)
                created.append(dest)
                if cmd == "mv":
                    srcs = [here(f) for f in plain[:-1]]
                    written.extend(srcs)
                    removed.extend(srcs)
            elif cmd == "truncate":
                written.extend(here(f) for f in plain if not f.isdigit())
            elif cmd == "git" and args:
                sub = args[0]
                if sub in ("checkout", "restore"):
                    files = [here(f) for f in plain[1:] if f != "--"]
                    written.extend(files)
                    reverted.extend(files)
                elif sub in ("apply", "am", "stash", "cherry-pick", "revert", "merge"):
                    written.append("<patch>")
                elif sub == "rm":
                    files = [here(f) for f in plain[1:]]
                    written.extend(files)
                    removed.extend(files)
            elif cmd == "patch":
                written.append("<patch>")
    for rx in (_OPEN_WRITE, _PATH_WRITE):
        for m in rx.finditer(command):
            p = here(m.group(1))
            written.append(p)
            created.append(p)
    dedup = lambda xs: list(dict.fromkeys(x for x in xs if x and x != "."))  # noqa: E731
    return Writes(dedup(written), dedup(created), dedup(removed), dedup(reverted))


def runs_check(command: str) -> bool:
    """Does the command run tests, a linter, or a script whose name says it checks something?"""
    return _RUNS_TESTS(command) or _RUNS_CHECK_SCRIPT(command)


def output_failed(result: str | None) -> bool:
    """Does a command's output show a failure (a failed test, a traceback), whatever its exit code?"""
    return bool(result and _FAILED_OUTPUT.search(result[-6000:]))


def destructive_reason(command: str) -> str | None:
    """The destructive part of a command line, or ``None``."""
    for line in command_lines(command):
        m = _DESTRUCTIVE.search(line) if _IS_DESTRUCTIVE(line) else None  # the quick yes/no first
        if m:
            return m.group(0).strip(" ;&|\n(")
    return None


def is_test_path(path: str) -> bool:
    return bool(_TEST_PATH.search(path))


def is_doc_path(path: str) -> bool:
    """Documentation or prose (``docs/``, ``*.rst``, ``*.md``, ``CHANGES``...), except requirement
    lists, which are configuration."""
    return bool(_DOC_PATH.search(path)) and not is_config_path(path)


def is_config_path(path: str) -> bool:
    return bool(_CONFIG_PATH.search(path))


def is_outside(path: str, root: str | None = None) -> bool:
    """A path no coding task should change: installed packages, system directories, git internals,
    or an absolute path outside ``root`` (``/tmp`` is always allowed for scratch files)."""
    if path in ("<patch>", ""):
        return False
    if path.startswith("/tmp/"):
        return False
    if _OUTSIDE.search(path):
        return True
    if root and path.startswith("/"):
        root = root.rstrip("/") + "/"
        return not (path + "/").startswith(root)
    return path.startswith("../")


def relative(path: str, root: str | None) -> str:
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return path
