import hashlib
import os
import subprocess
import sys
import threading

import immunity.defaults.vectors as default_vectors
import numpy as np
import pytest
from immunity.errors import PackError
from immunity.models import FailurePattern, PatternPack
from immunity.plugins import get_plugin_manager
from immunity.vectors import (
    BruteForceIndex,
    Embedder,
    HashingEmbedder,
    UnknownBackendError,
    VectorIndex,
    check_compatible,
    get_embedder,
    get_index,
    l2_normalise,
)


def plugin_manager():
    pm = get_plugin_manager(load_entrypoints=False)
    if not pm.is_registered(default_vectors):
        pm.register(default_vectors, name="immunity.defaults.vectors")
    return pm


def cos(a, b):
    return float(np.dot(a, b))


# -- hashing embedder ----------------------------------------------------------------------------


def test_embed_shape_dtype_and_unit_rows():
    emb = HashingEmbedder()
    assert emb.name == "hashing-v1-d256" and emb.dimension == 256
    out = emb.embed(["FileNotFoundError: no such file 'a.py'", "run the tests", "", "  ...  "])
    assert out.shape == (4, 256) and out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    assert np.allclose(norms[:2], 1.0, atol=1e-6)
    assert norms[2] == 0.0 and norms[3] == 0.0  # no word characters: zero rows stay zero
    assert emb.embed([]).shape == (0, 256)
    with pytest.raises(TypeError):
        emb.embed("a single string")  # type: ignore[arg-type]


def test_name_carries_every_parameter_that_changes_vectors():
    assert HashingEmbedder(dimension=64).name == "hashing-v1-d64"
    assert HashingEmbedder(char_ngrams=(0, 0)).name == "hashing-v1-d256-c00"
    assert HashingEmbedder(char_weight=1.0, bigram_weight=0.0).name == "hashing-v1-d256-cw1-bw0"
    a, b = HashingEmbedder(), HashingEmbedder(char_ngrams=(0, 0))
    assert not np.allclose(a.embed(["timeout error"]), b.embed(["timeout error"]))
    with pytest.raises(ValueError):
        HashingEmbedder(dimension=1)
    with pytest.raises(ValueError):
        HashingEmbedder(char_ngrams=(4, 3))


def test_similar_texts_are_closer_than_unrelated_ones():
    emb = HashingEmbedder()
    base, near, far, plural = emb.embed([
        "tool error: file not found while reading config.yaml",
        "error: config.yaml file not found",
        "the customer asked for a refund of the last invoice",
        "tool errors: files not found while reading config.yaml",
    ])
    assert cos(base, near) > 0.5 > cos(base, far)
    assert cos(base, far) < 0.25
    # character n-grams make inflected forms close, beyond the shared words
    assert cos(base, plural) > cos(base, near)
    # bigrams make word order count
    ab, ba = emb.embed(["delete file then verify", "verify file then delete"])
    assert 0.5 < cos(ab, ba) < 0.999


def test_case_is_ignored_and_collisions_are_signed():
    emb = HashingEmbedder(dimension=16, char_ngrams=(0, 0), bigram_weight=0.0)
    upper, lower = emb.embed(["Edit File", "edit file"])
    assert np.allclose(upper, lower)
    # 200 distinct words in 16 buckets: signed hashing makes some buckets cancel instead of all piling up
    words = " ".join(f"w{i}" for i in range(200))
    vec = HashingEmbedder(dimension=16, char_ngrams=(0, 0), bigram_weight=0.0)._embed_one(words)
    raw = vec * np.sqrt(200)  # un-normalise approximately: the counts per bucket are signed sums
    assert (raw > 0).any() and (raw < 0).any()


_DETERMINISM_SCRIPT = """
import hashlib, json, sys
import numpy as np
from immunity.vectors import HashingEmbedder
emb = HashingEmbedder()
texts = ["FileNotFoundError: no such file 'a.py'", "pytest -q: 3 failed, 12 passed", "ünïcödé tëxt ☃"]
v = emb.embed(texts)
f = emb.embed_features({"act:EDIT": 1, "ngram:EDIT>VERIFY": 1, "err:file_not_found": 1,
                        "steps_since_verify": 3.0, "tool": "write_file"})
print(hashlib.sha256(np.round(v, 6).tobytes() + np.round(f, 6).tobytes()).hexdigest())
"""


def _digest_in_subprocess(seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip()


def test_embeddings_are_identical_across_processes_and_hash_seeds():
    first, second = _digest_in_subprocess("1"), _digest_in_subprocess("12345")
    assert first == second
    # Pinned: packs store vectors made by "hashing-v1"; if this digest changes, vectors in every
    # shipped pack no longer match what the embedder produces. Change the algorithm only together
    # with HashingEmbedder.VERSION.
    assert first == "b03f5d56e1045b7ce0065b98ba8d81e91b1ae041999a66aa49fa0880dd0ebe7b"


def test_embed_features_indicators_categories_and_numbers():
    emb = HashingEmbedder()
    sig = {"act:EDIT": 1, "ngram:EDIT>VERIFY": 1, "err:file_not_found": 1, "steps_since_verify": 3.0}
    v = emb.embed_features(sig)
    assert v.shape == (256,) and v.dtype == np.float32
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-6)
    # a string value is a category: {"act": "EDIT"} is {"act=EDIT": 1}
    assert np.allclose(emb.embed_features({"act": "EDIT"}), emb.embed_features({"act=EDIT": 1.0}))
    # None, zero and non-finite values are skipped; an empty dict is a zero vector
    assert np.allclose(emb.embed_features({**sig, "x": 0, "y": None, "z": float("nan")}), v)
    assert not emb.embed_features({}).any()
    # True counts as 1
    assert np.allclose(emb.embed_features({"act:EDIT": True}), emb.embed_features({"act:EDIT": 1}))
    # the numeric value weighs the feature: a step far from its last verify moves towards that feature
    near = emb.embed_features({**sig, "steps_since_verify": 1.0})
    far = emb.embed_features({**sig, "steps_since_verify": 8.0})
    only = emb.embed_features({"steps_since_verify": 1.0})
    assert cos(far, only) > cos(near, only)
    # steps that share most of their signature are close, steps that share nothing are not
    other = emb.embed_features({"act:SEARCH": 1, "ngram:SEARCH>SEARCH": 1, "err:timeout": 1})
    close = emb.embed_features({**sig, "err:permission_denied": 1})
    assert cos(v, close) > 0.7 and abs(cos(v, other)) < 0.3
    with pytest.raises(TypeError):
        emb.embed_features({"bad": [1, 2]})
    batch = emb.embed_features_batch([sig, {"act": "EDIT"}])
    assert batch.shape == (2, 256) and np.allclose(batch[0], v)
    assert emb.embed_features_batch([]).shape == (0, 256)


def test_protocols_are_satisfied():
    assert isinstance(HashingEmbedder(), Embedder)
    assert isinstance(BruteForceIndex(8), VectorIndex)


def test_l2_normalise_keeps_zero_rows_and_rejects_nan():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32 and np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert np.allclose(l2_normalise(np.array([0.0, 2.0])), [0.0, 1.0])
    with pytest.raises(ValueError):
        l2_normalise(np.array([np.nan, 1.0]))


# -- brute-force index ---------------------------------------------------------------------------


def _random_unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return l2_normalise(rng.normal(size=(n, d)))


def test_brute_force_matches_an_exact_reference():
    data = _random_unit(2000, 32, seed=1)
    ids = [f"fp_{i}" for i in range(len(data))]
    index = BruteForceIndex(32, capacity=4)
    for start in range(0, len(data), 300):  # many adds: the matrix grows geometrically
        index.add(ids[start:start + 300], data[start:start + 300])
    assert len(index) == 2000 and index.ids == ids
    queries = _random_unit(20, 32, seed=2)
    for q in queries:
        got = index.search(q, 10)
        ref = np.argsort(-(data @ q))[:10]
        assert [i for i, _ in got] == [ids[j] for j in ref]
        assert np.allclose([s for _, s in got], (data @ q)[ref], atol=1e-5)
        assert all(a[1] >= b[1] for a, b in zip(got, got[1:], strict=False))


def test_brute_force_edges():
    index = BruteForceIndex(4)
    assert index.search(np.ones(4), 3) == []  # empty
    index.add(["a", "b"], np.array([[1, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float32))
    assert index.search(np.zeros(4), 3) == []  # zero query
    assert index.search(np.array([1, 0, 0, 0]), 0) == []
    res = index.search(np.array([0, 5, 0, 0]), 10)  # k larger than the index, raw query
    assert [i for i, _ in res] == ["a", "b"][::-1] and np.isclose(res[0][1], 1.0)
    # replacing an id keeps one row per id
    index.add(["a"], np.array([[0, 1, 0, 0]], dtype=np.float32))
    assert len(index) == 2 and np.isclose(index.search(np.array([0, 1, 0, 0]), 2)[1][1], 1.0)
    assert "a" in index and "zz" not in index
    with pytest.raises(ValueError):
        index.add(["c"], np.ones((1, 5)))
    with pytest.raises(ValueError):
        index.add(["c", "d"], np.ones((1, 4)))
    with pytest.raises(ValueError):
        index.search(np.ones(3), 1)
    index.add(["single"], np.array([0, 0, 1, 0]))  # one id, a 1-D vector
    assert index.search(np.array([0, 0, 1, 0]), 1)[0][0] == "single"


def test_brute_force_concurrent_add_and_search():
    data = _random_unit(4000, 16, seed=3)
    index = BruteForceIndex(16, capacity=1)
    index.add(["seed"], data[:1])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(1, 4000, 50):
                stop = min(start + 50, 4000)
                index.add([f"p{i}" for i in range(start, stop)], data[start:stop])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for q in data[:400]:
                res = index.search(q, 5)
                assert res and all(isinstance(i, str) and -1.0001 <= s <= 1.0001 for i, s in res)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(index) == 4000


# -- lookup through plugins ----------------------------------------------------------------------


def test_registered_through_the_plugin_manager():
    pm = plugin_manager()
    emb = get_embedder(pm, "hashing", dimension=128)
    assert isinstance(emb, HashingEmbedder) and emb.dimension == 128
    index = get_index(pm, "brute", 128)
    assert isinstance(index, BruteForceIndex) and index.name == "brute"
    index.add(["x"], emb.embed(["hello world"]))
    assert index.search(emb.embed(["hello world"])[0], 1)[0][0] == "x"


def test_unknown_names_list_what_is_installed():
    pm = plugin_manager()
    with pytest.raises(UnknownBackendError, match=r"no embedder named 'nope' is installed \(installed: .*hashing"):
        get_embedder(pm, "nope")
    with pytest.raises(LookupError, match=r"no vector index named 'faiss'.*brute"):
        get_index(pm, "faiss", 8)


# -- pack compatibility --------------------------------------------------------------------------


def test_check_compatible_refuses_another_embedder_clearly():
    emb = HashingEmbedder()
    vectors = emb.embed(["tool error: file not found"])
    pack = PatternPack(name="coding-basics", embedder=emb.name, dimension=emb.dimension,
                       patterns=[FailurePattern(error_class="tool_error", vector=vectors[0].tolist())])
    check_compatible(pack.embedder, pack.dimension, emb, pack=pack.name)  # same embedder: fine
    check_compatible(pack.embedder, pack.dimension, HashingEmbedder(dimension=256), pack=pack.name)

    other = HashingEmbedder(dimension=384)
    with pytest.raises(PackError) as err:
        check_compatible(pack.embedder, pack.dimension, other, pack=pack.name)
    msg = str(err.value)
    assert "pack 'coding-basics' was built with embedder 'hashing-v1-d256' (dimension 256)" in msg
    assert "this runtime uses 'hashing-v1-d384' (dimension 384)" in msg and "rebuild the pack" in msg

    # same dimension, different parameters: still refused
    with pytest.raises(PackError, match="hashing-v1-d256-c00"):
        check_compatible(pack.embedder, pack.dimension, HashingEmbedder(char_ngrams=(0, 0)))

    # a pack without vectors works with any embedder; vectors without a named embedder do not
    check_compatible(None, 0, other)
    with pytest.raises(PackError, match="does not say which embedder"):
        check_compatible(None, 256, emb, pack="x")


def test_pinned_digest_helper_is_stable_in_process():
    # the in-process digest equals the subprocess one (same script body), so the pin is meaningful
    emb = HashingEmbedder()
    texts = ["FileNotFoundError: no such file 'a.py'", "pytest -q: 3 failed, 12 passed", "ünïcödé tëxt ☃"]
    v = emb.embed(texts)
    f = emb.embed_features({"act:EDIT": 1, "ngram:EDIT>VERIFY": 1, "err:file_not_found": 1,
                            "steps_since_verify": 3.0, "tool": "write_file"})
    digest = hashlib.sha256(np.round(v, 6).tobytes() + np.round(f, 6).tobytes()).hexdigest()
    assert digest == _digest_in_subprocess("0")


def _reference_embedding(emb: HashingEmbedder, text: str) -> np.ndarray:
    """The hashing embedder's definition, one feature at a time (the vectorised code must agree)."""
    person = b"immunity-hash-v1"

    def slot(key: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8, person=person).digest(), "little")
        return h % emb.dimension, (1.0 if (h >> 63) & 1 else -1.0)

    words = emb.tokens(text)
    idx: list[int] = []
    val: list[float] = []
    lo, hi = emb.char_ngrams
    for word in words:
        i, s = slot("w:" + word)
        idx.append(i)
        val.append(s)
        marked = f"<{word}>"
        for n in range(lo, hi + 1) if hi else ():
            for start in range(max(len(marked) - n + 1, 0)):
                i, s = slot("c:" + marked[start:start + n])
                idx.append(i)
                val.append(s * emb.char_weight)
    if emb.bigram_weight:
        for a, b in zip(words, words[1:], strict=False):
            i, s = slot(f"b:{a} {b}")
            idx.append(i)
            val.append(s * emb.bigram_weight)
    acc = np.bincount(np.asarray(idx, dtype=np.intp), weights=np.asarray(val), minlength=emb.dimension)
    norm = float(np.sqrt(acc @ acc))
    return (acc / norm if norm else acc).astype(np.float32)


@pytest.mark.parametrize("options", [{}, {"char_ngrams": (2, 5), "char_weight": 0.3, "bigram_weight": 0.7},
                                     {"char_ngrams": (0, 0)}, {"dimension": 97, "bigram_weight": 0.0}])
def test_vectorised_text_embedding_equals_the_definition(options):
    emb = HashingEmbedder(**options)
    rng = np.random.default_rng(3)
    vocab = ["pytest", "FileNotFoundError", "a", "ab", "x1", "ünïcödé", "☃", "def", "return", "the", "tests"]
    texts = ["", "a", "ab c", "ünïcödé tëxt ☃"] + [
        " ".join(vocab[int(j)] + str(int(j) * int(k) % 7) for j, k in rng.integers(0, len(vocab), size=(n, 2)))
        for n in (1, 2, 5, 40, 400)]
    for _ in range(2):  # the second pass reads the per-word cache
        got = emb.embed(texts)
        for row, text in zip(got, texts, strict=True):
            assert np.array_equal(row, _reference_embedding(emb, text)), text[:40]
