"""Framework-neutral models: what every hook receives and what the store keeps.

Adapters translate a framework's native events into these; plugins only ever see these. A
framework's own objects may ride along on ``raw`` fields, which nobody is promised anything about
and which are never stored.
"""

from __future__ import annotations

import os
import random
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

__all__ = [
    "ActionType",
    "Checkpoint",
    "Event",
    "EventKind",
    "FailurePattern",
    "Intervention",
    "InterventionKind",
    "Outcome",
    "PatternPack",
    "Recovery",
    "RecoveryKind",
    "Run",
    "Severity",
    "Step",
    "Verdict",
    "new_event_id",
    "new_id",
]


_rng = random.Random(os.urandom(16))


def _reseed_ids() -> None:
    _rng.seed(os.urandom(16))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


def new_id(prefix: str = "") -> str:
    """A random 64-bit identifier, optionally prefixed (``run_3f2a...``). Drawn from a generator
    seeded from the OS once per process (and again after a fork), so making one costs no system
    call: ids are made for every event."""
    return f"{prefix}{_rng.getrandbits(64):016x}"


def new_event_id() -> str:
    """An event's id: the time in milliseconds, then 48 random bits (``ev_`` + 23 hex digits).
    Ordered by time, so the store's primary-key index on event ids grows at its end: a random id
    lands on a random page of that index, and each commit rewrites one page per event."""
    return f"ev_{int(time.time() * 1000):011x}{_rng.getrandbits(48):012x}"


def now() -> float:
    return time.time()


class ActionType(StrEnum):
    """Universal action types: what an agent step *does*, whatever the framework or domain.

    Domain plugins map native tool calls (name *and* arguments) to these. Examples per domain
    (coding / support / research / data):

    - ``SEARCH``: read without changing anything. ``grep -rn``, ``cat``, ``ls`` / ``get_user_details``,
      ``get_reservation_details`` / ``web_search``, ``read_url`` / ``SELECT``, ``read_schema``.
    - ``EDIT``: change state. ``sed -i``, ``apply_patch``, writing a file / ``cancel_reservation``,
      ``update_reservation_flights`` (side effects) / ``take_notes`` / ``INSERT``, ``DROP TABLE``.
    - ``EXECUTE``: run something whose effect is neither a read nor a check. ``python script.py``,
      ``pip install`` / ``calculate`` / ``run_code`` / ``run_pipeline``.
    - ``VERIFY``: check work. ``pytest -x``, ``python -m unittest`` / ``check_policy`` /
      ``verify_claim`` / ``validate``, row-count checks.
    - ``PLAN``: reason or lay out steps with no external effect. A thought-only message,
      ``think`` / ``outline``.
    - ``RESPOND``: talk to the user without finishing. A clarifying question, ``send_reply`` /
      ``draft_reply`` / an interim summary / a report of results.
    - ``DELEGATE``: hand work to another agent (handoffs, crew delegation, multi-agent messages).
    - ``ESCALATE``: hand the case to a human. ``transfer_to_human_agents``, ``escalate``. Kept apart
      from ``DONE``: escalating is not finishing.
    - ``DONE``: declare the task finished. ``git commit`` / ``submit``, ``close_ticket`` / a final
      answer / ``submit_report`` / ``complete``.
    - ``OTHER``: nothing above fits (counted, so unmapped tools are visible).
    """

    SEARCH = "SEARCH"
    EDIT = "EDIT"
    EXECUTE = "EXECUTE"
    VERIFY = "VERIFY"
    PLAN = "PLAN"
    RESPOND = "RESPOND"
    DELEGATE = "DELEGATE"
    ESCALATE = "ESCALATE"
    DONE = "DONE"
    OTHER = "OTHER"

    @classmethod
    def parse(cls, value: Any) -> ActionType:
        """Parse a loosely written action type; unknown values become ``OTHER``."""
        if isinstance(value, ActionType):
            return value
        key = str(value or "").strip().upper()
        aliases = {"HANDOFF": "DELEGATE", "TEST": "VERIFY", "READ": "SEARCH", "WRITE": "EDIT", "RUN": "EXECUTE"}
        key = aliases.get(key, key)
        try:
            return cls(key)
        except ValueError:
            return cls.OTHER


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, value: Any) -> Outcome:
        if isinstance(value, Outcome):
            return value
        if isinstance(value, bool):
            return cls.SUCCESS if value else cls.FAILURE
        key = str(value or "unknown").strip().lower()
        aliases = {"ok": "success", "passed": "success", "resolved": "success", "fail": "failure",
                   "failed": "failure", "error": "failure", "": "unknown", "none": "unknown"}
        key = aliases.get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise ValueError(f"unknown outcome {value!r}: use success, failure or unknown") from None


class EventKind(StrEnum):
    RUN_START = "run_start"
    RUN_END = "run_end"
    MODEL_START = "model_start"
    MODEL_END = "model_end"
    TOOL_START = "tool_start"
    TOOL_END = "tool_end"
    HANDOFF = "handoff"
    FINAL_ANSWER = "final_answer"
    NODE_START = "node_start"
    NODE_END = "node_end"
    MESSAGE = "message"
    CUSTOM = "custom"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, validate_assignment=False)


class Event(_Model):
    """One thing that happened in a run, as the adapter saw it.

    ``kind`` says which fields matter: model calls carry ``messages`` / ``output`` / ``usage`` /
    ``model``; tool calls carry ``tool``, ``arguments`` and, at the end, ``result`` or ``error``
    (and ``return_code`` for shell tools); handoffs carry ``agent`` and ``target``.
    """

    kind: EventKind
    run_id: str = ""
    event_id: str = Field(default_factory=new_event_id)
    ts: float = Field(default_factory=now)
    agent: str | None = None
    node: str | None = None
    model: str | None = None
    messages: list[dict[str, Any]] | None = None
    output: str | None = None
    usage: dict[str, int] | None = None
    cost: float | None = None
    tool: str | None = None
    tool_call_id: str | None = None
    arguments: dict[str, Any] | None = None
    result: str | None = None
    error: str | None = None
    return_code: int | None = None
    target: str | None = None
    outcome: Outcome | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    raw: Any = Field(default=None, exclude=True, repr=False)

    @field_validator("arguments", mode="before")
    @classmethod
    def _coerce_arguments(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, str):
            import json

            try:
                parsed = json.loads(value)
            except ValueError:
                return {"input": value}
            return parsed if isinstance(parsed, dict) else {"input": parsed}
        return {"input": value}

    @property
    def failed(self) -> bool:
        return bool(self.error) or (self.return_code not in (None, 0))


class Step(_Model):
    """One agent action with its results: a tool call and its outcome, a message, a handoff."""

    run_id: str = ""
    index: int = 0
    action_type: ActionType = ActionType.OTHER
    confidence: float = 1.0
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    text: str | None = None
    result: str | None = None
    error: str | None = None
    return_code: int | None = None
    agent: str | None = None
    side_effect: bool = False
    tokens: int = 0
    cost: float = 0.0
    ts: float = Field(default_factory=now)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action_type", mode="before")
    @classmethod
    def _parse_action(cls, value: Any) -> ActionType:
        return ActionType.parse(value)

    @property
    def failed(self) -> bool:
        return bool(self.error) or (self.return_code not in (None, 0))


class Run(_Model):
    """A run of an agent on one task."""

    run_id: str = Field(default_factory=lambda: new_id("run_"))
    task: str | None = None
    task_id: str | None = None
    domain: str | None = None
    framework: str | None = None
    agent: str | None = None
    outcome: Outcome = Outcome.UNKNOWN
    failure_step: int | None = None
    source: str | None = None
    started_at: float = Field(default_factory=now)
    ended_at: float | None = None
    tokens: int = 0
    cost: float = 0.0
    steps: int = 0
    status: str = "running"
    final_answer: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("outcome", mode="before")
    @classmethod
    def _parse_outcome(cls, value: Any) -> Outcome:
        return Outcome.parse(value)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ["info", "warning", "error", "critical"].index(self.value)


class Verdict(_Model):
    """What a verifier concluded about an event or step.

    ``ok=False`` with ``block=True`` asks the adapter to stop the action (a tool call is not
    executed and the model is told ``message``/``hint``).
    """

    ok: bool = True
    error_class: str | None = None
    severity: Severity = Severity.INFO
    message: str = ""
    hint: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    plugin: str | None = None
    block: bool = False
    run_id: str | None = None
    step: int | None = None
    ts: float = Field(default_factory=now)


class InterventionKind(StrEnum):
    HINT = "hint"          # text injected into the next model call only
    BLOCK = "block"        # the pending action is not executed; the model is told why
    REWRITE = "rewrite"    # the pending action's arguments are replaced
    ASK_HUMAN = "ask_human"
    STOP = "stop"          # end the run cleanly with ``text`` as the final answer
    WARN = "warn"          # record only


class Intervention(_Model):
    intervention_id: str = Field(default_factory=lambda: new_id("iv_"))
    kind: InterventionKind = InterventionKind.HINT
    text: str = ""
    arguments: dict[str, Any] | None = None
    error_class: str | None = None
    pattern_id: str | None = None
    verdict_plugin: str | None = None
    variant: str | None = None
    source: str | None = None
    run_id: str | None = None
    step: int | None = None
    ts: float = Field(default_factory=now)
    delivered: bool = False
    outcome: str | None = None


class RecoveryKind(StrEnum):
    RETRY = "retry"          # run the failed step again with a hint
    ROLLBACK = "rollback"    # go back to the last verified checkpoint, then retry with a hint
    FALLBACK = "fallback"    # use another model / tool
    SKIP = "skip"            # go on without the step's result
    ABORT = "abort"          # end the run


class Recovery(_Model):
    recovery_id: str = Field(default_factory=lambda: new_id("rc_"))
    kind: RecoveryKind = RecoveryKind.RETRY
    hint: str | None = None
    checkpoint_id: str | None = None
    max_attempts: int = 1
    delay_s: float = 0.0
    fallback: str | None = None
    reason: str = ""
    run_id: str | None = None
    step: int | None = None
    ts: float = Field(default_factory=now)


class Checkpoint(_Model):
    """A point a run can be rolled back to; ``ref`` is the framework's own handle (a LangGraph
    checkpoint config, a CrewAI checkpoint path, a serialised LlamaIndex context...)."""

    checkpoint_id: str = Field(default_factory=lambda: new_id("cp_"))
    run_id: str = ""
    step: int = 0
    verified: bool = False
    ref: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=now)


class FailurePattern(_Model):
    """A failure pattern learned from populations of runs (or written by hand)."""

    pattern_id: str = Field(default_factory=lambda: new_id("fp_"))
    error_class: str = "unknown"
    description: str = ""
    domain: str | None = None
    vector: list[float] = Field(default_factory=list)
    predicates: dict[str, Any] = Field(default_factory=dict)
    position: float | None = None
    support: int = 0
    weight: float = 1.0
    examples: list[str] = Field(default_factory=list)
    intervention: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: where a loaded pattern's vector is: a row of its pack's float32 matrix (see
    #: ``immunity.learning.packs.pattern_matrix``); ``vector`` stays empty, the vector is held once
    _vec: Any = PrivateAttr(default=None)


class PatternPack(_Model):
    """A data-only bundle of failure patterns plus its manifest (see ``immunity.learning.packs``)."""

    format_version: int = 1
    name: str
    version: str = "0.1.0"
    domain: str | None = None
    created_with: str | None = None
    embedder: str | None = None
    dimension: int = 0
    threshold: float | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    patterns: list[FailurePattern] = Field(default_factory=list)
    interventions: dict[str, list[str]] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    content_hash: str | None = None
    #: ``{"alg": "ed25519", "key": <public key>, "value": <signature of the content hash>}`` (see
    #: ``immunity.learning.signing``); not covered by the content hash.
    signature: dict[str, Any] | None = None
    #: where the pack came from, set when it is loaded: ``None`` (built in this process by code),
    #: ``"file"`` (read from a file), ``"plugin"`` (a file an installed plugin ships and registers)
    _origin: str | None = PrivateAttr(default=None)
    #: the public key whose signature over the content hash was verified at load, if any
    _signer: str | None = PrivateAttr(default=None)
    #: the patterns' vectors as one float32 matrix, memory-mapped when the pack came from a pack
    #: directory; each loaded pattern points at its row; a pattern's own ``vector`` list, when not
    #: empty, takes precedence (see ``immunity.learning.packs.pattern_matrix``)
    _vectors: Any = PrivateAttr(default=None)
    #: the pack directory it was loaded from (where a saved vector index is looked for), if any
    _dir: Any = PrivateAttr(default=None)


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schema of every model, by name (``immunity schema`` prints them; ``docs/schemas/``
    holds the committed copies, checked by a test)."""
    models: list[type[BaseModel]] = [Event, Step, Run, Verdict, Intervention, Recovery, Checkpoint, FailurePattern,
                                     PatternPack]
    return {m.__name__: m.model_json_schema() for m in models}
