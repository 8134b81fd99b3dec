import subprocess
import sys
import threading
from importlib import metadata

import immunity_hnswlib
import numpy as np
import pytest
from immunity.plugins import get_plugin_manager
from immunity.vectors import BruteForceIndex, HashingEmbedder, VectorIndex, get_index, l2_normalise
from immunity_hnswlib import HnswIndex


def clustered(n: int, d: int, clusters: int, seed: int, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(clusters, d)))
    members = centres[rng.integers(0, clusters, size=n)] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    return l2_normalise(members)


def test_importing_the_plugin_does_not_import_hnswlib():
    code = "import sys, immunity_hnswlib; print('hnswlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_entry_point_and_registration(monkeypatch):
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="immunity")}
    assert eps.get("hnswlib") == "immunity_hnswlib"
    monkeypatch.setenv("IMMUNITY_LOAD_PLUGINS", "hnswlib")  # load this entry point only, the real way
    pm = get_plugin_manager()
    assert pm.get_plugin("hnswlib") is immunity_hnswlib
    index = get_index(pm, "hnswlib", 32, ef_search=32)
    assert isinstance(index, HnswIndex) and isinstance(index, VectorIndex)
    assert index.name == "hnswlib" and index.ef_search == 32 and len(index) == 0


@pytest.mark.parametrize("space", ["cosine", "ip"])
def test_recall_and_similarities_match_exact_search(space):
    data = clustered(5000, 64, clusters=50, seed=1)
    ids = [f"fp_{i}" for i in range(len(data))]
    hnsw = HnswIndex(64, space=space, capacity=16, num_threads=1)  # small capacity: resized while adding
    exact = BruteForceIndex(64)
    for start in range(0, len(data), 1000):
        hnsw.add(ids[start:start + 1000], data[start:start + 1000])
    exact.add(ids, data)
    assert len(hnsw) == 5000 and hnsw.capacity >= 5000 and hnsw.ids == ids
    queries = clustered(200, 64, clusters=50, seed=2)
    hits = 0
    for q in queries:
        got = hnsw.search(q, 10)
        ref = exact.search(q, 10)
        hits += len({i for i, _ in got} & {i for i, _ in ref})
        sims = dict(exact.search(q, 5000))
        for id_, sim in got:  # the similarities are real cosines, best first
            assert abs(sim - sims[id_]) < 1e-4
        assert all(a[1] >= b[1] - 1e-6 for a, b in zip(got, got[1:], strict=False))
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, recall


def test_edges_replace_and_errors():
    index = HnswIndex(4)
    assert index.search(np.ones(4), 3) == []
    index.add(["a", "b"], np.array([[1, 0, 0, 0], [0, 3, 0, 0]], dtype=np.float32))
    assert index.search(np.zeros(4), 2) == []
    assert index.search(np.array([1, 0, 0, 0]), 0) == []
    res = index.search(np.array([0, 2, 0, 0]), 10)  # k larger than the index
    assert [i for i, _ in res] == ["b", "a"] and np.isclose(res[0][1], 1.0, atol=1e-6)
    index.add(["a"], np.array([[0, 0, 1, 0]], dtype=np.float32))  # replace
    assert len(index) == 2 and index.search(np.array([0, 0, 1, 0]), 1)[0][0] == "a"
    index.add(["c", "c"], np.array([[0, 0, 0, 1], [0, 0, 0, 2]], dtype=np.float32))  # one id twice in a batch
    assert len(index) == 3 and "c" in index
    index.add([], np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add(["d"], np.ones((1, 5)))
    with pytest.raises(ValueError):
        index.add(["d", "e"], np.ones((1, 4)))
    with pytest.raises(ValueError):
        index.search(np.ones(3), 1)
    with pytest.raises(ValueError):
        index.search(np.array([np.nan, 0, 0, 0]), 1)
    with pytest.raises(ValueError):
        HnswIndex(4, space="l2")
    with pytest.raises(ValueError):
        HnswIndex(0)


def test_matches_step_signatures_from_the_hashing_embedder():
    emb = HashingEmbedder()
    patterns = {
        "loop_search": {"act:SEARCH": 1, "ngram:SEARCH>SEARCH": 1, "ngram:SEARCH>SEARCH>SEARCH": 1},
        "edit_no_verify": {"act:EDIT": 1, "ngram:EDIT>EDIT": 1, "steps_since_verify": 2.0},
        "tool_error_repeat": {"act:EXECUTE": 1, "err:file_not_found": 1, "ngram:EXECUTE>EXECUTE": 1},
    }
    index = HnswIndex(emb.dimension)
    index.add(list(patterns), emb.embed_features_batch(patterns.values()))
    step = {"act:EXECUTE": 1, "err:file_not_found": 1, "ngram:EDIT>EXECUTE": 1}
    best, sim = index.search(emb.embed_features(step), 3)[0]
    assert best == "tool_error_repeat" and sim > 0.5


def test_concurrent_add_and_search():
    data = clustered(3000, 32, clusters=20, seed=5)
    index = HnswIndex(32, capacity=8)
    index.add(["p0"], data[:1])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(1, 3000, 100):
                stop = min(start + 100, 3000)
                index.add([f"p{i}" for i in range(start, stop)], data[start:stop])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for q in data[:300]:
                assert index.search(q, 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(index) == 3000
