"""Pack directories (pack.json + patterns.jsonl + memory-mapped vectors.npy): round trip, digests,
signing, lazy pattern lines, installing, and the installed-pack registry that parses a pack once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.errors import PackError
from immunity.learning import packs
from immunity.learning.matcher import PackMatcher
from immunity.learning.packs import (
    PatternRows,
    content_hash,
    install_pack,
    installed_packs,
    load_pack,
    pattern_matrix,
    resolve_pack,
    save_pack,
)
from immunity.plugins import get_plugin_manager


def invoke(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), list(args))


@pytest.fixture
def saved(learned: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    d = tmp_path / "synthetic"
    digest = save_pack(learned["pack"], d)
    return {"dir": d, "digest": digest, "json": learned["path"], "pack": learned["pack"]}


def test_a_pack_directory_round_trips_with_its_vectors_memory_mapped(saved: dict[str, Any]) -> None:
    d = saved["dir"]
    assert sorted(f.name for f in d.iterdir()) == ["pack.json", "patterns.jsonl", "vectors.npy"]
    doc = json.loads((d / "pack.json").read_text())
    assert doc["format_version"] == 2 and doc["content_hash"] == saved["digest"]
    assert doc["vectors"]["file"] == "vectors.npy" and len(doc["vectors"]["sha256"]) == 64
    assert doc["patterns"]["count"] == len(saved["pack"].patterns) == len(doc["patterns"]["pattern_id"])
    assert np.load(d / "vectors.npy", allow_pickle=False).dtype == np.float32

    pack = load_pack(d)
    assert isinstance(pack.patterns, PatternRows) and pack.content_hash == saved["digest"]
    mat = pattern_matrix(pack)
    assert isinstance(mat, np.memmap) and not mat.flags.writeable
    assert np.array_equal(mat, pattern_matrix(saved["pack"]))
    # nothing of the pattern lines is parsed until a pattern is used
    assert not pack.patterns._cache
    for got, want in zip(pack.patterns, saved["pack"].patterns, strict=True):
        assert got.model_dump(exclude={"vector"}) == want.model_dump(exclude={"vector"})
        assert got.vector == []
    # saving the loaded pack again gives the same bytes and hash; to one file and back, the same vectors
    assert save_pack(pack, d.parent / "again") == saved["digest"]
    for name in ("pack.json", "patterns.jsonl", "vectors.npy"):
        assert (d / name).read_bytes() == (d.parent / "again" / name).read_bytes()
    one = d.parent / "one.json"
    save_pack(pack, one)
    assert np.array_equal(pattern_matrix(load_pack(one)), mat)


def test_matching_a_pack_directory_parses_only_the_patterns_it_uses(saved: dict[str, Any]) -> None:
    pack = load_pack(saved["dir"])
    m = PackMatcher([pack], get_plugin_manager())
    assert len(m.members) == len(load_pack(saved["json"]).model["members"])
    assert len(pack.patterns._cache) == 0  # building the matcher read columns, not lines
    assert isinstance(m.members[0].table.vectors, np.memmap)  # the table is the pack's matrix, not a copy


def test_scores_from_a_pack_directory_equal_the_one_file_pack(learned: dict[str, Any], saved: dict[str, Any]) -> None:
    from immunity.learning.pipeline import score_rows

    a = score_rows(learned["test"], [saved["json"]])
    b = score_rows(learned["test"], [str(saved["dir"])])
    assert len(a) == len(b) > 0
    assert [(r["run_id"], r["step"], r["risk"], r["alarm"], r["patterns"]) for r in a] == \
        [(r["run_id"], r["step"], r["risk"], r["alarm"], r["patterns"]) for r in b]
    assert any(r["alarm"] for r in b)


@pytest.mark.parametrize("target", ["vectors.npy", "patterns.jsonl"])
def test_a_changed_sidecar_byte_is_refused(saved: dict[str, Any], target: str) -> None:
    f = saved["dir"] / target
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(PackError, match="modified or damaged"):
        load_pack(saved["dir"])
    res = invoke("pack", "verify", str(saved["dir"]))
    assert res.exit_code == 1 and "modified or damaged" in res.output


def test_a_changed_column_is_refused_and_a_rehashed_one_breaks_the_signature(saved: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    manifest = saved["dir"] / "pack.json"
    doc = json.loads(manifest.read_text())
    doc["patterns"]["weight"][0] = 99.0
    manifest.write_text(json.dumps(doc))
    with pytest.raises(PackError, match="content hash mismatch"):
        load_pack(saved["dir"])
    doc["patterns"]["weight"][0] = float("inf")
    manifest.write_text(json.dumps(doc))
    with pytest.raises(PackError, match="finite"):
        load_pack(saved["dir"])


def test_a_signed_pack_directory_verifies_and_refuses_new_vectors(saved: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    assert invoke("pack", "keygen", str(tmp_path / "alice")).exit_code == 0
    pub = (tmp_path / "alice.pub").read_text().strip()
    res = invoke("pack", "sign", str(saved["dir"]), "--key", str(tmp_path / "alice"))
    assert res.exit_code == 0, res.output
    res = invoke("pack", "verify", str(saved["dir"]), "--key", pub)
    assert res.exit_code == 0 and "signed by" in res.output, res.output
    assert load_pack(saved["dir"])._signer == pub
    # new vectors with a digest and content hash made to match: the signature no longer holds
    vec = np.load(saved["dir"] / "vectors.npy", allow_pickle=False) * -1
    np.save(saved["dir"] / "vectors.npy", vec.astype(np.float32), allow_pickle=False)
    manifest = saved["dir"] / "pack.json"
    doc = json.loads(manifest.read_text())
    import hashlib

    doc["vectors"]["sha256"] = hashlib.sha256((saved["dir"] / "vectors.npy").read_bytes()).hexdigest()
    doc["content_hash"] = content_hash(doc)
    manifest.write_text(json.dumps(doc))
    with pytest.raises(PackError, match="changed after it was signed"):
        load_pack(saved["dir"])


def test_a_malformed_pattern_line_is_refused_when_read_and_by_pack_verify(saved: dict[str, Any]) -> None:
    import hashlib

    lines = (saved["dir"] / "patterns.jsonl").read_bytes().splitlines(keepends=True)
    body = json.loads(lines[0])
    body["support"] = "-inf"  # a number field holding text
    lines[0] = json.dumps(body, sort_keys=True).encode() + b"\n"
    (saved["dir"] / "patterns.jsonl").write_bytes(b"".join(lines))
    manifest = saved["dir"] / "pack.json"
    doc = json.loads(manifest.read_text())
    doc["patterns"]["sha256"] = hashlib.sha256(b"".join(lines)).hexdigest()
    doc["content_hash"] = content_hash(doc)
    manifest.write_text(json.dumps(doc))
    pack = load_pack(saved["dir"])  # the digests hold: the author's own bad line loads ...
    with pytest.raises(PackError, match="pattern 0 .*'support' must be a finite number"):
        pack.patterns[0]  # noqa: B018 - ... and is refused when it is read
    res = invoke("pack", "verify", str(saved["dir"]))
    assert res.exit_code == 1 and "'support' must be a finite number" in res.output


def test_a_loaded_pack_is_a_copy_of_the_cached_one(saved: dict[str, Any]) -> None:
    a = load_pack(saved["dir"])
    a.model["members"][0]["threshold"] = 0.999
    a.name = "changed"
    b = load_pack(saved["dir"])
    assert b.name != "changed" and b.model["members"][0]["threshold"] != 0.999
    assert pattern_matrix(a) is pattern_matrix(b)  # the read-only vectors are shared, not copied
    c = load_pack(saved["json"])
    c.patterns[0].weight = 123.0
    assert load_pack(saved["json"]).patterns[0].weight != 123.0


def test_installed_pack_directories_and_a_registry_that_parses_each_pack_once(
        saved: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "installed"
    dest = install_pack(saved["dir"], d)
    assert dest.is_dir() and (dest / "vectors.npy").is_file()
    calls: list[Path] = []
    real = packs.read_document

    def counting(path: Any) -> Any:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(packs, "read_document", counting)
    monkeypatch.setattr(packs, "_HEADS", {})
    for _ in range(3):
        assert installed_packs(d) == {"synthetic": dest}
    assert len(calls) == 1
    # a changed pack is read again
    manifest = dest / "pack.json"
    manifest.write_text(manifest.read_text() + " ")
    assert installed_packs(d) == {"synthetic": dest}
    assert len(calls) == 2
    # and it resolves by name through the registry
    pack = resolve_pack("synthetic", {"synthetic": str(dest)})
    assert isinstance(pack.patterns, PatternRows)


def test_a_one_file_pack_still_loads_its_vectors_as_one_matrix(saved: dict[str, Any]) -> None:
    pack = load_pack(saved["json"])
    assert isinstance(pack.patterns, list) and all(p.vector == [] for p in pack.patterns)
    mat = pattern_matrix(pack)
    assert mat.dtype == np.float32 and mat.shape == (len(pack.patterns), pack.dimension)
    assert pattern_matrix(pack) is mat  # held once, not rebuilt from lists
