"""How every hook is called: through pluggy's own call path, each implementation isolated.

:meth:`immunity.plugins.PluginManager.call` is the one helper that calls a hook. It goes through
pluggy (so ``wrapper=True`` / ``hookwrapper=True`` implementations, ``firstresult`` and
``IMMUNITY_TRACE_PLUGINS`` behave as in pytest); what immunity adds sits in a guard that
:meth:`~immunity.plugins.PluginManager.register` puts around each implementation's function:

- **Isolation.** Anything an implementation raises (any ``BaseException`` except
  ``KeyboardInterrupt`` and ``SystemExit``, so ``GeneratorExit``, ``CancelledError`` and custom
  ``BaseException`` subclasses too) is handed to the call's :class:`CallPolicy` (recorded on the
  run and in the store by the runtime) and the implementation counts as having returned ``None``;
  the next implementation still runs. A wrapper's error before or after its ``yield`` is isolated
  the same way and the wrapped result goes on unchanged.
- **Garbage.** A return value of the wrong type (a decision hook returning a string, a verifier
  returning a dict) is reported as a ``TypeError`` and dropped, so a ``firstresult`` hook asks
  the next implementation instead of stopping at garbage.
- **Deadlines.** An implementation of a plugin that is not trusted to be fast runs on a worker
  thread and the caller waits at most the policy's deadline for it (the step budget for per-event
  hooks, ``Config.hook_timeout_ms`` for configure / unconfigure / registration hooks). A call that
  overruns is abandoned: the worker is left to finish on its own (it is a daemon thread and is not
  reused while busy) and the call counts as ``None``. Core's built-ins, plugins that set
  ``immunity_inline = True`` (on the plugin or the hook function; core's
  :class:`~immunity.domain_plugin.DomainPlugin` hooks do) and plugins that carry their own timeout
  (``immunity_budget_exempt = True``) are called on the caller's thread with no thread hop.
- **Budget.** The wall time of each call, minus the garbage-collection pauses that happened
  during it (measured with :data:`gc.callbacks`), is charged to the plugin through
  :meth:`CallPolicy.charge`; the runtime skips a plugin after ``max_overruns`` overruns for the
  rest of its life and never skips a core built-in.

Wrappers are always called on the caller's thread (pluggy drives them as generators).
"""

from __future__ import annotations

import _thread
import contextvars
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from immunity.errors import ImmunityError, PluginCollisionError, PluginError

log = logging.getLogger("immunity.plugins")

#: Hooks called for every event of a run: their calls are charged to the step budget.
PER_EVENT_HOOKS = frozenset({"immunity_observe", "immunity_observe_step", "immunity_verify",
                             "immunity_intervene", "immunity_recover", "immunity_map_action"})

#: Exceptions that are never swallowed: the user (or the interpreter) asked to stop.
PASS_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)


# ---------------------------------------------------------------------------------------------
# Garbage-collection pauses (excluded from what a plugin is charged)
# ---------------------------------------------------------------------------------------------

class _GCClock:
    """Total seconds spent in garbage collection in this process since import."""

    __slots__ = ("total", "_start")

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start:
            self.total += time.perf_counter() - self._start
            self._start = 0.0


GC_CLOCK = _GCClock()
gc.callbacks.append(GC_CLOCK)


# ---------------------------------------------------------------------------------------------
# The policy of one call
# ---------------------------------------------------------------------------------------------

class CallPolicy:
    """What a hook call does with each implementation's errors, time and deadline.

    The default (used when a hook is called with no runtime, e.g. registries collected by the
    CLI) logs errors, reports them on the plugin's ``immunity plugins`` line and gives plugins
    that run on a worker thread ``timeout`` seconds.
    """

    #: return ``(plugin, result)`` pairs instead of bare results (see :func:`immunity.plugins.call_each`)
    tag_results = False
    #: seconds a per-event call may take before :meth:`charge` hears of it (0: every call)
    budget = 0.0
    #: plugins whose per-event hooks are not called under this policy (switched off for the runtime)
    inactive: frozenset[str] = frozenset()

    def __init__(self, pm: Any = None, *, timeout: float = 10.0):
        self.pm = pm
        self.timeout = timeout

    def skipped(self, plugin: str) -> bool:
        return False

    def deadline(self, plugin: str, hook: str) -> float | None:
        """Seconds to wait for a plugin's call on a worker thread (``None``: no limit)."""
        return self.timeout

    def error(self, plugin: str, hook: str, exc: BaseException) -> None:
        msg = f"{hook} failed: {type(exc).__name__}: {exc}"
        log.warning("plugin %s: %s", plugin, msg)
        info = getattr(self.pm, "infos", {}).get(plugin)
        if info is not None and not info.error:
            info.error = msg
        if _strict():
            raise PluginError(plugin, msg) from exc

    def charge(self, plugin: str, hook: str, seconds: float, timed_out: bool) -> None:
        """Charge ``seconds`` of wall time (GC pauses excluded) of a per-event hook call."""
        return None


def _strict() -> bool:
    import os

    return os.environ.get("IMMUNITY_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


#: the call policy hook calls on this thread (or task) run under; the runtime sets it once per event
POLICY: contextvars.ContextVar[CallPolicy | None] = contextvars.ContextVar("immunity_policy", default=None)
_PLUGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar("immunity_plugin", default=None)


def current_plugin() -> str | None:
    """The plugin whose hook implementation is running (for ``register`` callbacks)."""
    return _PLUGIN.get()


def current_policy() -> CallPolicy | None:
    """The policy hook calls on this thread (or task) run under, if any."""
    return POLICY.get()


def with_policy(policy: CallPolicy, fn: Callable[[], Any]) -> Any:
    token = POLICY.set(policy)
    try:
        return fn()
    finally:
        POLICY.reset(token)


# ---------------------------------------------------------------------------------------------
# Result checks: what each hook may return
# ---------------------------------------------------------------------------------------------

def _check_results() -> dict[str, Callable[[str, Any], Any]]:
    from immunity.domain import ActionMapping
    from immunity.models import Intervention, Recovery, Verdict

    def one_of(kind: type, label: str) -> Callable[[str, Any], Any]:
        def check(plugin: str, res: Any) -> Any:
            if not isinstance(res, kind):
                raise TypeError(f"returned {type(res).__name__}, expected {label} or None")
            return res
        return check

    def verdicts(plugin: str, res: Any) -> Any:
        items = list(res) if isinstance(res, list | tuple) else [res]
        good = [v for v in items if isinstance(v, Verdict)]
        for v in good:
            v.plugin = v.plugin or plugin
        if len(good) != len(items):
            bad = next(type(v).__name__ for v in items if not isinstance(v, Verdict))
            raise _Partial(good, TypeError(f"returned {bad}, expected Verdict or list of Verdict"))
        return good

    return {
        "immunity_verify": verdicts,
        "immunity_intervene": one_of(Intervention, "Intervention"),
        "immunity_recover": one_of(Recovery, "Recovery"),
        "immunity_map_action": one_of(ActionMapping, "ActionMapping"),
    }


class _Partial(Exception):
    """Some of a verifier's verdicts were usable: keep them, report the rest."""

    def __init__(self, keep: Any, error: BaseException):
        super().__init__(str(error))
        self.keep, self.error = keep, error


_CHECKS: dict[str, Callable[[str, Any], Any]] = {}


def _checks() -> dict[str, Callable[[str, Any], Any]]:
    if not _CHECKS:
        _CHECKS.update(_check_results())
    return _CHECKS


# ---------------------------------------------------------------------------------------------
# Worker threads for calls under a deadline
# ---------------------------------------------------------------------------------------------

class HookTimeout(TimeoutError):
    """A hook call overran its deadline and was abandoned."""


class _Job:
    __slots__ = ("fn", "args", "kwargs", "plugin", "done", "result", "exc", "abandoned", "started", "ended")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], plugin: str):
        self.fn, self.args, self.kwargs, self.plugin = fn, args, kwargs, plugin
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.result: Any = None
        self.exc: BaseException | None = None
        self.abandoned = False
        self.started = 0.0  # perf_counter when the worker began the call (0: not yet)
        self.ended = 0.0


class _Worker:
    """A daemon thread that runs one job at a time; idle workers wait in the pool."""

    def __init__(self, pool: _Pool):
        self.pool = pool
        self.inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="immunity-hook", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.inbox.get()
            token = _PLUGIN.set(job.plugin)
            job.started = time.perf_counter()
            try:
                job.result = job.fn(*job.args, **job.kwargs)
            except BaseException as exc:  # handed to the caller, which decides
                job.exc = exc
            finally:
                job.ended = time.perf_counter()
                _PLUGIN.reset(token)
            abandoned = job.abandoned
            job.done.release()
            if abandoned:
                log.info("an abandoned call of plugin %s returned after all", job.plugin)
            self.pool.give_back(self)


class _Pool:
    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self.started = 0

    def take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.started += 1
        return _Worker(self)

    def give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(worker)
                return
        # too many idle workers: let this one wait forever on an empty queue (it is a daemon);
        # never more than a few exist, since a worker only idles after a call returned.

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], plugin: str,
            deadline: float) -> _Job:
        """Run ``fn`` on a worker; wait at most ``deadline`` seconds of its running time (the wait
        for a busy machine to start the worker and garbage-collection pauses do not count, up to
        a cap). Returns the finished job; raises :class:`HookTimeout` when abandoned."""
        job = _Job(fn, args, kwargs, plugin)
        worker = self.take()
        g0, t_submit = GC_CLOCK.total, time.perf_counter()
        cap = t_submit + max(20 * deadline, 1.0)  # never wait longer than this for a worker to start
        worker.inbox.put(job)
        finished = False
        while not finished:
            started = job.started
            base = started if started else time.perf_counter()
            end = base + max(deadline, 0.0) + (GC_CLOCK.total - g0)
            if not started:
                end = min(end, cap)
            remaining = end - time.perf_counter()
            if remaining <= 0:
                finished = job.done.acquire(blocking=False)
                break
            finished = job.done.acquire(timeout=remaining)
        if not finished:
            job.abandoned = True
            if job.done.acquire(blocking=False):  # it finished just now after all
                job.abandoned = False
            else:
                raise HookTimeout(f"did not return within {deadline * 1000:.0f} ms; abandoned for this call")
        if job.exc is not None:
            raise job.exc
        return job


POOL = _Pool()


# ---------------------------------------------------------------------------------------------
# The guard around each implementation
# ---------------------------------------------------------------------------------------------

def runs_inline(plugin: Any, function: Any, plugin_name: str, builtin: bool) -> bool:
    """Whether an implementation is called on the caller's thread (no deadline thread)."""
    return bool(builtin or getattr(function, "immunity_inline", False) or getattr(plugin, "immunity_inline", False)
                or getattr(plugin, "immunity_budget_exempt", False))


def guard(pm: Any, hook: str, plugin_name: str, function: Callable[..., Any], *, inline: bool,
          exempt: bool, wrapper: bool) -> Callable[..., Any]:
    """The isolating function that replaces ``function`` in pluggy's hook implementation."""
    if wrapper:
        return _guard_wrapper(pm, hook, plugin_name, function)
    per_event = hook in PER_EVENT_HOOKS
    register_hook = hook.startswith("immunity_register_")
    check = _checks().get(hook)
    if per_event and inline and pm.is_builtin(plugin_name) and not exempt:
        return _guard_builtin(pm, hook, plugin_name, function, check)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        policy = POLICY.get() or pm.default_policy
        if policy.skipped(plugin_name):
            return None
        deadline = None if inline else policy.deadline(plugin_name, hook)
        g0, t0 = GC_CLOCK.total, time.perf_counter()
        timed_out = False
        ran: float | None = None
        try:
            if deadline is None:
                token = _PLUGIN.set(plugin_name) if register_hook else None
                try:
                    res = function(*args, **kwargs)
                finally:
                    if token is not None:
                        _PLUGIN.reset(token)
            else:
                job = POOL.run(function, args, kwargs, plugin_name, deadline)
                res = job.result
                ran = job.ended - job.started  # the wait for the worker to start is not the plugin's time
        except PASS_THROUGH:
            raise
        except (PluginCollisionError, PluginError):
            raise  # immunity's own deliberate errors (a name collision, fail-closed / strict mode)
        except BaseException as exc:
            timed_out = isinstance(exc, HookTimeout)
            policy.error(plugin_name, hook, exc)
            return None
        finally:
            if per_event and not exempt:
                spent = (time.perf_counter() - t0 if ran is None else ran) - (GC_CLOCK.total - g0)
                if spent > policy.budget or timed_out:  # the common case costs no call
                    policy.charge(plugin_name, hook, spent, timed_out)
        if res is None:
            return None
        return _checked(policy, plugin_name, hook, res, check)

    guarded.__wrapped__ = function  # type: ignore[attr-defined]
    return guarded


def _checked(policy: CallPolicy, plugin_name: str, hook: str, res: Any,
             check: Callable[[str, Any], Any] | None) -> Any:
    """An implementation's (non-None) result after the hook's result check, tagged with the plugin's
    name when the policy asks; a wrong type is reported and dropped, a partly wrong list trimmed."""
    if check is not None:
        try:
            res = check(plugin_name, res)
        except _Partial as part:
            policy.error(plugin_name, hook, part.error)
            res = part.keep or None
        except TypeError as exc:
            policy.error(plugin_name, hook, exc)
            return None
    if res is not None and policy.tag_results:
        return (plugin_name, res)
    return res


def _guard_builtin(pm: Any, hook: str, plugin_name: str, function: Callable[..., Any],
                   check: Callable[[str, Any], Any] | None) -> Callable[..., Any]:
    """The guard of a core built-in's per-event hook: the same isolation, result check and budget
    charge as :func:`guard`, without what cannot apply to it (built-ins are never skipped and run
    on the caller's thread, so no skip test, deadline or worker)."""
    perf_counter = time.perf_counter

    def guarded(*args: Any, **kwargs: Any) -> Any:
        policy = POLICY.get() or pm.default_policy
        g0, t0 = GC_CLOCK.total, perf_counter()
        try:
            res = function(*args, **kwargs)
        except PASS_THROUGH:
            raise
        except (PluginCollisionError, PluginError):
            raise
        except BaseException as exc:
            policy.error(plugin_name, hook, exc)
            res = None
        spent = perf_counter() - t0 - (GC_CLOCK.total - g0)
        if spent > policy.budget:  # the common case costs no call
            policy.charge(plugin_name, hook, spent, False)
        if res is None:
            return None
        return _checked(policy, plugin_name, hook, res, check)

    guarded.__wrapped__ = function  # type: ignore[attr-defined]
    return guarded


def _guard_wrapper(pm: Any, hook: str, plugin_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Isolate a ``wrapper=True`` (or old-style ``hookwrapper=True``) implementation: an error
    before its ``yield`` leaves it out of this call, an error after it leaves the result as the
    wrapped implementations produced it; either is reported like any other plugin error."""

    def report(exc: BaseException) -> None:
        policy = POLICY.get() or pm.default_policy
        policy.error(plugin_name, hook, exc)

    def guarded(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        policy = POLICY.get() or pm.default_policy
        gen: Generator[None, Any, Any] | None = None
        if not policy.skipped(plugin_name):
            try:
                gen = function(*args, **kwargs)
                next(gen)  # type: ignore[arg-type]
            except PASS_THROUGH:
                raise
            except (PluginCollisionError, PluginError):
                raise
            except StopIteration:
                report(RuntimeError("wrapper did not yield"))
                gen = None
            except BaseException as exc:
                report(exc)
                gen = None
        if gen is None:
            return (yield)
        try:
            res = yield
        except BaseException as inner:  # the wrapped call raised (fail-closed, Ctrl-C): the wrapper sees it
            try:
                gen.throw(inner)
            except StopIteration as stop:
                return stop.value
            raise
        try:
            gen.send(res)
        except StopIteration as stop:
            return stop.value
        except PASS_THROUGH:
            raise
        except (PluginCollisionError, PluginError):
            raise
        except BaseException as exc:
            report(exc)
            return res
        report(RuntimeError("wrapper has a second yield"))
        gen.close()
        return res

    guarded.__wrapped__ = function  # type: ignore[attr-defined]
    return guarded


__all__ = ["CallPolicy", "GC_CLOCK", "HookTimeout", "ImmunityError", "PER_EVENT_HOOKS", "current_plugin", "current_policy",
           "guard", "runs_inline", "with_policy"]
