"""Redaction: secrets are masked before anything is stored, exported, put in a hint or in a pack.

The redaction stage sits between observe and store: plugins and verifiers see an event as the
adapter translated it, and what is *written* (the store's rows, ``immunity export``, the text a
hint quotes, a pack's examples) goes through :class:`Redactor` first. It is on by default.

What it masks (built-in detectors, all folded into **one** compiled regular expression, so a
string costs one scan however many detectors there are):

- ``private_key``: PEM private key blocks (``-----BEGIN ... PRIVATE KEY-----`` to its end, or to
  the end of the text when the block was cut);
- ``aws_key``: AWS access key ids (``AKIA...``/``ASIA...``); ``aws_secret``: a 40-character
  secret access key in a text that mentions AWS or holds a key id;
- ``api_key``: common API-key shapes (``sk-...``, ``sk-ant-...``, GitHub ``ghp_...``/``github_pat_...``,
  Slack ``xox?-...``, Google ``AIza...``, Hugging Face ``hf_...``, Stripe ``sk_live_...``, JWTs);
- ``bearer``: ``Bearer <token>`` / ``Basic <credentials>`` (Authorization headers);
- ``secret_field``: the value of ``password=``, ``secret:``, ``"api_key": "..."``, ``token=``,
  ``aws_secret_access_key=``... fields (the name is kept, the value masked); ``secret_phrase``:
  the word after "password is" / "api key was" in prose;
- optional (``emails=True`` / ``phones=True``): e-mail addresses, phone numbers.

Besides text, dictionaries are walked: the value under a key that names a secret (``password``,
``api_key``, ``token``, ``authorization``...) is masked whatever it looks like. Only strings are
scanned; numbers, booleans and ``None`` pass through untouched.

A store checks a whole record first with :meth:`Redactor.may_change_any` (a few substring tests
for the literals every match must contain, :data:`PREFILTER`, on each of the record's texts; a
text found clean before, or made of hexadecimal digits only, is not tested again) and walks its
strings only when that finds something; with user or plugin patterns every record is walked.

Extending it: user patterns (``Config.options["redact"]["patterns"] = [regex, ...]`` or
``{name: regex}``) and plugins through the ``immunity_register_redaction_patterns`` hook
(``register(name, regex)``) are folded into the same single expression. Switching it off takes
``Config.options["redact"] = {"enabled": False}`` (not recommended).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BUILTIN_PATTERNS", "MASK", "OPTIONAL_PATTERNS", "PREFILTER", "TRIGGERS", "Redactor", "default_redactor",
           "redact_text"]

#: What a masked value becomes: ``[REDACTED:<detector>]``.
MASK = "[REDACTED:{}]"

_SECRET_NAMES = (r"password|passwd|pwd|passphrase|secret|client[_-]?secret|secret[_-]?key|api[_-]?key|apikey|"
                 r"access[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|id[_-]?token|session[_-]?token|"
                 r"token|private[_-]?key|aws_secret_access_key|credentials?")

#: Built-in detectors: name -> regular expression (no capture groups of their own, except
#: ``secret_field`` whose named groups keep the field's name and quotes).
BUILTIN_PATTERNS: dict[str, str] = {
    "private_key": r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[\s\S]{0,20000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----"
                   r"|(?:[A-Za-z0-9+/=\s]|\\[nr])*)",
    "aws_key": r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])",
    "aws_secret": r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[A-Z])(?=[A-Za-z0-9/+]{0,39}[a-z])"
                  r"(?=[A-Za-z0-9/+]{0,39}[0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
    "api_key": r"(?<![A-Za-z0-9_-])(?:sk-(?:ant-|proj-|live-)?[A-Za-z0-9_-]{20,}"
               r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
               r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}"
               r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"
               r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})",
    "bearer": r"(?i:\b(?:bearer|basic))\s+[A-Za-z0-9._~+/=-]{8,}",
    "secret_field": r"(?P<sf_key>(?<![A-Za-z0-9_])(?i:" + _SECRET_NAMES + r")[\"'\\]{0,2}\s*[:=]\s*)"
                    r"(?P<sf_val>\\\"(?:[^\\]|\\[^\"])*?\\\"|\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;&}\]\"'\\]+)",
    "secret_phrase": r"(?P<sp_key>(?i:\b(?:password|passwd|passphrase|api key|secret key)\s+(?:is|was)\s+))"
                     r"(?P<sp_val>[^\s,;]+)",
}

#: Detectors that are off unless asked for (``emails=True``, ``phones=True``).
OPTIONAL_PATTERNS: dict[str, str] = {
    "email": r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
    "phone": r"(?<![\w+])\+?\d{1,3}[\s.-]?\(?\d{2,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?![\w])",
}

#: Literals one of which every match of a detector contains: ``(gate, triggers, case)``. A string
#: holding none of a detector's triggers (or not its cheap ``gate`` character) cannot match it, so
#: the detector is left out of that string's scan; ``case`` says whether the triggers are looked
#: for in the original text (``True``) or in its lower-cased copy.
TRIGGERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "private_key": ((), ("-----BEGIN",), True),
    "aws_key": (("A",), ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"), True),
    "aws_secret": ((), ("aws", "akia", "asia"), False),
    "api_key": ((), ("sk-", "gh", "github_pat_", "xox", "aiza", "hf_", "_live_", "_test_", "eyj"), False),
    "bearer": ((), ("bearer", "basic"), False),
    "secret_field": (("=", ":"), ("pass", "pwd", "secret", "key", "token", "credential"), False),
    "secret_phrase": ((" is ", " was "), ("passw", "passphrase", "api key", "secret key"), False),
    "email": ((), ("@",), True),
}

#: What a whole record must contain for a detector to change any string in it: ``(literals, lowered
#: literals)``; the first are looked for in the text as it is (the detector is case-sensitive), the
#: second in its lower-cased copy. Tighter than :data:`TRIGGERS` (which only pick the detectors to
#: run), so that ordinary text ("3 passed", ``input_tokens``) does not count: a record holding none
#: of them is stored without walking its strings (:meth:`Redactor.may_change`).
PREFILTER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "private_key": (("-----BEGIN",), ()),
    "aws_key": (("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA"), ()),
    "aws_secret": ((), ("aws", "akia", "asia")),
    "api_key": (("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "AIza", "hf_", "_live_", "_test_",
                 "eyJ"), ()),
    "bearer": ((), ("bearer", "basic")),
    # every name of _SECRET_NAMES contains one of these; "token" only counts when it ends a word
    "secret_field": ((), ("password", "passwd", "passphrase", "pwd", "secret", "api_key", "api-key", "apikey",
                          "access_key", "access-key", "accesskey", "private_key", "private-key", "privatekey",
                          "credential", "token")),
    "secret_phrase": ((), ("password", "passwd", "passphrase", "api key", "secret key")),
    "email": (("@",), ()),
}
#: Keys whose string value is masked whatever it is (``_SECRET_KEY``): the secret_field names plus these.
_KEY_LITERALS = ("authorization", "cookie")
#: Characters that a case-insensitive expression matches to an ASCII letter but that ``str.lower``
#: does not turn into it (``re.fullmatch("(?i)s", "\u017f")`` matches); folded before the lowered search.
FOLD = {0x130: "i", 0x131: "i", 0x17F: "s", 0x212A: "k"}
_TOKEN_END = re.compile(r"token(?![a-z0-9_])")
#: Short literals looked for before the longer literals that contain them (one test instead of
#: several when none is there).
_ANCHORS = ("key", "pass", "secret")
_EXACT_ANCHORS = ("A", "gh")


def _grouped(literals: Iterable[str], anchors: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for lit in literals:
        groups.setdefault(next((a for a in anchors if a in lit), lit), []).append(lit)
    return {a: tuple(v) for a, v in groups.items()}

#: Keys of a record's top level that immunity fills itself (ids, enums, times): never scanned.
SKIP_KEYS = frozenset({"event_id", "run_id", "kind", "ts", "tool_call_id", "intervention_id", "recovery_id",
                       "checkpoint_id", "pattern_id", "action_type", "outcome", "status", "severity", "error_class",
                       "framework", "started_at", "ended_at", "idx", "index", "seq", "source"})

#: Strings shorter than this are not scanned (no detector matches so little text).
MIN_LENGTH = 6

_SECRET_KEY = re.compile(r"^(?:[A-Za-z0-9_-]*[_-])?(?i:" + _SECRET_NAMES + r"|authorization|cookie|set-cookie)$")

#: Texts up to this long that :meth:`Redactor.may_change_any` found clean are remembered (a tool's
#: name, a result that recurs, a JSON key), at most :data:`CLEAN_CHARS` characters and
#: :data:`CLEAN_TEXTS` texts in all (then the memory starts again: a few MB at most), so text that
#: recurs costs one set lookup instead of a scan.
CLEAN_LENGTH = 1024
CLEAN_CHARS = 512_000
CLEAN_TEXTS = 16_384
_HEX = "0123456789abcdef"

#: Nesting deeper than this is not walked further (it is replaced by a marker, never recursed into).
MAX_DEPTH = 64


class Redactor:
    """Masks secrets in text and in JSON-like values.

    Each string costs one lower-casing, a few substring tests (the detectors' :data:`TRIGGERS`)
    and, only when one of them is present, one pass of a single compiled expression made of the
    detectors that can match (compiled once per combination and cached). User and plugin patterns
    have no triggers, so with any of them every string gets that one pass.

    :param patterns: extra detectors, ``{name: regex}`` or a list of regexes (named ``user<i>``).
    :param emails: also mask e-mail addresses.
    :param phones: also mask phone numbers.
    :param enabled: ``False`` makes every method return its input unchanged.
    """

    def __init__(self, patterns: Mapping[str, str] | Iterable[str] | None = None, *, emails: bool = False,
                 phones: bool = False, enabled: bool = True):
        self.enabled = enabled
        detectors = dict(BUILTIN_PATTERNS)
        if emails:
            detectors["email"] = OPTIONAL_PATTERNS["email"]
        if phones:
            detectors["phone"] = OPTIONAL_PATTERNS["phone"]
        extra = dict(patterns) if isinstance(patterns, Mapping) else \
            {f"user{i}": p for i, p in enumerate(patterns or [])}
        for name, rx in extra.items():
            try:
                re.compile(rx)
            except (re.error, TypeError) as exc:
                raise ValueError(f"redaction pattern {name!r} is not a valid regular expression: {exc}") from None
            detectors[str(name)] = str(rx)
        self.detectors = detectors
        self.names: list[str] = list(detectors)
        self._group_names = {f"d{i}": n for i, n in enumerate(self.names)}
        self._triggered = [(i, *TRIGGERS[n]) for i, n in enumerate(self.names) if n in TRIGGERS]
        self._always = tuple(i for i, n in enumerate(self.names) if n not in TRIGGERS)
        self._compiled: dict[tuple[int, ...], re.Pattern[str] | None] = {}
        self._keys: dict[str, bool] = {}
        #: every detector in one expression (for callers that want the whole set)
        self.pattern = self._expression(tuple(range(len(self.names))))
        self._prefilter: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]] | None = None
        self._hex_clean = False
        if all(n in PREFILTER for n in self.names):  # user and plugin patterns: every record is walked
            exact = dict.fromkeys(lit for n in self.names for lit in PREFILTER[n][0])
            lowered = dict.fromkeys([*(lit for n in self.names for lit in PREFILTER[n][1]),
                                     *PREFILTER["secret_field"][1], *_KEY_LITERALS])
            self._prefilter = (_grouped(exact, _EXACT_ANCHORS), _grouped(lowered, _ANCHORS))
            # ids, keys and digests (lower-case hex) cannot hold a literal that has a non-hex character
            self._hex_clean = all(lit.strip(_HEX) for lit in [*exact, *lowered])
        self._clean: set[str] = set()
        self._clean_chars = 0

    def may_change(self, text: str) -> bool:
        """Whether redaction could change any string that ``text`` holds (a record's JSON, or its
        strings joined): ``False`` means :meth:`value` returns the record as it is, so the record
        need not be walked. One pass of substring tests over the whole text (:data:`PREFILTER`);
        ``True`` whenever a user or plugin pattern is configured. JSON escaping never hides a
        literal (they hold no character JSON escapes)."""
        if not self.enabled:
            return False
        if self._prefilter is None:
            return True
        exact, groups = self._prefilter
        for anchor, lits in exact.items():
            if anchor in text:
                for lit in lits:
                    if lit in text:
                        return True
        low = text.lower() if text.isascii() else text.translate(FOLD).lower()
        for anchor, lits in groups.items():
            if anchor in low:
                for lit in lits:
                    if lit in low and (lit != "token" or _TOKEN_END.search(low)):
                        return True
        return False

    def may_change_any(self, texts: Iterable[str | None]) -> bool:
        """``may_change("\\n".join(t for t in texts if t))``, text by text: no literal holds a line
        break (nor does the ``token`` rule look past one), so a literal is in the joined text exactly
        when it is in one of the texts. A text already found clean is not tested again, nor one of
        lower-case hexadecimal digits only (no literal is made of them alone)."""
        if not self.enabled:
            return False
        if self._prefilter is None:
            return True
        clean = self._clean
        for text in texts:
            if not text or text in clean:
                continue
            if self._hex_clean and not text.strip(_HEX):
                continue
            if self.may_change(text):
                return True
            if len(text) <= CLEAN_LENGTH:
                if self._clean_chars > CLEAN_CHARS or len(clean) >= CLEAN_TEXTS:
                    clean.clear()  # (another thread may add meanwhile: the bound is approximate)
                    self._clean_chars = 0
                clean.add(text)
                self._clean_chars += len(text)
        return False

    def _expression(self, active: tuple[int, ...]) -> re.Pattern[str] | None:
        rx = self._compiled.get(active, False)
        if rx is False:
            # each detector in one named group d<i> (user patterns may contain groups of their own)
            parts = [f"(?P<d{i}>{self.detectors[self.names[i]]})" for i in active]
            rx = self._compiled[active] = re.compile("|".join(parts)) if parts else None
        return rx  # type: ignore[return-value]

    def _sub(self, m: re.Match[str]) -> str:
        name = self._group_names.get(m.lastgroup or "", "secret")
        if name == "secret_field":
            val = m.group("sf_val")
            if val.startswith('\\"'):
                q = '\\"'
            elif val[:1] in "\"'":
                q = val[0]
            else:
                q = ""
            return f"{m.group('sf_key')}{q}{MASK.format('secret')}{q}"
        if name == "secret_phrase":
            return f"{m.group('sp_key')}{MASK.format('secret')}"
        if name == "bearer":
            word = m.group(0).split(None, 1)[0]
            return f"{word} {MASK.format('token')}"
        return MASK.format(name)

    def text(self, value: str) -> str:
        """``value`` with every detected secret masked."""
        if not self.enabled or len(value) < MIN_LENGTH:
            return value
        low = value.lower()
        found: list[int] = []
        for i, gate, trig, case in self._triggered:
            if gate:
                for g in gate:
                    if g in value:
                        break
                else:
                    continue
            hay = value if case else low
            for t in trig:
                if t in hay:
                    found.append(i)
                    break
        if self._always:
            found = sorted([*self._always, *found])
        if not found:
            return value
        rx = self._expression(tuple(found))
        return rx.sub(self._sub, value) if rx is not None else value

    def _secret_key(self, key: Any) -> bool:
        hit = self._keys.get(key)
        if hit is None:
            hit = isinstance(key, str) and bool(_SECRET_KEY.match(key))
            if len(self._keys) < 4096:
                self._keys[key] = hit
        return hit

    def value(self, obj: Any, _depth: int = 0, *, clip: int | None = None) -> Any:
        """A copy of a JSON-like value with secrets masked (strings scanned, string values under
        secret keys masked); other types are returned as they are. With ``clip``, strings longer
        than that are cut first (``... [N more characters]``), so a 10 MB argument is neither
        scanned nor kept whole."""
        if not self.enabled:
            return _clipped(obj, clip) if clip is not None else obj
        t = type(obj)
        if t is str or isinstance(obj, str):
            if clip is not None and len(obj) > clip:
                obj = _clip_text(obj, clip)
            return self.text(obj)
        if t is not dict and t is not list and t is not tuple:
            return obj
        if _depth > MAX_DEPTH:
            return "[too deeply nested]"
        if t is dict:
            out = {}
            for k, v in obj.items():
                tv = type(v)
                if tv is str:
                    if not v or (_depth == 0 and k in SKIP_KEYS):
                        out[k] = v
                    elif self._secret_key(k):
                        out[k] = MASK.format("secret")
                    else:
                        out[k] = self.text(v if clip is None or len(v) <= clip else _clip_text(v, clip))
                elif tv is dict or tv is list or tv is tuple:
                    out[k] = self.value(v, _depth + 1, clip=clip)
                else:
                    out[k] = v
            return out
        return [self.value(v, _depth + 1, clip=clip) for v in obj]

    def __call__(self, obj: Any) -> Any:
        return self.value(obj)


def _clip_text(text: str, limit: int) -> str:
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def _clipped(obj: Any, limit: int, depth: int = 0) -> Any:
    if isinstance(obj, str):
        return _clip_text(obj, limit) if len(obj) > limit else obj
    if depth > MAX_DEPTH:
        return "[too deeply nested]"
    if isinstance(obj, dict):
        return {k: _clipped(v, limit, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clipped(v, limit, depth + 1) for v in obj]
    return obj


_DEFAULT: Redactor | None = None


def default_redactor() -> Redactor:
    """The built-in detectors alone (what a store uses when no runtime configured it)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Redactor()
    return _DEFAULT


def redact_text(text: str) -> str:
    """``text`` with the built-in detectors applied."""
    return default_redactor().text(text)


def from_config(config: Any, pm: Any = None) -> Redactor:
    """The redactor a runtime uses: built-ins, ``Config.options["redact"]`` and the patterns that
    plugins register through ``immunity_register_redaction_patterns``."""
    opts = (getattr(config, "options", None) or {}).get("redact")
    if opts is False:
        opts = {"enabled": False}
    opts = dict(opts or {}) if isinstance(opts, Mapping) else {}
    patterns: dict[str, str] = {}
    user = opts.get("patterns") or {}
    if isinstance(user, str):
        user = [user]
    if isinstance(user, Mapping):
        patterns.update({str(k): str(v) for k, v in user.items()})
    else:
        patterns.update({f"user{i}": str(p) for i, p in enumerate(user)})
    if pm is not None:
        try:
            for name, rx in pm.registry("redaction_patterns").items():
                patterns[f"plugin_{name}"] = rx.pattern if isinstance(rx, re.Pattern) else str(rx)
        except Exception:  # a broken registration is reported by the plugin manager; keep the rest
            pass
    return Redactor(patterns, emails=bool(opts.get("emails")), phones=bool(opts.get("phones")),
                    enabled=opts.get("enabled", True) is not False)
