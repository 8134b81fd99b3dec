"""Runtime configuration."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


@dataclass
class Config:
    """What a runtime was asked to do.

    :param domain: the default domain of runs (``"coding"``, ``"support"``, ...), or ``None``.
    :param store: where to store runs: a path, ``":memory:"``, ``"scheme:location"`` for a store
        plugin, or ``None`` to store nothing.
    :param fail_closed: re-raise errors from plugins instead of logging them and going on.
    :param step_budget_ms: wall-time budget of one plugin's per-event hook call (garbage-collection
        pauses excluded). A plugin that is not trusted to be fast runs on a worker thread and is
        abandoned for the call when it overruns; a plugin that overruns ``max_overruns`` times is
        skipped for the rest of the runtime's life (recorded as a plugin error, listed in
        ``run.metadata["skipped_plugins"]`` and shown by ``immunity runs show``). Core's built-ins
        are never skipped. ``0`` switches the budget off.
    :param max_overruns: overruns of the step budget after which a plugin is skipped.
    :param hook_timeout_ms: how long a runtime waits for a plugin's configure / unconfigure /
        registration hook (run on a worker thread) before going on without it.
    :param verifiers: named verifiers to switch on besides the always-on ``rules``.
    :param selector: the intervention selector to use: ``"bandit"`` (the rules' choice of action with a
        learned choice of hint wording, see :mod:`immunity.interventions.selector`) or ``"default"``
        (the rules alone).
    :param packs: pattern packs to match against (paths or installed pack names).
    :param trusted_keys: public keys (base64 ed25519) whose signed packs may put their own hint text
        into prompts; see :mod:`immunity.learning.signing` (``$IMMUNITY_TRUSTED_KEYS`` adds more).
    :param max_interventions: at most this many interventions per run (tolerance layer).
    :param cooldown_steps: at least this many steps between two hints.
    :param max_consecutive_failures: the circuit breaker opens after this many failed steps in a row.
    :param observe_only: verify and record, but never intervene or recover (for scoring and
        replays: the run is fed exactly as it happened).
    :param options: free-form options for plugins, keyed by plugin name.
    """

    domain: str | None = None
    store: str | None = None
    fail_closed: bool = False
    step_budget_ms: float = 50.0
    max_overruns: int = 3
    hook_timeout_ms: float = 10000.0
    verifiers: list[str] = field(default_factory=list)
    selector: str = "bandit"
    packs: list[Any] = field(default_factory=list)
    trusted_keys: list[str] = field(default_factory=list)
    max_interventions: int = 5
    cooldown_steps: int = 1
    max_consecutive_failures: int = 5
    observe_only: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def sanitize(self) -> list[str]:
        """Replace every value of the wrong type (or out of range) by its default; one line per
        value replaced. A runtime logs these as warnings (or raises when ``fail_closed``)."""
        problems: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            fixed = _fix(f.name, value, default)
            if fixed is not _BAD:
                if fixed is not value:
                    setattr(self, f.name, fixed)
                continue
            problems.append(f"{f.name}={value!r:.80} is not valid; using the default {default!r}")
            setattr(self, f.name, default)
        return problems


_BAD = object()


def _fix(name: str, value: Any, default: Any) -> Any:
    """``value`` (possibly converted to the field's type), or ``_BAD``."""
    if name in ("domain", "store"):
        return value if value is None or (isinstance(value, str) and value) else _BAD
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _BAD
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _BAD
        if not math.isfinite(value) or value < 0:
            return _BAD
        return value if isinstance(default, float) or isinstance(value, int) else _BAD
    if isinstance(default, str):
        return value if isinstance(value, str) and value else _BAD
    if isinstance(default, list):
        if value is None:
            return []
        if isinstance(value, str):  # verifiers="llm"
            return [value]
        return list(value) if isinstance(value, list | tuple) else _BAD
    if isinstance(default, dict):
        return value if isinstance(value, dict) else ({} if value is None else _BAD)
    return value
