"""The pack format: round trip, refusals with clear messages, merging, installing, embedders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from immunity.errors import PackError
from immunity.learning.matcher import PackMatcher
from immunity.learning.packs import (
    encode_array,
    install_pack,
    installed_packs,
    load_pack,
    merge_packs,
    pack_document,
    pattern_matrix,
    resolve_pack,
    save_pack,
)
from immunity.plugins import get_plugin_manager


def _doc(learned: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(learned["path"]).read_text())


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "p.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return str(p)


def test_round_trip_is_data_only_and_hashed(learned: dict[str, Any], tmp_path: Path) -> None:
    pack = load_pack(learned["path"])
    assert pack.content_hash and pack.content_hash.startswith("sha256:")
    assert len(pack.patterns) == len(learned["pack"].patterns)
    assert np.allclose(pattern_matrix(pack), pattern_matrix(learned["pack"]), atol=1e-6)
    assert all(p.vector == [] for p in pack.patterns)  # held once, as the pack's matrix
    doc = _doc(learned)
    assert doc["format"] == "immunity-pattern-pack" and doc["format_version"] == 1
    assert set(doc["vectors"]) == {"dtype", "shape", "base64"}
    assert all(p["vector"] == [] for p in doc["patterns"])
    # gzip variant, and saving twice gives the same hash (deterministic builds)
    gz = tmp_path / "p.json.gz"
    assert save_pack(pack, gz) == pack.content_hash
    assert load_pack(gz).content_hash == pack.content_hash


def test_tampered_pack_is_refused(learned: dict[str, Any], tmp_path: Path) -> None:
    doc = _doc(learned)
    doc["threshold"] = 0.0001
    with pytest.raises(PackError, match="content hash mismatch"):
        load_pack(_write(tmp_path, doc))


def test_unknown_version_is_refused(learned: dict[str, Any], tmp_path: Path) -> None:
    doc = _doc(learned)
    doc["format_version"] = 99
    from immunity.learning.packs import content_hash

    doc["content_hash"] = content_hash(doc)
    with pytest.raises(PackError, match="unknown pack format version 99"):
        load_pack(_write(tmp_path, doc))


def test_wrong_dimension_is_refused(learned: dict[str, Any], tmp_path: Path) -> None:
    from immunity.learning.packs import content_hash

    doc = _doc(learned)
    doc["dimension"] = doc["dimension"] // 2
    doc["content_hash"] = content_hash(doc)
    with pytest.raises(PackError, match="dimension"):
        load_pack(_write(tmp_path, doc))


def test_vector_count_mismatch_is_refused(learned: dict[str, Any], tmp_path: Path) -> None:
    from immunity.learning.packs import content_hash

    doc = _doc(learned)
    doc["vectors"] = encode_array(np.zeros((len(doc["patterns"]) + 1, doc["dimension"]), np.float32))
    doc["content_hash"] = content_hash(doc)
    with pytest.raises(PackError, match="vectors for .* patterns"):
        load_pack(_write(tmp_path, doc))


def test_not_a_pack_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="not a pattern pack"):
        load_pack(_write(tmp_path, {"hello": 1}))
    with pytest.raises(PackError, match="no pack file"):
        load_pack(tmp_path / "nope.json")
    with pytest.raises(PackError, match="no pattern pack 'nope'"):
        resolve_pack("nope", {})


def test_other_embedder_is_refused(learned: dict[str, Any]) -> None:
    pack = load_pack(learned["path"])
    with pytest.raises(PackError, match="was built with embedder"):
        PackMatcher([pack], get_plugin_manager(), embedder_options={"dimension": 128})


def test_merge_pools_patterns_and_keeps_each_model(learned: dict[str, Any], tmp_path: Path) -> None:
    a = load_pack(learned["path"])
    b = load_pack(learned["path"])
    b.name = "other"
    for p in b.patterns:
        p.pattern_id = p.pattern_id + "-b"
    b.model["members"][0]["pattern_ids"] = [i + "-b" for i in b.model["members"][0]["pattern_ids"]]
    b.model["members"][0]["threshold"] = 0.999
    merged = merge_packs(a, b)
    assert len(merged.patterns) == len(a.patterns) + len(b.patterns)
    assert len(merged.model["members"]) == 2 and merged.threshold is None
    path = tmp_path / "merged.json"
    save_pack(merged, path)
    m = PackMatcher([load_pack(path)], get_plugin_manager())
    assert [mem.threshold for mem in m.members] == [a.threshold, 0.999]
    # a pack from another embedder does not merge
    c = load_pack(learned["path"])
    c.embedder, c.dimension = "hashing-v1-d64", 64
    with pytest.raises(PackError, match="embedders differ"):
        merge_packs(a, c)


def test_merged_pack_alarms_where_either_member_does(learned: dict[str, Any], tmp_path: Path) -> None:
    from immunity.learning.pipeline import score_rows

    a = load_pack(learned["path"])
    silent = load_pack(learned["path"])
    silent.name = "silent"
    silent.model["members"][0]["threshold"] = 1.1
    p_silent = tmp_path / "silent.json"
    save_pack(silent, p_silent)
    rows_a = score_rows(learned["test"], [learned["path"]])
    rows_both = score_rows(learned["test"], [learned["path"], str(p_silent)])
    rows_silent = score_rows(learned["test"], [str(p_silent)])
    assert not any(r["alarm"] for r in rows_silent)
    assert [r["alarm"] for r in rows_both] == [r["alarm"] for r in rows_a]
    assert a.threshold is not None


def test_install_and_find_by_name(learned: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMMUNITY_PACKS_DIR", str(tmp_path / "packs"))
    dest = install_pack(learned["path"])
    assert dest.exists()
    assert installed_packs() == {"synthetic": dest}
    pm = get_plugin_manager()
    reg = pm.registry("pattern_packs")
    assert reg["synthetic"] == str(dest)
    assert resolve_pack("synthetic", reg).content_hash == load_pack(learned["path"]).content_hash


def test_document_of_an_inconsistent_pack_is_refused(learned: dict[str, Any]) -> None:
    pack = load_pack(learned["path"])
    pack.dimension = 3
    with pytest.raises(PackError, match="dimension"):
        pack_document(pack)
