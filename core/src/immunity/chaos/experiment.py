"""A chaos experiment: which faults, on which calls, with which seed (TOML or a dict)::

    name = "refund-api-flaky"
    seed = 7

    [[fault]]
    kind = "http_429"          # latency | exception | http_429 | http_503 | timeout | truncate |
    target = "tool"            #   wrong_output | repeat (model only)
    names = ["refund"]         # tools it applies to (default: every tool)
    probability = 0.3          # per call, drawn from the seed
    retry_after_s = 2

    [[fault]]
    kind = "wrong_output"
    target = "tool"
    names = ["get_order_details"]
    calls = [0]                # or: exactly these calls of each named tool (0 = the first)

    [[fault]]
    kind = "repeat"
    target = "model"
    probability = 0.1
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Fault kinds: what each does to the call it lands on.
FAULT_KINDS: dict[str, str] = {
    "latency": "the call is delayed by latency_s (then runs normally)",
    "exception": "the call raises RuntimeError(message)",
    "http_429": "the call raises an HTTP 429 error carrying Retry-After: retry_after_s",
    "http_503": "the call raises an HTTP 503 error carrying Retry-After: retry_after_s",
    "timeout": "the call raises TimeoutError after sleep_s (default 0: the timeout is reported, not waited)",
    "truncate": "the output is cut to keep (a fraction, default 0.5) of its characters",
    "wrong_output": "a number in the output is changed to a plausible wrong value (x0.5, x0.8 or x1.25)",
    "repeat": "the model answers with its previous answer again (model calls only)",
}


class ExperimentError(ValueError):
    pass


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    target: str = "tool"
    names: tuple[str, ...] = ()
    probability: float = 1.0
    calls: tuple[int, ...] | None = None
    max_injections: int | None = None
    latency_s: float = 0.2
    sleep_s: float = 0.0
    retry_after_s: float = 1.0
    keep: float = 0.5
    message: str = "injected fault"

    def applies_to(self, target: str, name: str) -> bool:
        return self.target == target and (not self.names or name in self.names)


@dataclass
class Experiment:
    name: str
    seed: int = 0
    faults: list[FaultSpec] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        faults = []
        for i, f in enumerate(data.get("fault", data.get("faults", []))):
            kind = f.get("kind")
            if kind not in FAULT_KINDS:
                raise ExperimentError(f"fault {i + 1}: unknown kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
            target = f.get("target", "model" if kind == "repeat" else "tool")
            if target not in ("tool", "model"):
                raise ExperimentError(f"fault {i + 1}: target must be 'tool' or 'model', got {target!r}")
            if kind == "repeat" and target != "model":
                raise ExperimentError(f"fault {i + 1}: 'repeat' applies to model calls only")
            p = float(f.get("probability", 1.0))
            if not 0 <= p <= 1:
                raise ExperimentError(f"fault {i + 1}: probability must be in [0, 1]")
            names = f.get("names", f.get("name", ()))
            names = (names,) if isinstance(names, str) else tuple(names)
            calls = f.get("calls")
            known = {k for k in FaultSpec.__dataclass_fields__} | {"name"}
            unknown = set(f) - known
            if unknown:
                raise ExperimentError(f"fault {i + 1}: unknown field(s) {', '.join(sorted(unknown))}")
            opts = {k: f[k] for k in ("max_injections", "latency_s", "sleep_s", "retry_after_s", "keep", "message")
                    if k in f}
            faults.append(FaultSpec(kind=kind, target=target, names=names, probability=p,
                                    calls=None if calls is None else tuple(int(c) for c in calls), **opts))
        if not faults:
            raise ExperimentError("an experiment needs at least one [[fault]]")
        return cls(name=str(data.get("name", "experiment")), seed=int(data.get("seed", 0)), faults=faults)

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ExperimentError(f"cannot read experiment {path}: {exc}") from exc
        data.setdefault("name", Path(path).stem)
        return cls.from_dict(data)
