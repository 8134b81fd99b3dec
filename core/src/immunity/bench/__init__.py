"""Benchmarks of immunity itself.

``immunity bench closed-loop`` (:mod:`immunity.bench.plugin`) runs small multi-step tasks through
the four supported frameworks with faults injected into tool calls, model calls and the agent's
own behaviour, with and without immunity, on paired seeds, and reports task success, caught
failures and silent corruptions with 95% intervals. See ``docs/benchmark.md``.

- :mod:`immunity.bench.tasks`: tasks, ground truth, fault plans and the scripted agent;
- :mod:`immunity.bench.drivers`: the driver protocol; each adapter registers its framework's
  driver through ``immunity_register_bench_drivers`` (core imports no adapter);
- :mod:`immunity.bench.harness`: trials, judging, aggregation;
- :mod:`immunity.bench.stats`: Wilson intervals, paired bootstrap, exact McNemar test.
"""
