"""The learning commands through the real CLI (click's CliRunner), on a store the tests write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.models import Outcome

from .conftest import population, write_store


def invoke(*args: str, ok: bool = True) -> Any:
    res = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("store") / "runs.db")
    write_store(path, population())
    return path


@pytest.fixture(scope="module")
def pack(store: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("pack") / "coding-dev.json")
    res = invoke("learn", "--store", store, "--folds", "4", "--out", out)
    assert "threshold" in res.output and "cross-validated" in res.output
    return out


def test_learn_writes_a_valid_pack(pack: str) -> None:
    res = invoke("pack", "verify", pack)
    assert res.output.startswith("ok: coding-dev")
    res = invoke("pack", "inspect", pack)
    assert "embedder hashing-v1-d256" in res.output and "patterns:" in res.output
    res = invoke("pack", "inspect", pack, "--json")
    data = json.loads(res.output)
    assert data["name"] == "coding-dev" and data["patterns"] and "vector" not in data["patterns"][0]


def test_verify_refuses_a_tampered_pack(pack: str, store: str, tmp_path: Path) -> None:
    doc = json.loads(Path(pack).read_text())
    doc["patterns"][0]["weight"] = 100.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = invoke("pack", "verify", str(bad), ok=False)
    assert res.exit_code == 1 and "refused" in res.output and "content hash mismatch" in res.output
    res = invoke("score", "--pack", str(bad), "--store", store, ok=False)
    assert res.exit_code == 1 and "content hash mismatch" in res.output
    res = invoke("score", "--pack", pack, "--store", pack, ok=False)
    assert res.exit_code == 1 and "cannot open store" in res.output


def test_tiny_training_set_says_unreliable(tmp_path: Path) -> None:
    db = str(tmp_path / "tiny.db")
    write_store(db, population(n_tasks=3, trials=4))
    res = invoke("learn", "--store", db, "--folds", "2", "--out", str(tmp_path / "tiny.json"))
    assert "WARNING" in res.output and "unreliable" in res.output


def test_learn_without_input_is_a_usage_error(tmp_path: Path) -> None:
    res = invoke("learn", "--out", str(tmp_path / "x.json"), ok=False)
    assert res.exit_code == 2 and "--store" in res.output


def test_score_writes_one_line_per_step(pack: str, store: str, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    invoke("score", "--pack", pack, "--store", store, "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == sum(len(r.steps) for r in population())
    assert set(rows[0]) >= {"run_id", "step", "risk", "alarm", "patterns", "action_type"}
    assert all(0 <= r["risk"] <= 1 for r in rows)
    # the same scores evaluated from the file
    res = invoke("eval", "--scores", str(out), "--store", store, "--pack", pack, ok=False)
    assert res.exit_code == 2  # one of --cv, --pack or --scores
    res = invoke("eval", "--scores", str(out), "--store", store, "--bootstrap", "50")
    assert "AUROC alive at step 5" in res.output and "false-alarm rate" in res.output


def test_eval_cross_validation_reports_model_and_baseline(store: str, tmp_path: Path) -> None:
    out, html = tmp_path / "eval.json", tmp_path / "eval.html"
    res = invoke("eval", "--cv", "--store", store, "--folds", "3", "--bootstrap", "100", "--out", str(out),
                 "--html", str(html), "--scores-out", str(tmp_path / "cv.jsonl"))
    assert "baseline (steps so far)" in res.output
    data = json.loads(out.read_text())
    assert data["mode"] == "cross-validation" and len(data["folds"]) == 3
    assert data["auroc_alive_at_step"]["5"]["ci95"] is not None
    assert data["model"]["false_alarm_rate"]["n"] == data["successful"]
    assert "<svg" in html.read_text()
    assert (tmp_path / "cv.jsonl").read_text().count("\n") == sum(len(r.steps) for r in population())


def test_explain_by_alignment_and_by_risk(pack: str, store: str) -> None:
    res = invoke("explain", "run-1-0", "--store", store, "--json")
    rep = json.loads(res.output)
    assert rep["method"] == "alignment" and rep["outcome"] == "failure" and 0 <= rep["step"] < rep["steps"]
    assert rep["error_class"] and rep["evidence"]
    # with no successful run of the same task at hand, the pack's risk explains
    db_dir = Path(store).parent
    only = str(db_dir / "only.db")
    write_store(only, [r for r in population() if r.run.run_id == "run-1-0"])
    res = invoke("explain", "run-1-0", "--store", only, "--pack", pack)
    assert "method: risk" in res.output and "decisive step" in res.output
    # without a pack, the run's own signals: the repeated failing test is the effect, the edit before it the cause
    res = invoke("explain", "run-1-0", "--store", only, "--json")
    rep = json.loads(res.output)
    assert rep["method"] == "signals" and rep["step"] < rep["effect_step"]
    assert rep["action_type"] == "EDIT" and rep["cause_effect"] == [rep["step"], rep["effect_step"]]
    # every failed run of the input, the input read once
    res = invoke("explain", "all", "--store", store, "--json")
    reps = [json.loads(line) for line in res.output.splitlines()]
    assert len(reps) == sum(r.run.outcome == "failure" for r in population())
    assert all(r["outcome"] == "failure" and r["step"] <= r["effect_step"] for r in reps)
    res = invoke("explain", "nope", "--store", store, ok=False)
    assert "no run 'nope'" in res.output


def test_install_list_and_merge(pack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMMUNITY_PACKS_DIR", str(tmp_path / "packs"))
    invoke("pack", "install", pack)
    res = invoke("pack", "list")
    assert "coding-dev" in res.output
    res = invoke("pack", "verify", pack)
    merged = tmp_path / "merged.json"
    res = invoke("pack", "merge", pack, "coding-dev", "--out", str(merged), "--name", "both")
    assert "wrote" in res.output
    invoke("pack", "verify", str(merged))


def test_pack_build_from_a_handwritten_spec(tmp_path: Path) -> None:
    from immunity.learning.features import signature_text  # noqa: F401  (tokens documented there)
    from immunity.runtime import Runtime
    from immunity.testing import FakeRun

    spec = {
        "name": "hand", "version": "1.0.0", "threshold": 0.5,
        "patterns": [{"error_class": "repeated_tool_error", "description": "the same failing test three times",
                      "signature": "actverify prevverify failed failedxverify repeatederror3to4",
                      "predicates": {"action_type": "VERIFY", "min": {"repeated_error": 3}},
                      "weight": 5.0, "intervention": "[immunity] Stop re-running the failing test; read its error."}],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "hand.json"
    invoke("pack", "build", str(path), "--out", str(out))
    invoke("pack", "verify", str(out))

    def hints_of(**kw):
        rt = Runtime(store=None, verifiers=["patterns"], packs=[str(out)], **kw)
        try:
            run = FakeRun(rt)
            hints = []
            for _ in range(3):
                d = run.tool("run_tests", {"t": 1}, result=None, error="AssertionError: 1 != 2", return_code=1)
                hints += [v.hint for v in d.verdicts if v.plugin == "verifier:patterns"]
            return hints
        finally:
            rt.close()

    # an unsigned pack file still raises the alarm, but its own words are replaced by the class's template
    from immunity import taxonomy as tx

    assert hints_of() == [f"[immunity] {tx.get('repeated_tool_error').hint}"]
    pytest.importorskip("cryptography")
    res = invoke("pack", "keygen", str(tmp_path / "k"))
    public = res.output.strip().splitlines()[-1]
    invoke("pack", "sign", str(out), "--key", str(tmp_path / "k"))
    assert hints_of(trusted_keys=["c29tZW9uZSBlbHNlJ3Mga2V5IG9mIDMyIGJ5dGVzISE="]) != \
        ["[immunity] Stop re-running the failing test; read its error."]
    assert hints_of(trusted_keys=[public]) == ["[immunity] Stop re-running the failing test; read its error."]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "patterns": [{"error_class": "loop"}]}))
    res = invoke("pack", "build", str(bad), "--out", str(tmp_path / "b.json"), ok=False)
    assert res.exit_code == 1 and "signature" in res.output


def test_score_scores_every_step_of_a_long_repetitive_run(pack: str, tmp_path: Path) -> None:
    """A run repeating one failing call 94 times (the shape that used to stop being scored part
    way) gets a score for each of its steps, and the command says so."""
    from immunity.importers import ImportedRun
    from immunity.models import Run, Step

    db = str(tmp_path / "rep.db")
    for dom in ("coding", "support"):
        run = Run(run_id=f"rep-{dom}", task="t", outcome="failure", domain=dom)
        tool, args = (("bash", {"command": "python -m pytest -x"}) if dom == "coding"
                      else ("cancel_reservation", {"reservation_id": "A"}))
        steps = [Step(tool=tool, arguments=args, error="Error: boom", return_code=1, index=i, run_id=run.run_id)
                 for i in range(94)]
        write_store(db, [ImportedRun(run=run, steps=steps, source="x")])
    out = tmp_path / "rep.jsonl"
    res = invoke("score", "--pack", pack, "--store", db, "--out", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 94 and "188 of 188 imported steps (every step)" in res.output
    assert sorted(r["step"] for r in rows if r["run_id"] == "rep-coding") == list(range(94))


def _mixed_store(tmp_path: Path) -> str:
    """Two sources of the synthetic population (tasks 0-7 coding from 'a', 8-15 support from 'b') and
    a third source with only failed runs."""
    items = population()
    for it in items:
        t = int(it.run.task_id.split("-")[1])
        it.run.source, it.run.domain = ("a", "coding") if t < 8 else ("b", "support")
    extra = [it for it in population(n_tasks=4, seed=11) if it.run.outcome == "failure"]
    for it in extra:
        it.run.run_id, it.run.source, it.run.domain = "c-" + it.run.run_id, "c", "coding"
        for s in it.steps:
            s.run_id = it.run.run_id
    db = str(tmp_path / "mixed.db")
    write_store(db, items + extra)
    return db


def test_learn_domain_filters_runs_and_warns_on_a_single_outcome_source(tmp_path: Path) -> None:
    db = _mixed_store(tmp_path)
    res = invoke("learn", "--store", db, "--domain", "coding", "--folds", "3", "--out", str(tmp_path / "c.json"))
    assert "learning from" in res.output and "domains ['support']" in res.output
    pack = json.loads((tmp_path / "c.json").read_text())
    assert sorted(pack["training"]["sets"]) == ["a", "c"]
    assert "WARNING: source 'c' has only failed runs" in res.output
    assert any("source 'c'" in w for w in pack["training"]["warnings"])
    res = invoke("learn", "--store", db, "--domain", "data", "--out", str(tmp_path / "d.json"), ok=False)
    assert res.exit_code == 1 and "no run of domain 'data'" in res.output


def test_eval_leave_one_source_out(tmp_path: Path) -> None:
    db = _mixed_store(tmp_path)
    out = tmp_path / "loso.json"
    invoke("eval", "--cv", "--store", db, "--split", "source", "--folds", "3", "--bootstrap", "20", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["split"] == "source" and data["groups"] == 3 and len(data["folds"]) == 3


def test_leave_one_source_out_with_two_sources_calibrates_across_tasks(tmp_path: Path) -> None:
    """Each fold trains on a single source; its threshold is then calibrated across that source's tasks."""
    items = population()
    for it in items:
        it.run.source = "a" if int(it.run.task_id.split("-")[1]) < 8 else "b"
    db = str(tmp_path / "two.db")
    write_store(db, items)
    out = tmp_path / "loso2.json"
    invoke("eval", "--cv", "--store", db, "--split", "source", "--folds", "2", "--bootstrap", "20", "--out", str(out))
    data = json.loads(out.read_text())
    assert data["groups"] == 2 and [f["train_runs"] for f in data["folds"]] == [32, 32]


def test_learn_writes_one_pack_per_domain_by_default(tmp_path: Path) -> None:
    db = _mixed_store(tmp_path)
    res = invoke("learn", "--store", db, "--folds", "3", "--out", str(tmp_path / "dev.json"))
    assert "writing one pack per domain" in res.output
    coding = json.loads((tmp_path / "dev-coding.json").read_text())
    support = json.loads((tmp_path / "dev-support.json").read_text())
    assert (coding["domain"], coding["name"], coding["training"]["labelled_runs"]) == ("coding", "dev-coding", 42)
    assert (support["domain"], support["name"], support["training"]["labelled_runs"]) == ("support", "dev-support", 32)
    assert not (tmp_path / "dev.json").exists()
    res = invoke("learn", "--store", db, "--folds", "3", "--all-domains", "--out", str(tmp_path / "all.json"))
    assert json.loads((tmp_path / "all.json").read_text())["training"]["labelled_runs"] == 74


def test_learn_from_files_labels_a_pack_of_every_domain_with_no_domain(tmp_path: Path) -> None:
    db = _mixed_store(tmp_path)
    traces = tmp_path / "mixed.jsonl"
    invoke("export", "--store", db, "-o", str(traces))
    invoke("learn", str(traces), "--format", "immunity", "--folds", "3", "--out", str(tmp_path / "dev.json"))
    assert json.loads((tmp_path / "dev-coding.json").read_text())["domain"] == "coding"
    invoke("learn", str(traces), "--format", "immunity", "--folds", "3", "--all-domains", "--out",
           str(tmp_path / "all.json"))
    every = json.loads((tmp_path / "all.json").read_text())
    assert every["domain"] is None and every["training"]["labelled_runs"] == 74
    invoke("learn", str(traces), "--format", "immunity", "--folds", "3", "--domain", "support", "--out",
           str(tmp_path / "support.json"))
    assert json.loads((tmp_path / "support.json").read_text())["domain"] == "support"


def test_pack_calibrate_sets_the_threshold_without_reading_outcomes(pack: str, tmp_path: Path) -> None:
    """On a new population, at most --target-far of its runs alarm at the calibrated threshold, and
    the result is the same whatever the runs' outcomes say."""
    items = population(n_tasks=10, trials=3, seed=11)
    labelled, blind = str(tmp_path / "labelled.db"), str(tmp_path / "blind.db")
    write_store(labelled, items)
    for it in items:
        it.run.outcome = Outcome.UNKNOWN
    write_store(blind, items)
    outs = []
    for db, name in ((labelled, "a.json"), (blind, "b.json")):
        out = tmp_path / name
        res = invoke("pack", "calibrate", pack, "--store", db, "--target-far", "0.2", "--out", str(out))
        assert "calibrated on 30 runs" in res.output
        outs.append(json.loads(out.read_text()))
    a, b = outs
    assert a["threshold"] == b["threshold"] == a["model"]["members"][0]["threshold"]
    assert a["training"]["calibration"]["method"] == "unlabelled"
    assert a["training"]["calibration"]["thresholds_before"] == [json.loads(Path(pack).read_text())["threshold"]]
    invoke("pack", "verify", str(tmp_path / "a.json"))
    scores = tmp_path / "scores.jsonl"
    invoke("score", "--pack", str(tmp_path / "a.json"), "--store", labelled, "--out", str(scores))
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    alarmed = {r["run_id"] for r in rows if r["alarm"]}
    assert len(alarmed) <= 0.2 * 30
    # the lowest such threshold: just above the highest peak risk of a run that does not alarm
    peak: dict[str, float] = {}
    for r in rows:
        peak[r["run_id"]] = max(peak.get(r["run_id"], 0.0), r["risk"])
    quiet = max(p for rid, p in peak.items() if rid not in alarmed)
    assert quiet - 1e-6 < a["threshold"] < quiet + 1e-5  # the scores file rounds risks to 6 decimals


def test_eval_with_unlabelled_calibration_of_each_held_out_fold(store: str, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    res = invoke("eval", "--cv", "--store", store, "--folds", "3", "--bootstrap", "20", "--calibrate", "unlabelled",
                 "--out", str(out))
    assert "unlabelled calibration" in res.output
    data = json.loads(out.read_text())
    assert data["calibration"] == "unlabelled"
    assert all(len(f["unlabelled_thresholds"]) == 2 for f in data["folds"])
