"""Fault injection at the call level: :meth:`Chaos.tool` and :meth:`Chaos.model` wrap the
callables a protected agent calls; every decision comes from the experiment's seed and the call's
position (the n-th call of that tool), so the same experiment on the same agent injects the same
faults.

Which run a fault landed in is learnt from immunity's own events: the built-in plugin
:mod:`immunity.chaos.plugin` notes the current run on every event while an experiment is active
(and does nothing otherwise), and each injection is stored in the run's store as a row of
``chaos_injections``, so the survival report can compare it with the run's verdicts, interventions
and outcome.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import inspect
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from immunity.chaos.experiment import Experiment, FaultSpec
from immunity.models import new_id

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_FACTORS = (0.5, 0.8, 1.25)


class ChaosHTTPError(RuntimeError):
    """An injected HTTP error, shaped like the errors of HTTP clients and model SDKs: a
    ``status_code``, ``headers`` with ``Retry-After`` and the status in the message."""

    def __init__(self, status_code: int, retry_after_s: float, what: str):
        reason = {429: "Too Many Requests", 503: "Service Unavailable"}.get(status_code, "HTTP error")
        self.status_code = status_code
        self.headers = {"Retry-After": f"{retry_after_s:g}"}
        super().__init__(f"Error code: {status_code} - {reason} from {what}; Retry-After: {retry_after_s:g}")


@dataclass
class Injection:
    injection_id: str
    experiment: str
    fault: str
    target: str
    name: str
    call: int
    ts: float
    run_id: str | None = None
    detail: str = ""


_current_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("immunity_chaos_run", default=None)


class Chaos:
    """An active experiment: wraps callables and records what it injected."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.injections: list[Injection] = []
        self.stores: set[str] = set()
        self._counts: dict[tuple[str, str], int] = {}
        self._fired: dict[int, int] = {}
        self._last_model: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last_run: str | None = None
        self._runtimes: dict[str, Any] = {}

    # -------------------------------------------------------------------- run context (from the plugin)
    def note_run(self, run_id: str, runtime: Any = None) -> None:
        _current_run.set(run_id)
        self._last_run = run_id
        if runtime is not None:
            self._runtimes[run_id] = runtime
            path = getattr(getattr(runtime, "store", None), "path", None)
            if path and path != ":memory:":
                self.stores.add(os.path.abspath(path))

    def _run_id(self) -> str | None:
        return _current_run.get() or self._last_run

    # -------------------------------------------------------------------- decisions
    def _decide(self, target: str, name: str) -> tuple[int, list[FaultSpec]]:
        with self._lock:
            n = self._counts.get((target, name), 0)
            self._counts[(target, name)] = n + 1
            hits = []
            for i, f in enumerate(self.experiment.faults):
                if not f.applies_to(target, name):
                    continue
                if f.max_injections is not None and self._fired.get(i, 0) >= f.max_injections:
                    continue
                if f.calls is not None:
                    hit = n in f.calls
                else:
                    rng = random.Random(f"{self.experiment.seed}:{i}:{target}:{name}:{n}")
                    hit = rng.random() < f.probability
                if hit:
                    self._fired[i] = self._fired.get(i, 0) + 1
                    hits.append(f)
        return n, hits

    def _record(self, f: FaultSpec, target: str, name: str, call: int, detail: str = "") -> None:
        inj = Injection(injection_id=new_id("chaos_"), experiment=self.experiment.name, fault=f.kind, target=target,
                        name=name, call=call, ts=time.time(), run_id=self._run_id(), detail=detail[:300])
        with self._lock:
            self.injections.append(inj)
        rt = self._runtimes.get(inj.run_id or "")
        if rt is not None:
            try:
                rt.save("chaos_injections", asdict(inj))
            except Exception:  # recording is best effort; the fault itself already happened
                pass

    def _before(self, hits: list[FaultSpec], target: str, name: str, call: int) -> None:
        for f in hits:
            if f.kind == "latency":
                self._record(f, target, name, call, f"+{f.latency_s:g}s")
                time.sleep(f.latency_s)
        for f in hits:
            if f.kind == "exception":
                self._record(f, target, name, call, f.message)
                raise RuntimeError(f"{name}: {f.message}")
            if f.kind in ("http_429", "http_503"):
                status = 429 if f.kind == "http_429" else 503
                self._record(f, target, name, call, f"HTTP {status}, Retry-After {f.retry_after_s:g}")
                raise ChaosHTTPError(status, f.retry_after_s, name)
            if f.kind == "timeout":
                self._record(f, target, name, call, "timeout")
                if f.sleep_s:
                    time.sleep(f.sleep_s)
                raise TimeoutError(f"{name} timed out (injected)")

    def _after(self, hits: list[FaultSpec], target: str, name: str, call: int, result: Any) -> Any:
        for f in hits:
            if f.kind == "truncate" and isinstance(result, str):
                cut = result[: max(1, int(len(result) * f.keep))]
                self._record(f, target, name, call, f"{len(result)} -> {len(cut)} chars")
                result = cut
            elif f.kind == "wrong_output":
                changed = wrong_but_plausible(result, random.Random(f"{self.experiment.seed}:wrong:{name}:{call}"))
                if changed != result:
                    self._record(f, target, name, call, f"{str(result)[:120]} -> {str(changed)[:120]}")
                    result = changed
        return result

    # -------------------------------------------------------------------- wrappers
    def tool(self, fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
        """``fn`` with the experiment's tool faults; keeps its name, docstring and signature (so a
        framework builds the same tool schema from it)."""
        tname: str = name or str(getattr(fn, "__name__", "tool"))
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def acall(*args: Any, **kwargs: Any) -> Any:
                n, hits = self._decide("tool", tname)
                self._before(hits, "tool", tname, n)
                return self._after(hits, "tool", tname, n, await fn(*args, **kwargs))
            return acall

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            n, hits = self._decide("tool", tname)
            self._before(hits, "tool", tname, n)
            return self._after(hits, "tool", tname, n, fn(*args, **kwargs))

        return call

    def tools(self, fns: list[Any]) -> list[Any]:
        return [self.tool(f) if callable(f) else f for f in fns]

    def model(self, fn: Callable[..., Any], name: str = "model") -> Callable[..., Any]:
        """A model callable (anything that takes what the model is sent and returns its answer:
        a scripted model's step, a client call) with the experiment's model faults. ``repeat``
        returns the previous answer of this model again."""

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            n, hits = self._decide("model", name)
            repeat = next((f for f in hits if f.kind == "repeat"), None)
            if repeat is not None and name in self._last_model:
                self._record(repeat, "model", name, n, "previous answer repeated")
                self._before([f for f in hits if f is not repeat], "model", name, n)
                return self._last_model[name]
            self._before(hits, "model", name, n)
            out = self._after(hits, "model", name, n, fn(*args, **kwargs))
            self._last_model[name] = out
            return out

        return call

    def as_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment.name, "seed": self.experiment.seed,
                "injections": [asdict(i) for i in self.injections], "stores": sorted(self.stores)}


def wrong_but_plausible(value: Any, rng: random.Random) -> Any:
    """A plausible wrong version of a tool output: one number changed by x0.5, x0.8 or x1.25 (a
    JSON object's first numeric field that is not an id, else the first number in the text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * rng.choice(_FACTORS), 2)
    if isinstance(value, dict):
        out = dict(value)
        for k, v in out.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and "id" not in k.lower():
                out[k] = round(v * rng.choice(_FACTORS), 2)
                return out
        return out
    if not isinstance(value, str):
        return value
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if isinstance(data, dict):
        changed = wrong_but_plausible(data, rng)
        return json.dumps(changed) if changed != data else value
    m = _NUMBER.search(value)
    if not m:
        return value
    num = float(m.group(0))
    new = round(num * rng.choice(_FACTORS), 2)
    text = str(int(new)) if "." not in m.group(0) and new == int(new) else f"{new:.2f}"
    return value[: m.start()] + text + value[m.end():]


# ------------------------------------------------------------------------------------------ process-wide
_ACTIVE: Chaos | None = None
_ENV_LOADED = False


def current() -> Chaos | None:
    """The active experiment of this process, if any (also switched on by ``IMMUNITY_CHAOS``:
    the path of an experiment file, as ``immunity chaos run`` sets it)."""
    global _ACTIVE, _ENV_LOADED
    if _ACTIVE is None and not _ENV_LOADED:
        _ENV_LOADED = True
        path = os.environ.get("IMMUNITY_CHAOS")
        if path:
            _ACTIVE = Chaos(Experiment.load(path))
            out = os.environ.get("IMMUNITY_CHAOS_OUT")
            if out:
                atexit.register(_dump, _ACTIVE, out)
    return _ACTIVE


def _dump(chaos: Chaos, path: str) -> None:
    with contextlib.suppress(Exception):
        for rt in set(chaos._runtimes.values()):
            rt.flush()
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(chaos.as_dict(), fh)


@contextlib.contextmanager
def activate(experiment: Experiment | str | dict[str, Any]) -> Iterator[Chaos]:
    """Switch an experiment on for the block (one at a time per process)."""
    global _ACTIVE
    if isinstance(experiment, str):
        experiment = Experiment.load(experiment)
    elif isinstance(experiment, dict):
        experiment = Experiment.from_dict(experiment)
    if _ACTIVE is not None:
        raise RuntimeError(f"chaos experiment {_ACTIVE.experiment.name!r} is already active")
    _ACTIVE = chaos = Chaos(experiment)
    try:
        yield chaos
    finally:
        _ACTIVE = None


def deactivate() -> None:
    global _ACTIVE
    _ACTIVE = None


def tool(fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
    """``fn`` wrapped by the active experiment; ``fn`` itself when none is active."""
    c = current()
    return fn if c is None else c.tool(fn, name)


def tools(fns: list[Any]) -> list[Any]:
    c = current()
    return list(fns) if c is None else c.tools(fns)


def model(fn: Callable[..., Any], name: str = "model") -> Callable[..., Any]:
    c = current()
    return fn if c is None else c.model(fn, name)
