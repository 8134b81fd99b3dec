"""Process parallelism for learning, and single-threaded BLAS.

:func:`pmap` runs a function over a list of arguments in forked worker processes. The data the
workers share (runs, features) is set in a module global just before the pool forks, so it is
inherited, never pickled; only the arguments and the results cross between processes. The
results come back in argument order, so the output does not depend on the number of processes.
Without ``fork`` (not Linux/macOS) or with ``jobs=1`` everything runs in this process.

Linear algebra runs with one BLAS thread (:func:`one_blas_thread`): learning fits many small
models, and on a machine where every core is busy, BLAS threads fighting for the cores made the
fits five times slower (measured on the 2-core development machine). Processes parallelise better.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: what a forked worker reads: the function and the shared data (set just before the pool forks)
_SHARED: dict[str, Any] = {}


def default_jobs() -> int:
    """Worker processes for learning: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


#: Below this many steps of learning data, learning a pack runs in one process: forking and
#: sending results back cost more than the work saves (measured on the 2-core development machine:
#: the tau-bench airline pack, 200 runs and 3.7K steps, took 0.37-0.40 s in one process and
#: 0.67-0.82 s with two; the SWE-bench pack, 20K steps, gains from two).
MIN_PARALLEL_STEPS = 10_000


def jobs_for(steps: int, jobs: int) -> int:
    """The worker processes worth starting for learning from ``steps`` steps (at most ``jobs``)."""
    return jobs if steps >= MIN_PARALLEL_STEPS else 1


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def _call(arg: Any) -> Any:
    with one_blas_thread():
        return _SHARED["fn"](_SHARED["data"], arg)


def pmap(fn: Callable[[Any, T], R], args: Sequence[T], *, shared: Any = None, jobs: int = 1) -> list[R]:
    """``[fn(shared, a) for a in args]``, in up to ``jobs`` forked processes when there is more than
    one argument. ``fn`` must be a module-level function; ``shared`` is inherited by the workers."""
    if jobs <= 1 or len(args) <= 1 or not can_fork() or _SHARED:  # no pools inside a worker
        with one_blas_thread():
            return [fn(shared, a) for a in args]
    _SHARED.update(fn=fn, data=shared)
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(args)), mp_context=mp.get_context("fork")) as pool:
            return list(pool.map(_call, args))
    finally:
        _SHARED.clear()


def in_background(fn: Callable[[Any], R], shared: Any, *, enabled: bool = True) -> Callable[[], R]:
    """Start ``fn(shared)`` in a forked process (``shared`` is inherited, never pickled) and return
    a function that waits for its result. The caller goes on meanwhile, and may itself use
    :func:`pmap`. Without ``fork``, inside a worker, or with ``enabled=False``, ``fn`` runs when the
    result is asked for, in this process. An exception in the process comes back as a
    ``ValueError`` with its message (``RuntimeError`` for anything but ``ValueError`` and
    :class:`~immunity.errors.ImmunityError`)."""
    if not enabled or not can_fork() or _SHARED:
        return lambda: fn(shared)
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_background, args=(fn, shared, send), daemon=True)
    proc.start()
    send.close()

    def result() -> R:
        try:
            status, value = receive.recv()
        except EOFError:
            status, value = "error", ("RuntimeError", f"the worker process ended with status {proc.exitcode}")
        finally:
            receive.close()
            proc.join()
        if status == "error":
            kind, message = value
            raise (ValueError if kind == "ValueError" else RuntimeError)(message)
        return value  # type: ignore[no-any-return]

    return result


def _background(fn: Callable[[Any], Any], shared: Any, send: Any) -> None:
    from immunity.errors import ImmunityError

    _SHARED.update(fn=fn)  # no pools inside it
    try:
        with one_blas_thread():
            out: tuple[str, Any] = ("ok", fn(shared))
    except (ValueError, ImmunityError) as exc:
        out = ("error", ("ValueError", str(exc)))
    except BaseException as exc:  # noqa: BLE001 - reported to the waiting process
        out = ("error", ("RuntimeError", f"{type(exc).__name__}: {exc}"))
    send.send(out)
    send.close()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit BLAS/OpenMP to one thread inside the block (needs ``threadpoolctl``, which the
    ``learn`` extra installs with scikit-learn; without it, nothing changes)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield
