"""Cross-check of results' own arithmetic: a reported total (``total``, ``sum``, ``grand_total``)
next to its parts (rows, values, a breakdown) that does not add up is a wrong-but-plausible output.
See :mod:`immunity.consistency`."""

from __future__ import annotations

from immunity.consistency import INCONSISTENT_OUTPUT, make_check

sum_vs_parts = make_check(None, name="sum_vs_parts")

CROSS_CHECKS = [sum_vs_parts]
ERROR_CLASSES = {INCONSISTENT_OUTPUT: "sum_vs_parts: a result whose total is not the sum of its parts "
                                      "(a wrong-but-plausible output)"}
