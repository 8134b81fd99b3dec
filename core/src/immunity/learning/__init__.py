"""Failure-pattern learning, matching, pattern packs, scoring and evaluation.

- :mod:`immunity.learning.features`: per-step features and signatures from ``RunState`` (O(1)).
- :mod:`immunity.learning.learn`: divergence, classification, patterns, risk model, calibration.
- :mod:`immunity.learning.packs`: the data-only pack format (load, verify, save, merge, install).
- :mod:`immunity.learning.matcher`: the ``patterns`` verifier used on the hot path.
- :mod:`immunity.learning.data` / :mod:`~immunity.learning.pipeline`: replaying runs through the
  runtime to learn and to score; cross-validation.
- :mod:`immunity.learning.evaluate`: AUROC, recall, false alarms, lead, explain accuracy, baseline.
- :mod:`immunity.learning.plugin`: the built-in plugin (verifier, installed packs, CLI commands).

See ``docs/learning.md``.
"""
