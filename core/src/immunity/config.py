"""Runtime configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Config:
    """What a runtime was asked to do.

    :param domain: the default domain of runs (``"coding"``, ``"support"``, ...), or ``None``.
    :param store: where to store runs: a path, ``":memory:"``, ``"scheme:location"`` for a store
        plugin, or ``None`` to store nothing.
    :param fail_closed: re-raise errors from plugins instead of logging them and going on.
    :param step_budget_ms: time budget of the per-event hot path; a plugin that overruns it three
        times in a run is skipped for the rest of that run (recorded as a plugin error).
    :param verifiers: named verifiers to switch on besides the always-on ``rules``.
    :param selector: the intervention selector to use (``"default"``).
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
    verifiers: list[str] = field(default_factory=list)
    selector: str = "default"
    packs: list[Any] = field(default_factory=list)
    trusted_keys: list[str] = field(default_factory=list)
    max_interventions: int = 5
    cooldown_steps: int = 1
    max_consecutive_failures: int = 5
    observe_only: bool = False
    options: dict[str, Any] = field(default_factory=dict)
