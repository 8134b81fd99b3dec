"""mini-swe-agent's observation output is found with ``str.find``: the same text the regular
expression gives, on every arrangement of tags and newlines."""

from __future__ import annotations

import random

from immunity.importers.mini_swe_agent import OUTPUT, _output


def test_the_output_found_with_find_is_the_expressions() -> None:
    rng = random.Random(1)
    parts = ["<output>", "</output>", "\n", "a", "b\n", "<out", "put>", "\n\n"]
    for _ in range(20_000):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 9)))
        m = OUTPUT.search(text)
        assert _output(text) == (m.group(1) if m else text), repr(text)
