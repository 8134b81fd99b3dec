"""Cost of the redaction stage (immunity.redact) per stored record and per string.

    python bench/bench_redact.py [--n 20000]

Prints microseconds per call for: a tool-end event's dump with ordinary text (the common case:
no detector's trigger present), the same with a secret in its result, a 340-character string
without and with a trigger word, and a 1 MB string (clipped to the store's 16,000 characters
first, as the store does).
"""

from __future__ import annotations

import argparse
import os
import time

from immunity.models import Event, EventKind
from immunity.redact import Redactor
from immunity.store import MAX_STORED_TEXT


def per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    r = Redactor()
    plain = Event(kind=EventKind.TOOL_END, tool="search", result="some result text " * 20,
                  arguments={"q": "hello world", "n": 3}).model_dump(mode="json")
    secret = Event(kind=EventKind.TOOL_END, tool="login", result="auth failed: password=hunter2 " * 10,
                   arguments={"user": "bob", "password": "hunter2"}).model_dump(mode="json")
    text = "some result text " * 20
    trig = "the session token was refreshed " * 10
    big = "x" * 1_000_000
    n = args.n
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"redaction ({len(r.names)} detectors), microseconds per call, {n} calls each "
          f"(load average {load:.1f} on {os.cpu_count()} CPUs):")
    print(f"  event dump, ordinary text:         {per_call(lambda: r.value(plain), n):8.1f}")
    print(f"  event dump, secrets in it:         {per_call(lambda: r.value(secret), n):8.1f}")
    print(f"  340 chars, no trigger:             {per_call(lambda: r.text(text), n):8.1f}")
    print(f"  340 chars, a trigger word:         {per_call(lambda: r.text(trig), n):8.1f}")
    print(f"  1 MB string, clipped then scanned: {per_call(lambda: r.value(big, clip=MAX_STORED_TEXT), 200):8.1f}")


if __name__ == "__main__":
    main()
