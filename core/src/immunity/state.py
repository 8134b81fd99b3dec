"""Per-run signals, updated incrementally: O(1) work per step, no model calls.

Every verifier, matcher and policy reads the same :class:`RunState`, so a signal is computed once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, overload

from immunity.error_identity import benign_exit, output_of, step_error_identity
from immunity.models import ActionType, Step

_NUM = re.compile(r"0x[0-9a-f]+|\d+(\.\d+)?", re.I)
_HEX = re.compile(r"\b[0-9a-f]{8,}\b", re.I)
_PATH = re.compile(r"(/[\w.\-]+)+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_WS = re.compile(r"\s+")


def normalise_error(text: str | None, limit: int = 160) -> str:
    """An error message with the specifics (numbers, paths, quoted names, ids) taken out and
    lower-cased: a coarse form for features. The runtime's error identity (what counts as "the
    same error") is :func:`immunity.error_identity.error_identity`, which keeps far more."""
    if not text:
        return ""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    # the last line of a traceback is the informative one
    line = lines[-1] if lines else ""
    for ln in reversed(lines):
        if re.search(r"(error|exception|failed|not found|denied|invalid|cannot|unable)", ln, re.I):
            line = ln
            break
    line = _HEX.sub("<id>", line)
    line = _PATH.sub("<path>", line)
    line = _QUOTED.sub("<q>", line)
    line = _NUM.sub("<n>", line)
    return _WS.sub(" ", line).strip().lower()[:limit]


def _hash(text: str) -> str:
    """A 64-bit digest of a string (lone surrogates kept, so two different strings never encode
    alike). Digests are compared with each other within a process, never decoded or stored as
    keys across versions, so their values may change between versions."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _digest_text(*parts: str | None) -> str:
    """The digest of a tuple of strings: each part with its length in front (so no two tuples
    join to the same text), ``None`` written apart from any string."""
    return _hash("".join(["-|" if p is None else f"{len(p)}|{p}" for p in parts]))


#: One encoder for every signature (``json.dumps`` with options builds a new one per call).
_ARGS_JSON = json.JSONEncoder(sort_keys=True, default=str)


def _encode_arguments(arguments: Any) -> str:
    try:
        return _ARGS_JSON.encode(arguments)
    except (TypeError, ValueError):  # not encodable as JSON (mixed key types, a cycle)
        return "repr:" + repr(arguments)


def action_signature(step: Step) -> str:
    """Identical-action signature: tool + exact arguments (or text)."""
    return _action_signature(step, _encode_arguments(step.arguments))


def near_signature(step: Step) -> str:
    """Near-identical signature: tool + arguments with numbers and whitespace normalised."""
    return _near_signature(step.tool, _encode_arguments(step.arguments) if step.arguments else (step.text or "")[:500])


def signatures(step: Step) -> tuple[str, str]:
    """``(action_signature, near_signature)`` of a step, with the arguments encoded once."""
    blob = _encode_arguments(step.arguments)
    return _action_signature(step, blob), _near_signature(step.tool, blob if step.arguments else (step.text or "")[:500])


def _action_signature(step: Step, blob: str) -> str:
    # a step without a tool is signed by its text, up to 500 characters
    return _digest_text(step.tool, blob, None if step.tool else (step.text or "")[:500])


#: Near signatures already computed, keyed on the tool and the raw body: agents repeat their
#: calls, and the two regular expressions are most of a near signature's cost. Bodies longer than
#: ``_NEAR_CACHE_BODY`` characters are not kept, so the cache holds at most about 4 MB.
_NEAR_CACHE: dict[tuple[str | None, str], str] = {}
_NEAR_CACHE_LIMIT = 4096
_NEAR_CACHE_BODY = 1024


def _near_signature(tool: str | None, body: str) -> str:
    """The digest of ``body`` (the arguments' JSON, or the text) with numbers and runs of
    whitespace normalised and the case folded."""
    key = (tool, body)
    near = _NEAR_CACHE.get(key)
    if near is None:
        near = _digest_text(tool, " ".join(_NUM.sub("<n>", body.lower()).split()))  # runs of whitespace -> " "
        if len(body) <= _NEAR_CACHE_BODY:
            if len(_NEAR_CACHE) >= _NEAR_CACHE_LIMIT:
                _NEAR_CACHE.clear()
            _NEAR_CACHE[key] = near
    return near


#: Steps a run keeps in memory (older ones are in the store); the signals cover the whole run.
STEP_WINDOW = 2000
#: Distinct signatures / results a run remembers before it forgets the ones seen only once.
SIGNAL_LIMIT = 50_000


class StepWindow:
    """The steps of a run, indexed by their absolute step index, keeping only the last ``limit``
    in memory so a long run's memory stays bounded (a million-step run would otherwise hold every
    step). ``len()`` is the number of steps in the run; an index older than the window raises
    :class:`IndexError`, slices and iteration give the steps still held."""

    def __init__(self, limit: int = STEP_WINDOW) -> None:
        self.limit = max(1, int(limit))
        self._items: deque[Step] = deque()
        self._offset = 0  # absolute index of self._items[0]

    def append(self, step: Step) -> None:
        self._items.append(step)
        if len(self._items) > self.limit:
            self.trim(self.limit)

    def held(self) -> deque[Step]:
        """The steps still held in memory."""
        return self._items

    def trim(self, keep: int) -> None:
        """Let go of all but the last ``keep`` steps held (a run that ended: the store has them)."""
        while len(self._items) > max(0, keep):
            self._items.popleft()
            self._offset += 1

    @property
    def offset(self) -> int:
        """The absolute index of the oldest step still held."""
        return self._offset

    def __len__(self) -> int:
        return self._offset + len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Step]:
        return iter(self._items)

    def __reversed__(self) -> Iterator[Step]:
        return reversed(self._items)

    @overload
    def __getitem__(self, i: int) -> Step: ...

    @overload
    def __getitem__(self, i: slice) -> list[Step]: ...

    def __getitem__(self, i: int | slice) -> Step | list[Step]:
        n = len(self)
        if isinstance(i, slice):
            start, stop, stride = i.indices(n)
            start, stop = max(start, self._offset), max(stop, self._offset)
            return [self._items[k - self._offset] for k in range(start, stop, stride)]
        k = i + n if i < 0 else i
        if not self._offset <= k < n:
            raise IndexError(f"step {i} is not held in memory (steps {self._offset}..{n - 1} are)")
        return self._items[k - self._offset]

    def __repr__(self) -> str:
        return f"StepWindow({len(self)} steps, holding {self._offset}..{len(self) - 1})"


def _bound(counter: Counter[str] | dict[str, Any], limit: int = SIGNAL_LIMIT) -> None:
    """Keep a per-run table of signatures O(1): past ``limit`` entries, forget those seen once
    (oldest first; a signature that comes back starts again from 1)."""
    if len(counter) <= limit:
        return
    for key in [k for k, v in counter.items() if v == 1][: len(counter) - limit // 2]:
        del counter[key]
    while len(counter) > limit:  # everything repeats: drop the oldest
        del counter[next(iter(counter))]


@dataclass
class RunState:
    """Signals of one run so far. Updated by the runtime with :meth:`add_step` and :meth:`add_usage`."""

    run_id: str = ""
    task: str | None = None
    domain: str | None = None
    steps: StepWindow = field(default_factory=StepWindow)
    action_counts: Counter[str] = field(default_factory=Counter)
    ngrams: Counter[str] = field(default_factory=Counter)
    tool_counts: Counter[str] = field(default_factory=Counter)
    tool_failures: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    consecutive_failures: int = 0
    error_counts: Counter[str] = field(default_factory=Counter)
    error_repeats: Counter[str] = field(default_factory=Counter)
    last_error: str = ""
    last_error_text: str = ""
    signature_counts: Counter[str] = field(default_factory=Counter)
    near_counts: Counter[str] = field(default_factory=Counter)
    identical_streak: int = 0
    near_streak: int = 0
    ping_pong: int = 0
    steps_since_verify: int = 0
    edits_since_verify: int = 0
    verified_ok: int = 0
    verified_failed: int = 0
    last_verify_ok: bool | None = None
    results_seen: dict[str, None] = field(default_factory=dict)  # an ordered set, bounded
    steps_without_new_info: int = 0
    tokens: int = 0
    cost: float = 0.0
    model_calls: int = 0
    interventions: int = 0
    last_intervention_step: int | None = None
    last_hint: str | None = None
    hints_pending: list[str] = field(default_factory=list)
    stop_requested: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _failing_program: dict[str, str] = field(default_factory=dict)
    _recent: deque[str] = field(default_factory=lambda: deque(maxlen=4))
    _last_actions: deque[str] = field(default_factory=lambda: deque(maxlen=3))

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def last_step(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def add_usage(self, tokens: int = 0, cost: float = 0.0) -> None:
        self.tokens += int(tokens or 0)
        self.cost += float(cost or 0.0)
        self.model_calls += 1

    def add_step(self, step: Step) -> None:
        """Fold one completed step into the signals (O(1))."""
        step.index = len(self.steps)
        self.steps.append(step)
        act = step.action_type.value
        self.action_counts[act] += 1
        self._last_actions.append(act)
        acts = list(self._last_actions)
        if len(acts) >= 2:
            self.ngrams[">".join(acts[-2:])] += 1
        if len(acts) >= 3:
            self.ngrams[">".join(acts[-3:])] += 1
        if step.tool:
            self.tool_counts[step.tool] += 1

        failed = step.failed
        if failed and step.tool and benign_exit(step.arguments, step.return_code, step.error or step.result):
            # grep found nothing, diff found a difference: an answer, not a failure
            failed = False
            step.data["benign_exit"] = True
        ident = step_error_identity(step) if failed else None
        if step.tool and not step.data.get("blocked"):
            # a tool's circuit is about the program that fails: for a shell, ``pytest`` failing
            # after ``grep`` failed is not the same thing failing twice
            program = (ident.program or step.tool) if ident else step.tool
            same = self._failing_program.get(step.tool) == program
            self.tool_failures[step.tool] = (self.tool_failures[step.tool] + 1 if same else 1) if failed else 0
            self._failing_program[step.tool] = program if failed else ""
        if failed:
            self.errors += 1
            self.consecutive_failures += 1
            self.last_error = ident.key if ident else ""
            self.last_error_text = ident.text if ident else ""
            if ident:
                step.data["_error"] = ident.key
                self.error_counts[ident.key] += 1
                self.error_repeats[ident.key] += 1
                _bound(self.error_counts)
                _bound(self.error_repeats)
        else:
            self.consecutive_failures = 0
            if step.tool and not step.data.get("blocked") and \
                    (step.side_effect or step.action_type in (ActionType.EDIT, ActionType.EXECUTE)):
                # something may have changed (a file, an install, a booking): the same error seen
                # again is a new attempt, not the same one repeated
                self.error_repeats.clear()

        sig, near = signatures(step)
        prev_step = self.steps[-2] if len(self.steps) >= 2 else None
        prev_near = prev_step.data.get("_near") if prev_step is not None else None
        # A repeat is the same call *with the same result*: the same call answering something new
        # (a status that moved, a file that changed) is not a loop. A blocked repeat carries on the
        # streak of the call it repeats.
        outcome, outcome_hash = "", None
        if step.data.get("blocked") and prev_step is not None and prev_step.data.get("_sig") == sig:
            rsig = prev_step.data.get("_rsig", sig)
        elif step.tool:
            outcome = str(step.data.get("_error") or (step.error or step.result or "")[:2000])
            outcome_hash = _hash(outcome)
            rsig = _hash(f"{sig}|{outcome_hash}")
        else:
            rsig = sig
        prev = self._recent[-1] if self._recent else None
        self.identical_streak = self.identical_streak + 1 if rsig == prev else 1
        self.near_streak = self.near_streak + 1 if near == prev_near else 1
        # A<->B ping-pong: this step equals the one two back and differs from the last one
        if len(self._recent) >= 2 and rsig == self._recent[-2] and rsig != prev:
            self.ping_pong += 1
        elif rsig != prev:
            self.ping_pong = 0
        self._recent.append(rsig)
        step.data["_sig"] = sig
        step.data["_rsig"] = rsig
        step.data["_near"] = near
        self.signature_counts[sig] += 1
        self.near_counts[near] += 1
        if len(self.signature_counts) > SIGNAL_LIMIT or len(self.near_counts) > SIGNAL_LIMIT:
            _bound(self.signature_counts)
            _bound(self.near_counts)

        if step.action_type == ActionType.VERIFY:
            self.steps_since_verify = 0
            self.edits_since_verify = 0
            self.last_verify_ok = not failed and not step.data.get("check_failed")
            if not self.last_verify_ok:
                self.verified_failed += 1
            else:
                self.verified_ok += 1
        else:
            self.steps_since_verify += 1
            if step.action_type == ActionType.EDIT:
                self.edits_since_verify += 1

        # New information: a tool's output not seen before in this run. A change that succeeded
        # (an edit) is progress too; a model's own message neither brings nor withholds any.
        answer = output_of(step)[:2000]
        if not answer:
            info = None
        elif step.tool and outcome_hash is not None and answer == outcome:
            info = outcome_hash  # the output already digested for the repeat signature
        else:
            info = _hash(answer)
        if info is not None and info in self.results_seen and step.tool:
            step.data["_seen"] = True  # the same answer again
        if not step.tool:
            pass
        elif step.data.get("blocked"):
            self.steps_without_new_info += 1  # it did not run: it told nothing new
        elif step.action_type == ActionType.EDIT and not failed and not step.data.get("blocked"):
            self.steps_without_new_info = 0
            if info is not None:
                self.results_seen[info] = None
        elif info is None or info in self.results_seen:
            self.steps_without_new_info += 1
        else:
            self.results_seen[info] = None
            if len(self.results_seen) > SIGNAL_LIMIT:
                del self.results_seen[next(iter(self.results_seen))]
            self.steps_without_new_info = 0

        self.tokens += int(step.tokens or 0)
        self.cost += float(step.cost or 0.0)

    def relabel_last(self, action: ActionType) -> None:
        """Change the last step's action type (a model message that turned out to be the final
        answer), keeping the counts consistent."""
        step = self.steps[-1]
        old = step.action_type.value
        self.action_counts[old] -= 1
        self.action_counts[action.value] += 1
        if self._last_actions:
            self._last_actions[-1] = action.value
        step.action_type = action

    def summary(self) -> dict[str, Any]:
        """The scalar signals, for storing, explaining and learning."""
        return {
            "steps": self.n_steps,
            "errors": self.errors,
            "consecutive_failures": self.consecutive_failures,
            "identical_streak": self.identical_streak,
            "near_streak": self.near_streak,
            "ping_pong": self.ping_pong,
            "max_repeat": max(self.signature_counts.values(), default=0),
            "steps_since_verify": self.steps_since_verify,
            "edits_since_verify": self.edits_since_verify,
            "verified_ok": self.verified_ok,
            "verified_failed": self.verified_failed,
            "steps_without_new_info": self.steps_without_new_info,
            "tokens": self.tokens,
            "cost": round(self.cost, 6),
            "last_error": self.last_error,
            "last_error_text": self.last_error_text,
            "repeated_error": max(self.error_counts.values(), default=0),
            "max_tool_failures": max(self.tool_failures.values(), default=0),
        }
