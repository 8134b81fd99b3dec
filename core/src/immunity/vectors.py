"""Embedders and vector indexes: the two halves of hot-path pattern matching.

An **embedder** turns text (or a step's signature features) into fixed-size vectors; a **vector
index** holds the vectors of known failure patterns and returns the nearest ones to a step's vector.
Both are found through registration hooks, so a plugin can swap either:

- ``immunity_register_embedders(register)``: ``register(name, factory)``; ``factory(**options)``
  returns an object with ``name`` (including every parameter that changes vectors, e.g.
  ``"hashing-v1-d256"``), ``dimension`` and ``embed(texts) -> ndarray (n, dimension)``, float32,
  rows L2-normalised (zero rows stay zero). See :class:`Embedder`.
- ``immunity_register_vector_indexes(register)``: ``register(name, factory)``;
  ``factory(dimension, **options)`` returns an object with ``add(ids, vectors)``,
  ``search(vector, k) -> [(id, cosine similarity)]`` best first, ``__len__`` and ``name``.
  See :class:`VectorIndex`.

Core ships :class:`HashingEmbedder` (``"hashing"``: deterministic, offline, no model) and
:class:`BruteForceIndex` (``"brute"``: exact, numpy). They are registered by the built-in plugin
``immunity.defaults.vectors``. ``immunity-hnswlib`` adds an approximate index for large packs and
``immunity-fastembed`` a neural embedder.

A pack records the embedder that built its vectors (``PatternPack.embedder`` / ``dimension``);
:func:`check_compatible` refuses to match a pack's vectors with a different embedder.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import numpy as np

from immunity.errors import ImmunityError, PackError

__all__ = [
    "BruteForceIndex",
    "Embedder",
    "HashingEmbedder",
    "UnknownBackendError",
    "VectorIndex",
    "check_compatible",
    "get_embedder",
    "get_index",
    "l2_normalise",
]


# ---------------------------------------------------------------------------------------------
# Protocols
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """What an embedder factory returns."""

    #: Identifies the vectors this embedder makes: model and every parameter that changes them.
    name: str
    #: Length of every vector.
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return an ``(len(texts), dimension)`` float32 array, rows L2-normalised (zero rows stay zero)."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """What a vector index factory returns. Vectors are L2-normalised, similarity is cosine."""

    name: str

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Add (or replace, for an id already present) one vector per id."""
        ...

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Return up to ``k`` ``(id, cosine similarity)`` pairs, most similar first."""
        ...

    def __len__(self) -> int: ...


class UnknownBackendError(ImmunityError, LookupError):
    """No embedder or vector index is registered under the requested name."""


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Return a float32 copy of ``vectors`` (1-D or 2-D) with each row scaled to unit length.

    Rows of zeros stay zeros; non-finite values are an error.
    """
    arr = np.array(vectors, dtype=np.float32, copy=True)
    if arr.ndim not in (1, 2):
        raise ValueError(f"expected a 1-D or 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vectors contain NaN or infinite values")
    if arr.ndim == 1:
        norm = float(np.linalg.norm(arr))
        if norm > 0.0:
            arr /= norm
        return arr
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    np.divide(arr, norms, out=arr, where=norms > 0.0)
    return arr


def _as_matrix(vectors: np.ndarray | Sequence[Sequence[float]], dimension: int, count: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1 and count == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dimension:
        raise ValueError(f"expected vectors of shape (n, {dimension}), got {arr.shape}")
    if arr.shape[0] != count:
        raise ValueError(f"got {count} ids but {arr.shape[0]} vectors")
    return arr


def _as_query(vector: np.ndarray | Sequence[float], dimension: int) -> np.ndarray:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (dimension,):
        raise ValueError(f"expected a query vector of shape ({dimension},), got {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------
# Hashing embedder
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+", re.UNICODE)
_HASH_PERSON = b"immunity-hash-v1"  # 16 bytes: blake2b's personalisation keeps our hashes our own


def _hash64_uncached(key: str) -> int:
    """A 64-bit hash of ``key`` that is the same in every process and on every platform."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=_HASH_PERSON).digest(),
                          "little")


_hash64 = lru_cache(maxsize=65_536)(_hash64_uncached)


class HashingEmbedder:
    """Deterministic embeddings by signed feature hashing: no model, no network, no state.

    Text is lower-cased and split into word tokens; the features are word unigrams, word bigrams
    and character n-grams of each word (with ``<`` and ``>`` marking its ends). Each feature is
    hashed with keyed BLAKE2b into one of ``dimension`` buckets with a sign taken from another
    bit of the hash, so collisions cancel out on average instead of piling up. The counts are
    L2-normalised. The same text gives the same vector in every process, on every platform, in
    every Python version (Python's own ``hash()`` is salted per process and is never used).

    :meth:`embed_features` embeds a dict of named numeric or categorical features (a step's
    signature: ``{"act:EDIT": 1, "ngram:EDIT>VERIFY": 1, "steps_since_verify": 3.0}``) into the
    same space; feature keys live in their own namespace so they never collide with text tokens
    on purpose.

    :param dimension: vector length (default 256).
    :param char_ngrams: ``(min, max)`` character n-gram lengths; ``(0, 0)`` switches them off.
    :param char_weight: weight of one character n-gram relative to a word (default 0.5).
    :param bigram_weight: weight of one word bigram (default 1.0).
    """

    VERSION = "v1"
    DEFAULT_CHAR_NGRAMS = (3, 4)
    DEFAULT_CHAR_WEIGHT = 0.5
    DEFAULT_BIGRAM_WEIGHT = 1.0

    def __init__(self, dimension: int = 256, char_ngrams: tuple[int, int] | list[int] = DEFAULT_CHAR_NGRAMS,
                 char_weight: float = DEFAULT_CHAR_WEIGHT, bigram_weight: float = DEFAULT_BIGRAM_WEIGHT) -> None:
        dimension = int(dimension)
        if dimension < 2:
            raise ValueError(f"dimension must be at least 2, got {dimension}")
        lo, hi = (int(char_ngrams[0]), int(char_ngrams[1]))
        if (lo, hi) != (0, 0) and not 1 <= lo <= hi:
            raise ValueError(f"char_ngrams must be (min, max) with 1 <= min <= max, or (0, 0); got {(lo, hi)}")
        if not (math.isfinite(char_weight) and math.isfinite(bigram_weight)):
            raise ValueError("weights must be finite")
        self.dimension = dimension
        self.char_ngrams = (lo, hi)
        self.char_weight = float(char_weight)
        self.bigram_weight = float(bigram_weight)
        self.name = self._make_name()
        # per-word features (unigram + char n-grams) and per-key feature slots are cached: the same
        # tool names, action types and error classes recur on every step.
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._cache_limit = 20_000

    def _make_name(self) -> str:
        name = f"hashing-{self.VERSION}-d{self.dimension}"
        if self.char_ngrams != self.DEFAULT_CHAR_NGRAMS:
            name += f"-c{self.char_ngrams[0]}{self.char_ngrams[1]}"
        if self.char_weight != self.DEFAULT_CHAR_WEIGHT:
            name += f"-cw{self.char_weight:g}"
        if self.bigram_weight != self.DEFAULT_BIGRAM_WEIGHT:
            name += f"-bw{self.bigram_weight:g}"
        return name

    def __repr__(self) -> str:
        return f"HashingEmbedder(name={self.name!r})"

    # -- hashing -------------------------------------------------------------------------------
    def _slot(self, key: str) -> tuple[int, float]:
        h = _hash64(key)
        return h % self.dimension, (1.0 if (h >> 63) & 1 else -1.0)

    def _word_hashes(self, word: str) -> tuple[int, ...]:
        """The hashes of a word's features: its unigram, then its character n-grams in order."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        keys = ["w:" + word]
        lo, hi = self.char_ngrams
        if hi:
            marked = f"<{word}>"
            m = len(marked)
            keys.extend(["c:" + marked[start:start + n] for n in range(lo, hi + 1) for start in range(m - n + 1)])
        # cached per word, so the n-grams are hashed without the per-key cache
        result = tuple(map(_hash64_uncached, keys))
        if len(self._word_cache) >= self._cache_limit:
            self._word_cache.clear()
        self._word_cache[word] = result
        return result

    # -- text ----------------------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        """The word tokens of ``text`` as this embedder sees them."""
        return _TOKEN.findall(text.lower())

    def _embed_one(self, text: str) -> np.ndarray:
        words = self.tokens(text)
        if not words:
            return np.zeros(self.dimension, dtype=np.float32)
        # every feature's hash in one list, in the order the counts are summed: each word's unigram
        # (weight 1) and character n-grams (char_weight), then the bigrams (bigram_weight); the
        # buckets and signs are then computed for all of them at once
        hashes: list[int] = []
        firsts: list[int] = []
        for word in words:
            firsts.append(len(hashes))
            hashes.extend(self._word_hashes(word))
        n_words = len(hashes)
        if self.bigram_weight and len(words) > 1:
            hashes.extend(map(_hash64, [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]))
        hs = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
        weights = np.full(len(hashes), self.char_weight, dtype=np.float64)
        weights[firsts] = 1.0
        weights[n_words:] = self.bigram_weight
        signs = np.where((hs >> np.uint64(63)) != 0, 1.0, -1.0)
        acc = np.bincount((hs % np.uint64(self.dimension)).astype(np.intp), weights=signs * weights,
                          minlength=self.dimension)
        return _normalise_row(acc)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed each text: an ``(len(texts), dimension)`` float32 array, rows L2-normalised.

        A text with no word characters gives a zero row.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts, not a single string")
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._embed_one(str(text))
        return out

    # -- features ------------------------------------------------------------------------------
    def embed_features(self, features: Mapping[str, Any]) -> np.ndarray:
        """Embed one dict of named features into a ``(dimension,)`` float32 vector, L2-normalised.

        - a number (int, float, bool) is the feature's value: ``{"steps_since_verify": 3.0}``;
        - a string is a category: ``{"act": "EDIT"}`` is the same as ``{"act=EDIT": 1.0}``;
        - ``None``, zero and non-finite values are skipped.

        Values are not rescaled: keep numeric features on a scale comparable to the 0/1 indicators
        (e.g. ``log1p`` of a count) or they dominate the vector.
        """
        dim = self.dimension
        acc = np.zeros(dim, dtype=np.float64)
        for key, value in features.items():
            if value is None:
                continue
            if isinstance(value, str):
                name, weight = f"{key}={value}", 1.0
            else:
                try:
                    weight = float(value)
                except (TypeError, ValueError):
                    raise TypeError(f"feature {key!r} has a value of type {type(value).__name__}; "
                                    f"expected a number, a bool or a string") from None
                name = str(key)
                if weight == 0.0 or not math.isfinite(weight):
                    continue
            h = _hash64("f:" + name)
            acc[h % dim] += weight if (h >> 63) & 1 else -weight
        return _normalise_row(acc)

    def embed_features_batch(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """:meth:`embed_features` for many dicts: an ``(n, dimension)`` float32 array."""
        vectors = [self.embed_features(r) for r in rows]
        if not vectors:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(vectors)


def _normalise_row(acc: np.ndarray) -> np.ndarray:
    norm = math.sqrt(float(np.dot(acc, acc)))
    if norm > 0.0:
        acc = acc / norm
    return acc.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Brute-force index
# ---------------------------------------------------------------------------------------------


class BruteForceIndex:
    """Exact cosine search: one matrix-vector product over a contiguous float32 matrix.

    The matrix grows geometrically (doubling) as vectors are added, so adding one pattern at a
    time stays cheap. Vectors are normalised on the way in, so similarities are cosines even if a
    caller passes raw vectors. Adding an id that is already present replaces its vector. Safe to
    use from several threads.

    :param dimension: vector length.
    :param capacity: initial number of rows to allocate.
    """

    name = "brute"

    def __init__(self, dimension: int, capacity: int = 1024) -> None:
        if int(dimension) < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        self.dimension = int(dimension)
        self._data = np.zeros((max(int(capacity), 1), self.dimension), dtype=np.float32)
        self._ids: list[str] = []
        self._rows: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._rows

    def __repr__(self) -> str:
        return f"BruteForceIndex(dimension={self.dimension}, size={len(self)})"

    @property
    def ids(self) -> list[str]:
        """The ids in insertion order."""
        return list(self._ids)

    def vectors(self) -> np.ndarray:
        """A copy of the stored (normalised) vectors, one row per id in :attr:`ids` order."""
        with self._lock:
            return self._data[: len(self._ids)].copy()

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        ids = [str(i) for i in ids]
        mat = l2_normalise(_as_matrix(vectors, self.dimension, len(ids)))
        with self._lock:
            for pos, id_ in enumerate(ids):
                row = self._rows.get(id_)
                if row is None:
                    row = len(self._ids)
                    if row >= self._data.shape[0]:
                        self._grow(row + 1 + (len(ids) - pos - 1))
                    self._ids.append(id_)
                    self._rows[id_] = row
                self._data[row] = mat[pos]

    def _grow(self, needed: int) -> None:
        capacity = self._data.shape[0]
        while capacity < needed:
            capacity *= 2
        data = np.zeros((capacity, self.dimension), dtype=np.float32)
        data[: len(self._ids)] = self._data[: len(self._ids)]
        self._data = data

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        query = _as_query(vector, self.dimension)
        norm = float(np.linalg.norm(query))
        if norm == 0.0 or k <= 0:
            return []
        if not math.isfinite(norm):
            raise ValueError("query vector contains NaN or infinite values")
        query = query / np.float32(norm)
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return []
            scores = self._data[:n] @ query
            ids = self._ids
            k = min(int(k), n)
            if k < n:
                top = np.argpartition(-scores, k - 1)[:k]
                top = top[np.argsort(-scores[top], kind="stable")]
            else:
                top = np.argsort(-scores, kind="stable")
            return [(ids[i], float(scores[i])) for i in top]


# ---------------------------------------------------------------------------------------------
# Lookup and compatibility
# ---------------------------------------------------------------------------------------------


def _lookup(pm: Any, kind: str, label: str, name: str) -> Any:
    registry = pm.registry(kind)
    factory = registry.get(name)
    if factory is None:
        installed = ", ".join(sorted(registry)) or "none"
        raise UnknownBackendError(
            f"no {label} named {name!r} is installed (installed: {installed}); "
            f"install the plugin that provides it (`immunity plugins` lists what is loaded)"
        )
    return factory


def get_embedder(pm: Any, name: str = "hashing", **options: Any) -> Any:
    """Build the embedder registered as ``name`` with ``options``.

    :param pm: a :class:`~immunity.plugins.PluginManager`.
    :raises UnknownBackendError: nothing is registered under ``name`` (the message lists what is).
    """
    return _lookup(pm, "embedders", "embedder", name)(**options)


def get_index(pm: Any, name: str, dimension: int, **options: Any) -> Any:
    """Build an empty vector index registered as ``name`` for vectors of length ``dimension``.

    :param pm: a :class:`~immunity.plugins.PluginManager`.
    :raises UnknownBackendError: nothing is registered under ``name`` (the message lists what is).
    """
    return _lookup(pm, "vector_indexes", "vector index", name)(dimension, **options)


def check_compatible(pack_embedder: str | None, pack_dim: int, embedder: Any, *, pack: str | None = None) -> None:
    """Refuse to match a pack's vectors with an embedder other than the one that built them.

    Vectors from two embedders live in different spaces: comparing them gives numbers that mean
    nothing, so this is an error, never a warning. A pack with no vectors (no embedder and
    dimension 0) is compatible with any embedder.

    :param pack_embedder: the pack's ``embedder`` (an embedder's full ``name``, e.g. ``"hashing-v1-d256"``).
    :param pack_dim: the pack's ``dimension``.
    :param embedder: the runtime's embedder (anything with ``name`` and ``dimension``).
    :param pack: the pack's name, for the message.
    :raises PackError: the names or the dimensions differ.
    """
    label = f"pack {pack!r}" if pack else "this pack"
    if not pack_embedder:
        if int(pack_dim or 0) == 0:
            return
        raise PackError(f"{label} has vectors of dimension {pack_dim} but does not say which embedder built "
                        f"them; rebuild the pack so its manifest names its embedder")
    name = str(getattr(embedder, "name", "?"))
    dim = int(getattr(embedder, "dimension", -1))
    if pack_embedder == name and int(pack_dim) == dim:
        return
    raise PackError(
        f"{label} was built with embedder {pack_embedder!r} (dimension {pack_dim}); this runtime uses "
        f"{name!r} (dimension {dim}): rebuild the pack with {name!r}, or configure the runtime with the "
        f"embedder {pack_embedder!r} (from the plugin that provides it) to use this pack"
    )
