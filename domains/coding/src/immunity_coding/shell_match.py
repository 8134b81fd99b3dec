"""A faster search for the mapping's shell-command expressions, with the same answer.

Most alternatives of the expressions in :mod:`immunity_coding.mapping` begin with the command-start
prefix ``_C`` = ``(?:^|[;&|\\n(]\\s*)`` + optional ``VAR=x`` / ``timeout N`` / ``sudo`` ... words.
Python's ``re`` cannot scan ahead for such a start (``^`` or one of five characters), so it tries
every alternative at every position of the text: about 0.1 ms for a 250-character command.

:func:`searcher` splits an expression at its top-level ``|`` and regroups the alternatives
(``_C X1 | _C X2 | Y`` matches where ``_C (?:X1|X2) | Y`` does), then searches three expressions:

- ``PREFIXES (?:X1|X2)`` matched at position 0 only (what ``^`` means without ``re.M``);
- ``[;&|\\n(]\\s* PREFIXES (?:X1|X2)`` searched: it begins with a character set, which ``re``
  finds with a fast scan, so only the separators are tried;
- the other alternatives ``Y`` on their own.

The expression matches somewhere exactly when one of the three does, with the same flags, so the
boolean answer is the same for every text (lookbehinds and ``\\b`` see the whole string in both).
``tests/test_mapping.py`` compares both on hundreds of commands and ``bench/learning/
coding_mapping.py`` on every command of the SWE-bench dev data. Only the yes/no answer is
reproduced: where the matched text is needed, search the plain expression after a yes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from immunity_coding.mapping import COMMAND_START, SEPARATOR, START_WORDS

_C = COMMAND_START + START_WORDS
_FLAGS = re.I | re.S
_GLOBAL_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")
_WORD = re.compile(r"[A-Za-z0-9_]+")  # an alternative that is a plain word


def alternatives(expr: str) -> list[str]:
    """``expr`` split at its top-level ``|`` (outside groups, character sets and escapes)."""
    parts: list[str] = []
    depth, start, i, n = 0, 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a character set: ``]`` first (or after ``^``) is a literal
            i += 1
            if i < n and expr[i] == "^":
                i += 1
            if i < n and expr[i] == "]":
                i += 1
            while i < n and expr[i] != "]":
                i += 2 if expr[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
        i += 1
    parts.append(expr[start:])
    return parts


def searcher(expr: str) -> Callable[[str], bool]:
    """A function ``text -> bool`` equal to ``bool(re.compile(expr, re.I | re.S).search(text))``.
    Its expressions are compiled at its first call (importing the domain stays cheap)."""
    built: list[Callable[[str], bool]] = []

    def search(text: str) -> bool:
        if not built:
            built.append(_build(expr))
        return built[0](text)

    return search


def _build(expr: str) -> Callable[[str], bool]:
    parts = alternatives(expr)
    if _GLOBAL_FLAGS.match(expr):  # flags for the whole expression: searched as it is
        plain = re.compile(expr, _FLAGS).search
        return lambda text: plain(text) is not None
    tails = [p[len(_C):] for p in parts if p.startswith(_C)]
    others = [p for p in parts if not p.startswith(_C)]
    tail = "(?:" + "|".join(tails) + ")"
    head = re.compile(START_WORDS + tail, _FLAGS).match if tails else None
    inner = re.compile(SEPARATOR + START_WORDS + tail, _FLAGS).search if tails else None
    words = tuple(p.lower() for p in others if _WORD.fullmatch(p))
    others = [p for p in others if not _WORD.fullmatch(p)]
    rest = re.compile("|".join(others), _FLAGS).search if others else None
    word_re = re.compile("|".join(words), _FLAGS).search if words else None

    def search(text: str) -> bool:
        if head is not None and head(text) is not None or inner is not None and inner(text) is not None:
            return True
        if rest is not None and rest(text) is not None:
            return True
        if not words:
            return False
        if text.isascii():  # ASCII letters, digits and ``_`` match case-insensitively as lower-cased
            low = text.lower()
            return any(word in low for word in words)
        return word_re is not None and word_re(text) is not None

    return search
