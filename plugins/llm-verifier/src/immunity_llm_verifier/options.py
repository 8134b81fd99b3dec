"""The verifier's options and its criticality tiers.

Options come from ``Config.options["llm_verifier"]`` (``Runtime(verifiers=["llm"], llm_verifier={...})``).
Every setting can be given at the top level and overridden per tier (``tiers={"L3": {"model": ...}}``),
so L2 can use a cheap model with a short context and L3 a strong one with the whole run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from immunity.models import ActionType, Severity, Step

__all__ = ["L1", "L2", "L3", "Options", "TierSettings", "VerifierConfigError"]

L1, L2, L3 = "L1", "L2", "L3"

#: Settings a tier may override (everything else is run-wide).
TIER_KEYS = ("model", "base_url", "api_key", "api_key_env", "chat_model", "timeout_s", "context_steps",
             "max_chars", "max_output_tokens", "json_mode", "headers")


class VerifierConfigError(ValueError):
    """The verifier's options cannot work (no endpoint and no chat model, an unknown tier, ...)."""


@dataclass
class TierSettings:
    """How one tier checks a step: where, with which model, with how much of the run."""

    name: str
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    chat_model: Any = None
    timeout_s: float = 10.0
    context_steps: int = 6
    max_chars: int = 1200
    max_output_tokens: int = 300
    json_mode: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def key(self) -> str | None:
        """The API key: given directly, else read from the environment variable ``api_key_env``."""
        if self.api_key:
            return self.api_key
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        if self.chat_model is not None:
            return str(getattr(self.chat_model, "model_name", None) or getattr(self.chat_model, "model", None)
                       or type(self.chat_model).__name__)
        return "-"


def _actions(values: Any) -> frozenset[ActionType]:
    return frozenset(ActionType.parse(v) for v in (values or ()))


@dataclass
class Options:
    """Everything the verifier was asked to do (see the README's option table)."""

    l2_actions: frozenset[ActionType] = frozenset({ActionType.EDIT, ActionType.EXECUTE})
    l3_actions: frozenset[ActionType] = frozenset({ActionType.DONE})
    l3_side_effects: bool = True
    l3_destructive: bool = True
    needs_verification: str = L2
    pre_execution: bool = False
    criticality: Callable[..., str | None] | None = None
    tiers: dict[str, TierSettings] = field(default_factory=dict)
    max_calls: int = 20
    max_tokens: int = 60_000
    max_failures: int = 3
    retries_429: int = 1
    block_at: Severity = Severity.ERROR
    max_severity: Severity = Severity.ERROR
    min_confidence: float = 0.0
    transport: Any = None

    @classmethod
    def from_config(cls, config: Any) -> Options:
        raw = dict((getattr(config, "options", None) or {}).get("llm_verifier") or {})
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Options:
        raw = dict(raw)
        tiers_raw = dict(raw.pop("tiers", None) or {})
        unknown_tiers = set(tiers_raw) - {L2, L3}
        if unknown_tiers:
            raise VerifierConfigError(f"unknown tier(s) {sorted(unknown_tiers)}: the LLM tiers are L2 and L3")
        base = {k: raw[k] for k in TIER_KEYS if k in raw}
        opts = cls(
            max_calls=int(raw.get("max_calls", 20)),
            max_tokens=int(raw.get("max_tokens", 60_000)),
            max_failures=int(raw.get("max_failures", 3)),
            retries_429=int(raw.get("retries_429", 1)),
            block_at=Severity(str(raw.get("block_at", "error"))),
            max_severity=Severity(str(raw.get("max_severity", "error"))),
            min_confidence=float(raw.get("min_confidence", 0.0)),
            criticality=raw.get("criticality"),
            transport=raw.get("transport"),
        )
        l2 = dict(tiers_raw.get(L2) or {})
        l3 = dict(tiers_raw.get(L3) or {})
        if "actions" in l2:
            opts.l2_actions = _actions(l2.pop("actions"))
        if "actions" in l3:
            opts.l3_actions = _actions(l3.pop("actions"))
        opts.l3_side_effects = bool(l3.pop("side_effects", True))
        opts.l3_destructive = bool(l3.pop("destructive", True))
        opts.pre_execution = bool(l3.pop("pre_execution", raw.get("pre_execution", False)))
        opts.needs_verification = str(raw.get("needs_verification", L2))
        # defaults that make L2 cheap and L3 thorough; any of them can be overridden
        defaults = {L2: {"context_steps": 4, "max_chars": 800},
                    L3: {"context_steps": 16, "max_chars": 2000, "max_output_tokens": 400}}
        for name, extra in ((L2, l2), (L3, l3)):
            bad = set(extra) - set(TIER_KEYS)
            if bad:
                raise VerifierConfigError(f"unknown option(s) {sorted(bad)} in tier {name}; a tier sets "
                                          f"{', '.join(TIER_KEYS)}, actions (and for L3 side_effects, "
                                          "destructive, pre_execution)")
            settings = {**defaults[name], **base, **extra}
            opts.tiers[name] = TierSettings(name=name, **settings)
        for name, tier in opts.tiers.items():
            if tier.chat_model is None and not tier.base_url:
                raise VerifierConfigError(f"tier {name} has neither base_url (an OpenAI-compatible endpoint) "
                                          "nor chat_model")
            if tier.chat_model is None and not tier.model:
                raise VerifierConfigError(f"tier {name} calls {tier.base_url} but names no model")
            if tier.timeout_s <= 0:
                raise VerifierConfigError(f"tier {name}: timeout_s must be positive")
        return opts

    def tier_of(self, step: Step | None, run: Any = None, state: Any = None) -> str:
        """The criticality tier of ``step``: ``L1`` (rules only, no LLM call), ``L2`` or ``L3``."""
        if step is None:
            return L1
        if self.criticality is not None:
            chosen = self.criticality(step, run, state)
            if chosen in (L1, L2, L3):
                return str(chosen)
        if step.action_type in self.l3_actions or step.data.get("final"):
            return L3
        if step.side_effect and self.l3_side_effects:
            return L3
        if step.data.get("destructive") and self.l3_destructive:
            return L3
        if step.action_type in self.l2_actions:
            return L2
        if step.data.get("needs_verification") and self.needs_verification in (L2, L3):
            return self.needs_verification
        return L1
