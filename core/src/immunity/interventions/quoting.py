"""Prompt hygiene: the one place where text immunity did not write enters a hint.

A hint is immunity's own words. When it has to show the model what a tool said (an error
message, a line of output, a verdict's evidence), that text goes in through :func:`quote`:

- **redacted** (:mod:`immunity.redact`: keys, tokens, passwords never reach a prompt);
- **clipped** to a few hundred characters and folded onto one line;
- **delimited** as data: ``<tool-output>...</tool-output>``, with any delimiter inside the text
  neutralised, so quoted output cannot close the quote and speak in immunity's (or the user's)
  voice. Hints tell the model the quoted part is data, not instructions.

Every hint template placeholder that carries outside text (``{error}``, ``{evidence}``) and the
retry/rollback hints of the default recovery use it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from immunity.redact import default_redactor

__all__ = ["OPEN", "CLOSE", "quote", "plain"]

OPEN, CLOSE = "<tool-output>", "</tool-output>"
_TAGS = re.compile(r"</?\s*tool-output\s*>?", re.I)
#: Most characters of outside text a hint quotes.
LIMIT = 300


def plain(value: Any, limit: int = LIMIT) -> str:
    """Outside text on one line, redacted and clipped, without delimiters (for text that is
    already inside a delimited quote, or a short name such as a tool's)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
        except (TypeError, ValueError):
            value = str(value)
    value = value[: limit * 8]  # bound the work on huge outputs before scanning
    value = " ".join(default_redactor().text(value).split())
    value = _TAGS.sub("", value)
    return value if len(value) <= limit else value[: max(limit - 3, 0)] + "..."


def quote(value: Any, limit: int = LIMIT) -> str:
    """Outside text as delimited data: ``<tool-output>redacted, clipped text</tool-output>``
    (empty string for empty input)."""
    text = plain(value, limit)
    return f"{OPEN}{text}{CLOSE}" if text else ""
