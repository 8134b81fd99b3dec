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

Delivery (the adapters): :func:`split` separates a hint into immunity's own words and the quoted
outside text. Where the framework's message format has a tool role, an adapter sends the quotes as
*tool-role data* and only the words in the instruction role, so a tool's output never speaks in the
user's voice: a synthetic tool call named :data:`QUOTE_TOOL` (an assistant message that calls it,
then a tool message with its id carrying the quotes) followed by the words, which refer to "the tool
output quoted above". Where the framework has no tool role for injected messages, the hint goes as
it is, with the quotes delimited inline. docs/security.md lists what each adapter does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from immunity.redact import default_redactor

__all__ = ["OPEN", "CLOSE", "QUOTE_TOOL", "HintParts", "quote", "plain", "split"]

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


#: The name of the synthetic tool call that carries quoted outside text in the tool role.
QUOTE_TOOL = "immunity_quoted_output"
#: What replaces a quote in a hint's words when the quote travels as tool-role data.
REFERENCE = "(the tool output quoted above)"
_QUOTED = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.S)


@dataclass(frozen=True)
class HintParts:
    """A hint split for delivery: ``words`` (immunity's own text, each quote replaced by
    :data:`REFERENCE`) and ``quotes`` (the quoted outside text: redacted, clipped, undelimited)."""

    words: str
    quotes: tuple[str, ...] = ()

    @property
    def data(self) -> str:
        """The quotes as one tool-role payload (one per line)."""
        return "\n".join(self.quotes)


def split(hint: str) -> HintParts:
    """Split ``hint`` into immunity's words and the outside text it quotes.

    Only text inside ``<tool-output>...</tool-output>`` is outside text (:func:`quote` neutralises
    delimiters inside a quote, so a quote cannot end early). A hint with no quote comes back whole
    with ``quotes == ()``: adapters then deliver it as before."""
    quotes = tuple(q for q in (m.group(1).strip() for m in _QUOTED.finditer(hint)) if q)
    if not quotes:
        return HintParts(_QUOTED.sub("", hint).strip() if OPEN in hint else hint)
    words = " ".join(_QUOTED.sub(lambda m: REFERENCE if m.group(1).strip() else "", hint).split())
    return HintParts(words, quotes)
