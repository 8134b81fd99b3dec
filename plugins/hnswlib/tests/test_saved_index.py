"""A pack directory's saved hnswlib index: written by ``immunity pack index`` (or after a build),
loaded instead of built, refused and rebuilt when it is not the pack's, and never waited for by a
running agent while it loads or builds."""

from __future__ import annotations

import itertools
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.learning.features import StepTracker
from immunity.learning.matcher import PackMatcher, embed_signatures
from immunity.learning.model import MODEL_INPUTS, Logistic, Member, PatternTable, TaskPrior, member_to_dict
from immunity.learning.packs import attach_vectors, load_pack, pattern_ids, save_pack
from immunity.models import FailurePattern, PatternPack
from immunity.plugins import get_plugin_manager
from immunity.runtime import Runtime
from immunity.vectors import HashingEmbedder, l2_normalise
from immunity_hnswlib import HnswIndex

CLASSES = ["loop", "no_progress", "repeated_tool_error"]
_CALLS = itertools.count()


def drive(session: Any, steps: int, tracker: StepTracker | None = None) -> list[str]:
    """A few tool steps through a real runtime session; the step signatures when given a tracker."""
    sigs = []
    for i in range(steps):
        call = f"c{next(_CALLS)}"
        session.tool_start("run_tests", {"target": f"t{i % 2}"}, tool_call_id=call)
        session.tool_end("run_tests", None, error="AssertionError: expected 1 got 2", tool_call_id=call)
        if tracker is not None:
            sigs.append(tracker.update(session.state).signature)
    return sigs


def make_pack(path: Path, n: int, seed: int) -> str:
    """A pack directory of ``n`` patterns: a few are the signatures of the steps :func:`drive`
    makes (so those steps match), the rest clustered noise. Returns the directory."""
    emb = HashingEmbedder()
    rt = Runtime(store=None)
    try:
        s = rt.start_run(task="fix the tests", framework="test")
        sigs = drive(s, 4, StepTracker())
        s.end("failure")
    finally:
        rt.close()
    rng = np.random.default_rng(seed)
    real = embed_signatures(emb, "features", sigs)
    centres = l2_normalise(rng.normal(size=(20, emb.dimension)).astype(np.float32))
    noise = l2_normalise(centres[rng.integers(0, 20, size=n - len(real))]
                         + 0.3 * rng.normal(size=(n - len(real), emb.dimension)).astype(np.float32))
    vecs = np.concatenate([real, noise]).astype(np.float32)
    pats = [FailurePattern(pattern_id=f"fp_{seed}_{i:05d}", error_class=CLASSES[i % 3], description=f"pattern {i}",
                           predicates={}, support=3, weight=2.0 + (i % 3)) for i in range(n)]
    coef = np.zeros(len(MODEL_INPUTS))
    coef[MODEL_INPUTS.index("pattern_weight_now")] = 1.0
    member = Member(name="m", threshold=0.5,
                    table=PatternTable(ids=[p.pattern_id for p in pats], vectors=vecs,
                                       weights=np.asarray([p.weight for p in pats]),
                                       classes=[p.error_class for p in pats], predicates=[{} for _ in pats],
                                       min_similarity=0.5),
                    logistic=Logistic(np.zeros(len(coef)), np.ones(len(coef)), coef, -1.0),
                    prior=TaskPrior(np.zeros((0, emb.dimension), np.float32), np.zeros(0), np.zeros(0), [], 0.5))
    pack = PatternPack(name=f"p{seed}", version="1.0.0", created_with="test", embedder=emb.name,
                       dimension=emb.dimension, threshold=0.5, patterns=pats,
                       model={"kind": "logistic-v1", "embedder": {"plugin": "hashing"}, "signature": "features",
                              "members": [member_to_dict(member)]})
    attach_vectors(pack, vecs)
    save_pack(pack, path)
    return str(path)


@pytest.fixture
def pack_dir(tmp_path: Path) -> str:
    return make_pack(tmp_path / "pack", 600, seed=1)


def scores(pack: str, **options: Any) -> tuple[list[tuple[float, bool, tuple[str, ...]]], Any]:
    rt = Runtime(store=None, verifiers=["patterns"], packs=[pack],
                 options={"patterns": {"index": "hnswlib", "wait": True, **options}})
    try:
        s = rt.start_run(task="fix the tests", framework="test")
        drive(s, 4)
        out = [(round(x.risk, 6), x.alarm, tuple(x.patterns)) for x in s.state.extras["patterns"].scores]
        s.end("failure")
        return out, dict(rt._verifiers)["patterns"].matcher
    finally:
        rt.close()


def test_pack_index_writes_a_saved_index_that_the_matcher_loads(pack_dir: str) -> None:
    built, m0 = scores(pack_dir, save_index=False)
    assert m0.index_source == "built" and not (Path(pack_dir) / "index.hnsw").exists()
    res = CliRunner().invoke(build_cli(), ["pack", "index", pack_dir])
    assert res.exit_code == 0, res.output
    meta = json.loads((Path(pack_dir) / "index.hnsw.json").read_text())
    assert meta["content_hash"] == load_pack(pack_dir).content_hash and meta["count"] == 600
    assert meta["dimension"] == 256 and meta["index"] == "hnswlib" and len(meta["sha256"]) == 64
    loaded, m1 = scores(pack_dir)
    assert m1.index_source == "saved" and m1.index_problem is None and len(m1.index) == 600
    assert loaded == built and any(alarm for _, alarm, _ in loaded)  # the same answers as a fresh build
    assert m1.index.ids == pattern_ids(load_pack(pack_dir))


def test_a_built_index_is_saved_for_the_next_process(pack_dir: str) -> None:
    _, m0 = scores(pack_dir)
    assert m0.index_source == "built" and (Path(pack_dir) / "index.hnsw").is_file()
    _, m1 = scores(pack_dir)
    assert m1.index_source == "saved"


def test_a_corrupt_saved_index_is_ignored_with_a_warning_and_rebuilt(pack_dir: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    scores(pack_dir)  # builds and saves
    f = Path(pack_dir) / "index.hnsw"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="immunity.learning"):
        got, m = scores(pack_dir, save_index=False)
    assert m.index_source == "built" and "digest" in (m.index_problem or "")
    assert any("ignoring the saved index" in r.getMessage() for r in caplog.records)
    assert got == scores(make_pack(Path(pack_dir).parent / "fresh", 600, seed=1), save_index=False)[0]
    (Path(pack_dir) / "index.hnsw.json").write_text("{not json")
    _, m = scores(pack_dir)
    assert m.index_source == "built" and "unreadable" in (m.index_problem or "")
    _, m = scores(pack_dir)  # the rebuilt index replaced the bad one
    assert m.index_source == "saved"


def test_another_packs_index_is_refused_even_with_its_record_rewritten(pack_dir: str, tmp_path: Path) -> None:
    other = make_pack(tmp_path / "other", 600, seed=2)
    scores(other)  # builds and saves the other pack's index
    for name in ("index.hnsw", "index.hnsw.json"):
        (Path(pack_dir) / name).write_bytes((Path(other) / name).read_bytes())
    _, m = scores(pack_dir, save_index=False)
    assert m.index_source == "built" and "content_hash" in (m.index_problem or "")
    # a record claiming this pack: same count and dimension, the right digest, but not its vectors
    meta_path = Path(pack_dir) / "index.hnsw.json"
    meta = json.loads(meta_path.read_text())
    meta["content_hash"] = load_pack(pack_dir).content_hash
    meta_path.write_text(json.dumps(meta))
    _, m = scores(pack_dir, save_index=False)
    assert m.index_source == "built" and "not the pack's vectors" in (m.index_problem or "")


def test_a_parameter_change_is_not_loaded_from_an_index_built_otherwise(pack_dir: str) -> None:
    scores(pack_dir)
    meta_path = Path(pack_dir) / "index.hnsw.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["M"] = 32
    meta_path.write_text(json.dumps(meta))
    _, m = scores(pack_dir, save_index=False)
    assert m.index_source == "built" and "params" in (m.index_problem or "")


def test_steps_are_never_blocked_while_the_index_builds(pack_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    release, started = threading.Event(), threading.Event()
    real_add = HnswIndex.add

    def slow_add(self: HnswIndex, ids: list[str], vectors: np.ndarray) -> None:
        started.set()
        assert release.wait(60)
        real_add(self, ids, vectors)

    monkeypatch.setattr(HnswIndex, "add", slow_add)
    rt = Runtime(store=None, verifiers=["patterns"], packs=[pack_dir], options={"patterns": {"index": "hnswlib"}})
    try:
        s = rt.start_run(task="fix the tests", framework="test")
        drive(s, 3)  # the build is held: these steps must not wait for it
        assert started.wait(30)  # the build thread is inside add(), held
        m = dict(rt._verifiers)["patterns"].matcher  # the pack is loaded, its index is not
        assert not m.ready and m.index_source == "pending"
        drive(s, 2)
        first = list(s.state.extras["patterns"].scores)
        assert len(first) >= 5 and not any(x.matched for x in first) and not any(x.alarm for x in first)
        # skipped while the pack loaded (a pack directory loads in the background too), then the index
        assert s.state.extras["patterns_skipped"] >= 5 and 2 <= m.skipped <= len(first)
        assert first[0].row("r")["matched"] is False
        release.set()
        assert m.wait_ready(60) and m.index_source == "built"
        drive(s, 2)
        later = s.state.extras["patterns"].scores[len(first):]
        # (a step no hook saw carries the previous step's figures, "not matched" included)
        assert len(later) >= 2 and later[-1].matched and any(x.alarm for x in later if x.matched)
        assert "matched" not in later[-1].row("r")
        s.end("failure")
    finally:
        release.set()
        rt.close()


def test_the_signature_cache_is_bounded_and_gives_the_searched_answer(pack_dir: str) -> None:
    pack = load_pack(pack_dir)
    pm = get_plugin_manager()
    cached = PackMatcher([pack], pm, cache_size=8)
    plain = PackMatcher([pack], pm, cache_size=0)
    sigs = [f"act:EXECUTE tool:run_tests err:e{i % 12} streak:{i % 3}" for i in range(40)]
    for sig in sigs + sigs:
        assert cached.hits(sig) == plain.hits(sig)
    assert len(cached._cache) == 8 and not plain._cache


def test_install_copies_the_saved_index_and_the_installed_pack_uses_it(pack_dir: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(build_cli(), ["pack", "index", pack_dir])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(build_cli(), ["pack", "install", pack_dir, "--dir", str(tmp_path / "installed")])
    assert res.exit_code == 0, res.output
    dest = next((tmp_path / "installed").iterdir())
    assert (dest / "index.hnsw").read_bytes() == (Path(pack_dir) / "index.hnsw").read_bytes()
    _, m = scores(str(dest))
    assert m.index_source == "saved"


def test_pack_index_refuses_an_index_that_cannot_be_saved(pack_dir: str) -> None:
    res = CliRunner().invoke(build_cli(), ["pack", "index", pack_dir, "--index", "brute"])
    assert res.exit_code != 0 and "cannot be saved" in res.output
    assert not (Path(pack_dir) / "index.hnsw").exists()


def test_a_pack_directory_loads_in_the_background_and_steps_do_not_wait(pack_dir: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import immunity.learning.matcher as matcher_module

    release = threading.Event()
    real_resolve = matcher_module.resolve_pack

    def slow_resolve(ref: Any, registry: Any = None) -> Any:
        assert release.wait(60)
        return real_resolve(ref, registry)

    monkeypatch.setattr(matcher_module, "resolve_pack", slow_resolve)
    rt = Runtime(store=None, verifiers=["patterns"], packs=[pack_dir], options={"patterns": {"index": "brute"}})
    try:
        s = rt.start_run(task="fix the tests", framework="test")
        drive(s, 2)  # the pack is still loading: not matched, not waited for
        first = list(s.state.extras["patterns"].scores)
        assert len(first) >= 2 and not any(x.matched for x in first)
        assert s.state.extras["patterns_skipped"] >= 2
        release.set()
        verifier = dict(rt._verifiers)["patterns"]
        assert verifier.matcher is not None  # waits for the background load
        drive(s, 3)
        later = s.state.extras["patterns"].scores[len(first):]
        assert len(later) >= 3 and later[-1].matched and any(x.alarm for x in later if x.matched)
        s.end("failure")
        s2 = rt.start_run(task="fix the tests", framework="test")  # the next run is matched from its first step
        drive(s2, 1)
        assert s2.state.extras["patterns"].scores[0].matched
        s2.end("failure")
    finally:
        release.set()
        rt.close()


def test_a_pack_that_fails_to_load_in_the_background_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    make_pack(bad, 50, seed=3)
    (bad / "vectors.npy").write_bytes((bad / "vectors.npy").read_bytes()[:-8] + b"\0" * 8)
    rt = Runtime(store=None, verifiers=["patterns"], packs=[str(bad)])
    try:
        s = rt.start_run(task="fix the tests", framework="test")
        verifier_ready = threading.Event()

        def loaded() -> bool:
            t = dict(rt._verifiers)["patterns"]._loading
            return t is not None and not t.is_alive()

        drive(s, 1)
        for _ in range(600):
            if loaded():
                verifier_ready.set()
                break
            threading.Event().wait(0.05)
        assert verifier_ready.is_set()
        drive(s, 1)
        errors = s.run.metadata.get("plugin_errors") or []
        assert any("does not match the digest" in e.get("error", "") for e in errors), errors
        s.end("failure")
    finally:
        rt.close()
