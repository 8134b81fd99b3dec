"""immunity-hnswlib: an approximate nearest-neighbour index (HNSW) for large pattern packs.

Registers the vector index ``"hnswlib"``. Core's ``"brute"`` index is exact and fine up to a few
thousand patterns; past that its cost grows with the pack, while an HNSW graph answers in
roughly logarithmic time. ``hnswlib`` is imported when an index is built, not when this plugin
is loaded.

Usage::

    from immunity.plugins import get_plugin_manager
    from immunity.vectors import get_index

    index = get_index(get_plugin_manager(), "hnswlib", 256, ef_search=64)
    index.add(ids, vectors)
    index.search(query, k=5)   # [(id, cosine similarity), ...] best first
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pluggy
from immunity.vectors import l2_normalise

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["HnswIndex", "hookimpl"]


class HnswIndex:
    """An HNSW graph (``hnswlib.Index``) over L2-normalised vectors, searched by cosine similarity.

    Ids are strings; hnswlib's integer labels are assigned in insertion order. Adding an id that
    is already present replaces its vector. The graph grows (doubling) as vectors are added.
    Searching and adding are serialised by a lock, so one index can be shared across threads.

    :param dimension: vector length.
    :param space: ``"cosine"`` (hnswlib normalises on the way in; default) or ``"ip"`` (inner
        product; vectors must already be normalised, which immunity's embedders guarantee; this
        index normalises them on ``add`` either way).
    :param M: graph degree: more links give better recall and more memory (default 16).
    :param ef_construction: candidate list size while building: higher builds slower and better
        (default 200).
    :param ef_search: candidate list size while searching, raised to ``k`` when smaller: the
        recall / latency knob (default 96). Measured recall@10: at 100K patterns
        (``bench/bench_matching.py``) 0.952 at 32, 0.978 at 64, 0.995 at 128 (0.103 / 0.145 /
        0.231 ms CPU per step); on the harder clustered data of this plugin's tests, 0.944 at 64,
        0.971 at 96, 0.984 at 128. 96 keeps both above 0.95.
    :param capacity: initial number of elements to allocate (default 1024).
    :param num_threads: threads used by ``add`` (default: hnswlib's default, all cores). Searches
        are single queries and always run on the calling thread.
    :param seed: random seed of the graph construction, so builds are reproducible.
    """

    name = "hnswlib"
    #: the file name :meth:`save` writes inside a pack directory (hnswlib's own format: data only)
    file_name = "index.hnsw"

    def __init__(self, dimension: int, space: str = "cosine", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 96, capacity: int = 1024, num_threads: int = -1, seed: int = 100) -> None:
        import hnswlib  # imported here so that loading the plugin does not import hnswlib

        if int(dimension) < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")
        if space not in ("cosine", "ip"):
            raise ValueError(f"space must be 'cosine' or 'ip', got {space!r}")
        if int(M) < 2 or int(ef_construction) < 1 or int(ef_search) < 1:
            raise ValueError("M must be >= 2, ef_construction and ef_search >= 1")
        self.dimension = int(dimension)
        self.space = space
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.num_threads = int(num_threads)
        self._index = hnswlib.Index(space=space, dim=self.dimension)
        self._index.init_index(max_elements=max(int(capacity), 1), M=self.M,
                               ef_construction=self.ef_construction, random_seed=int(seed))
        self._index.set_ef(self.ef_search)
        self._ef = self.ef_search
        self._ids: list[str] = []
        self._labels: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        return item in self._labels

    def __repr__(self) -> str:
        return (f"HnswIndex(dimension={self.dimension}, size={len(self)}, space={self.space!r}, M={self.M}, "
                f"ef_construction={self.ef_construction}, ef_search={self.ef_search})")

    @property
    def ids(self) -> list[str]:
        """The ids in insertion order."""
        return list(self._ids)

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    @property
    def params(self) -> dict[str, Any]:
        """The parameters a saved graph was built with (recorded next to it; a saved graph with other
        parameters is not loaded into this index)."""
        return {"space": self.space, "M": self.M, "ef_construction": self.ef_construction}

    def save(self, path: str) -> None:
        """Write the graph and its vectors with hnswlib's own ``save_index`` (labels are the row
        numbers of :attr:`ids`, which the caller keeps: the pack's pattern ids in pack order)."""
        with self._lock:
            self._index.save_index(str(path))

    def load(self, path: str, ids: list[str], vectors: np.ndarray) -> None:
        """Replace this index by a graph saved with :meth:`save` over ``ids`` (label ``i`` is
        ``ids[i]``). The graph's size and dimension must match, and sampled rows of ``vectors``
        (the pack's own, whose digest was checked at load) must be the graph's stored vectors, so a
        graph built from other vectors is refused (``ValueError``)."""
        import hnswlib

        ids = [str(i) for i in ids]
        index = hnswlib.Index(space=self.space, dim=self.dimension)
        index.load_index(str(path), max_elements=max(len(ids), 1))
        n = int(index.get_current_count())
        if n != len(ids) or int(index.dim) != self.dimension:
            raise ValueError(f"the saved graph holds {n} vectors of dimension {index.dim}; the pack has "
                             f"{len(ids)} of dimension {self.dimension}")
        if n:
            rows = np.unique(np.linspace(0, n - 1, num=min(n, 64)).astype(np.int64))
            stored = np.asarray(index.get_items(rows.tolist()), dtype=np.float32)
            want = l2_normalise(np.asarray(vectors[rows], dtype=np.float32))
            if stored.shape != want.shape or not np.allclose(stored, want, atol=1e-5):
                raise ValueError("the saved graph's vectors are not the pack's vectors")
        index.set_ef(self.ef_search)
        with self._lock:
            self._index = index
            self._ef = self.ef_search
            self._ids = ids
            self._labels = {id_: i for i, id_ in enumerate(ids)}

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        ids = [str(i) for i in ids]
        mat = np.asarray(vectors, dtype=np.float32)
        if mat.ndim == 1 and len(ids) == 1:
            mat = mat.reshape(1, -1)
        if mat.ndim != 2 or mat.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {mat.shape}")
        if mat.shape[0] != len(ids):
            raise ValueError(f"got {len(ids)} ids but {mat.shape[0]} vectors")
        if not ids:
            return
        mat = l2_normalise(mat)
        with self._lock:
            labels = np.empty(len(ids), dtype=np.uint64)
            new: dict[str, int] = {}
            for pos, id_ in enumerate(ids):
                label = self._labels.get(id_, new.get(id_))
                if label is None:
                    label = len(self._ids) + len(new)
                    new[id_] = label
                labels[pos] = label
            needed = len(self._ids) + len(new)
            capacity = self.capacity
            if needed > capacity:
                while capacity < needed:
                    capacity *= 2
                self._index.resize_index(capacity)
            self._index.add_items(mat, labels, num_threads=self.num_threads)
            for id_, label in sorted(new.items(), key=lambda kv: kv[1]):
                self._ids.append(id_)
                self._labels[id_] = label

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        query = np.asarray(vector, dtype=np.float32)
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.shape != (self.dimension,):
            raise ValueError(f"expected a query vector of shape ({self.dimension},), got {query.shape}")
        norm = float(np.linalg.norm(query))
        if not math.isfinite(norm):
            raise ValueError("query vector contains NaN or infinite values")
        if norm == 0.0 or k <= 0:
            return []
        if self.space == "ip":
            query = query / np.float32(norm)
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return []
            k = min(int(k), n)
            ef = max(self.ef_search, k)
            if ef != self._ef:
                self._index.set_ef(ef)
                self._ef = ef
            try:
                labels, distances = self._index.knn_query(query, k=k, num_threads=1)
            except RuntimeError:
                # hnswlib could not find k neighbours (a sparse graph after many replacements):
                # widen the search once, then give up on exactness of k rather than fail the step.
                self._index.set_ef(max(ef * 4, min(n, 4096)))
                self._ef = -1
                try:
                    labels, distances = self._index.knn_query(query, k=k, num_threads=1)
                except RuntimeError:
                    return []
            ids = self._ids
            return [(ids[int(label)], 1.0 - float(dist)) for label, dist in zip(labels[0], distances[0],
                                                                                strict=True)]


@hookimpl
def immunity_register_vector_indexes(register: Any) -> None:
    register("hnswlib", HnswIndex)
