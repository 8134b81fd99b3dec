import socket
import subprocess
import sys
from importlib import metadata

import immunity_fastembed
import numpy as np
import pytest
from immunity.errors import PackError
from immunity.plugins import get_plugin_manager
from immunity.vectors import BruteForceIndex, Embedder, HashingEmbedder, check_compatible, get_embedder
from immunity_fastembed import FastEmbedEmbedder
from immunity_fastembed.testing import build_tiny_model, reference_embedding

MODEL = "immunity/tiny-test-embedder"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: the model must load from disk only."""

    def refuse(self, address):  # noqa: ANN001
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", hidden=16, seed=0)


@pytest.fixture
def embedder(model_dir, tmp_path):
    return FastEmbedEmbedder(model_name=MODEL, specific_model_path=model_dir, pooling="mean",
                             cache_dir=tmp_path / "cache")


TEXTS = [
    "Tool error: file not found",
    "the test failed again after the edit",
    "customer asked for a refund of the order",
    "zzz qqq unknown words only",
]


def test_importing_the_plugin_does_not_import_fastembed():
    code = "import sys, immunity_fastembed; print('fastembed' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False False"


def test_the_tiny_model_directory_has_what_fastembed_reads(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json",
            "special_tokens_map.json"} <= names


def test_loaded_through_the_entry_point_and_the_real_fastembed_path(monkeypatch, model_dir, tmp_path):
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="immunity")}
    assert eps.get("fastembed") == "immunity_fastembed"
    monkeypatch.setenv("IMMUNITY_LOAD_PLUGINS", "fastembed")
    pm = get_plugin_manager()
    assert pm.get_plugin("fastembed") is immunity_fastembed
    emb = get_embedder(pm, "fastembed", model_name=MODEL, specific_model_path=str(model_dir), pooling="mean",
                       cache_dir=str(tmp_path / "cache"))
    assert isinstance(emb, Embedder)
    assert emb.name == f"fastembed-{MODEL}-mean-d16" and emb.dimension == 16  # dimension from config.json
    # fastembed really ran the ONNX graph in onnxruntime with our tokenizer and pooled it
    from fastembed import TextEmbedding

    assert isinstance(emb._model, TextEmbedding)
    assert type(emb._model.model).__name__ == "CustomTextEmbedding"
    assert emb._model.model.model is not None  # an onnxruntime InferenceSession


def test_vectors_equal_an_independent_numpy_computation(embedder, model_dir):
    out = embedder.embed(TEXTS)
    assert out.shape == (len(TEXTS), 16) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.allclose(out, reference_embedding(model_dir, TEXTS, seed=0), atol=1e-5)


def test_batches_and_padding_do_not_change_vectors(model_dir, tmp_path):
    one_by_one = FastEmbedEmbedder(model_name=MODEL, specific_model_path=model_dir, pooling="mean",
                                   cache_dir=tmp_path / "c1", batch_size=1)
    together = FastEmbedEmbedder(model_name=MODEL, specific_model_path=model_dir, pooling="mean",
                                 cache_dir=tmp_path / "c2", batch_size=64)
    # texts of different lengths in one batch are padded; the attention mask keeps padding out
    assert np.allclose(one_by_one.embed(TEXTS), together.embed(TEXTS), atol=1e-5)


def test_embed_edges(embedder):
    assert embedder.embed([]).shape == (0, 16)
    with pytest.raises(TypeError):
        embedder.embed("one string")  # type: ignore[arg-type]
    a, b = embedder.embed(["file not found", "file not found"])
    assert np.allclose(a, b)


def test_other_poolings_give_other_names_and_vectors(model_dir, tmp_path):
    cls = FastEmbedEmbedder(model_name=MODEL + "-first-token", specific_model_path=model_dir, pooling="cls",
                            cache_dir=tmp_path / "c")
    assert cls.name == f"fastembed-{MODEL}-first-token-cls-d16"
    mean = FastEmbedEmbedder(model_name=MODEL, specific_model_path=model_dir, pooling="mean",
                             cache_dir=tmp_path / "c")
    assert cls.name != mean.name
    assert not np.allclose(cls.embed(TEXTS[:2]), mean.embed(TEXTS[:2]))
    with pytest.raises(ValueError, match="already registered"):
        FastEmbedEmbedder(model_name=MODEL, specific_model_path=model_dir, pooling="cls", cache_dir=tmp_path / "c")


def test_a_pack_built_with_one_embedder_is_refused_by_the_other(embedder):
    hashing = HashingEmbedder()
    with pytest.raises(PackError, match=r"built with embedder 'hashing-v1-d256' \(dimension 256\); this runtime "
                                        r"uses 'fastembed-immunity/tiny-test-embedder-mean-d16' \(dimension 16\)"):
        check_compatible(hashing.name, hashing.dimension, embedder, pack="support-basics")
    with pytest.raises(PackError, match="fastembed-immunity/tiny-test-embedder-mean-d16"):
        check_compatible(embedder.name, embedder.dimension, hashing)
    check_compatible(embedder.name, embedder.dimension, embedder)


def test_vectors_work_in_an_index(embedder):
    index = BruteForceIndex(embedder.dimension)
    index.add([f"t{i}" for i in range(len(TEXTS))], embedder.embed(TEXTS))
    best, sim = index.search(embedder.embed([TEXTS[1]])[0], 1)[0]
    assert best == "t1" and sim == pytest.approx(1.0, abs=1e-5)


def test_clear_errors(model_dir, tmp_path):
    with pytest.raises(ValueError, match="fastembed does not know the model 'acme/unknown'.*specific_model_path"):
        FastEmbedEmbedder(model_name="acme/unknown")
    with pytest.raises(ValueError, match="pooling must be one of"):
        FastEmbedEmbedder(model_name="acme/other", specific_model_path=model_dir, pooling="max")
    with pytest.raises(ValueError, match="do not pass pooling"):
        FastEmbedEmbedder(model_name="BAAI/bge-small-en-v1.5", pooling="mean")
    with pytest.raises(ValueError, match="hidden_size"):
        FastEmbedEmbedder(model_name="acme/no-config", specific_model_path=tmp_path, pooling="mean")


def test_a_listed_model_that_is_not_cached_fails_offline_without_downloading(tmp_path):
    with pytest.raises(ValueError) as err:
        FastEmbedEmbedder(model_name="BAAI/bge-small-en-v1.5", cache_dir=tmp_path / "empty", local_files_only=True)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "could not load model 'BAAI/bge-small-en-v1.5' from the local cache only" in notes
