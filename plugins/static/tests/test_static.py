"""The static encoder: a tiny model built here (offline), the shipped model, and a pack learned with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from immunity.plugins import get_plugin_manager
from immunity.vectors import HashingEmbedder, get_embedder
from immunity_static import MODEL_DIR, StaticEmbedder


def _tiny_model(path: Path) -> Path:
    """A word-level tokenizer over 8 words and an 8 x 4 table: 'refund' and 'money' share a
    direction, 'test' and 'pytest' another."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "refund", "money", "flight", "test", "pytest", "fails", "the"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    table = np.zeros((len(words), 4), np.float16)
    table[1] = [1, 0.1, 0, 0]
    table[2] = [0.9, 0.2, 0, 0]
    table[3] = [0.2, 1, 0, 0]
    table[4] = [0, 0, 1, 0.1]
    table[5] = [0, 0, 0.9, 0.2]
    table[6] = [0, 0, 0.2, 1]
    np.save(path / "embeddings.npy", table, allow_pickle=False)
    (path / "config.json").write_text(json.dumps({"name": "tiny-d4"}), encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return _tiny_model(tmp_path / "tiny")


def test_registered_and_built_through_the_plugin_manager(tiny: Path) -> None:
    emb = get_embedder(get_plugin_manager(), "static", model_path=str(tiny), dimension=8)
    assert isinstance(emb, StaticEmbedder)
    assert emb.name == "static-tiny-d4-p8+hashing-v1-d8"
    assert emb.dimension == 8


def test_embeds_by_meaning_deterministically(tiny: Path) -> None:
    emb = StaticEmbedder(tiny, dimension=8)
    v = emb.embed(["refund the flight", "money", "pytest fails", "", "unknownword"])
    assert v.shape == (5, 8) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-6)
    assert not np.any(v[3]) and not np.any(v[4])  # no known token: a zero row
    assert float(v[0] @ v[1]) > 0.8 > 0.1 > float(v[0] @ v[2])
    assert np.all(v[:, 4:] == 0)  # the table's 4 coordinates, zero-padded
    again = StaticEmbedder(tiny, dimension=8).embed(["refund the flight"])
    assert np.array_equal(again[0], v[0])


def test_structural_features_are_hashed_as_by_core(tiny: Path) -> None:
    emb = StaticEmbedder(tiny, dimension=8)
    row = {"actedit": 1.0, "failed": 1.0}
    assert np.array_equal(emb.embed_features(row), HashingEmbedder(dimension=8).embed_features(row))
    assert emb.embed_features_batch([row, row]).shape == (2, 8)


def test_bad_model_files_are_refused(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ValueError, match="smaller"):
        StaticEmbedder(tiny, dimension=2)
    bad = _tiny_model(tmp_path / "bad")
    np.save(bad / "embeddings.npy", np.zeros((3, 4), np.float32), allow_pickle=False)
    with pytest.raises(ValueError, match="rows"):
        StaticEmbedder(bad, dimension=8)
    np.save(bad / "embeddings.npy", np.asarray([[np.nan, 0.0]] * 8), allow_pickle=False)
    with pytest.raises(ValueError, match="finite"):
        StaticEmbedder(bad, dimension=8)


@pytest.mark.skipif(not (MODEL_DIR / "embeddings.npy").exists(), reason="the shipped model is not built")
def test_the_shipped_model_groups_tasks_by_meaning() -> None:
    emb = StaticEmbedder()
    assert emb.name.startswith("static-minilm-l6-static-d128-p256")
    v = emb.embed(["I want a refund for my cancelled flight", "Please cancel my reservation and give me my money back",
                   "The unit test fails with an AssertionError in parse_date"])
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.1
    assert float(v[1] @ v[2]) < float(v[0] @ v[1])


def test_a_pack_learned_with_the_encoder_scores_through_it(tiny: Path, tmp_path: Path) -> None:
    """Learning embeds tasks with the encoder; the pack names it with its options; scoring rebuilds it."""
    from immunity.importers import ImportedRun
    from immunity.learning.data import collect
    from immunity.learning.learn import LearnConfig
    from immunity.learning.packs import load_pack, save_pack
    from immunity.learning.pipeline import build_pack, score_rows
    from immunity.models import Run, Step

    def run(i: int, fail: bool) -> ImportedRun:
        task = ["refund the flight", "pytest fails", "money flight", "the test fails"][i % 4]
        r = Run(run_id=f"r{i}", task=f"{task} {i}", task_id=f"t{i // 2}", outcome="failure" if fail else "success")
        steps = [Step(tool="lookup", arguments={"q": i}, result="found")]
        steps += [Step(tool="act", arguments={"n": k}, result=None, error="boom", return_code=1)
                  for k in range(3 if fail else 1)]
        steps.append(Step(text="done", data={"final": True}))
        for k, s in enumerate(steps):
            s.index, s.run_id = k, r.run_id
        return ImportedRun(run=r, steps=steps, source="synthetic")

    items = [run(i, fail=i % 2 == 0) for i in range(40)]
    spec: dict[str, Any] = {"plugin": "static", "options": {"model_path": str(tiny), "dimension": 8}}
    data, emb = collect(items[:32], embedder_spec=spec)
    assert emb[0].name == "static-tiny-d4-p8+hashing-v1-d8"
    pack, _ = build_pack(data, emb, LearnConfig(folds=2, min_successes=2, min_failures=2), name="tiny")
    path = tmp_path / "tiny.json"
    save_pack(pack, path)
    loaded = load_pack(path)
    assert loaded.embedder == "static-tiny-d4-p8+hashing-v1-d8" and loaded.dimension == 8
    rows = score_rows(items[32:], [str(path)])
    assert {r["run_id"] for r in rows} == {f"r{i}" for i in range(32, 40)}
    assert all(0.0 <= r["risk"] <= 1.0 for r in rows)
