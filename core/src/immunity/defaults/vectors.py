"""Built-in plugin: the hashing embedder (``"hashing"``) and the brute-force index (``"brute"``)."""

from __future__ import annotations

from typing import Any

import pluggy

from immunity.vectors import BruteForceIndex, HashingEmbedder

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_embedders(register: Any) -> None:
    register("hashing", HashingEmbedder)


@hookimpl
def immunity_register_vector_indexes(register: Any) -> None:
    register("brute", BruteForceIndex)
