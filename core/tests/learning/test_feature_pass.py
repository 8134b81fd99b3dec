"""The light feature pass gives exactly the features of a full runtime replay, and learning gives
the same pack whatever the number of worker processes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.importers import ImportedRun, Share, iter_runs
from immunity.learning.data import (
    _collect_light,
    _collect_runtime,
    _Feeder,
    collect,
    collect_by_domain,
    feature_pass,
    make_runtime,
    read_features,
    read_runs,
)
from immunity.models import Run, Step

from .conftest import population, write_store


def _tau_record(task: int, trial: int, reward: float, calls: list[tuple[str, dict[str, Any], str]]) -> dict[str, Any]:
    traj: list[dict[str, Any]] = [
        {"role": "system", "content": "# Airline Agent Policy"},
        {"role": "user", "content": f"Hi, I need help with reservation {task}."},
        {"role": "assistant", "content": "Could you give me your user id?"},
        {"role": "user", "content": "It is mia_li_3668. This is ridiculous, transfer me to a human."},
    ]
    for i, (name, args, result) in enumerate(calls):
        cid = f"call_{task}_{trial}_{i % 2}"  # ids repeat: a side-effecting call answered from the cache
        traj.append({"role": "assistant", "content": None, "tool_calls": [
            {"function": {"arguments": json.dumps(args), "name": name}, "id": cid, "type": "function"}]})
        traj.append({"role": "tool", "tool_call_id": cid, "name": name, "content": result})
    traj.append({"role": "assistant", "content": "I am sorry, I cannot do that. " + "x" * 5000})
    traj.append({"role": "user", "content": "No, thanks. ###STOP###"})
    return {"task_id": task, "trial": trial, "reward": reward, "traj": traj,
            "info": {"task": {"user_id": "mia_li_3668", "actions": [], "outputs": [],
                              "instruction": "You want to change your flight."}}}


def _mini_row(instance: str, resolved: bool) -> dict[str, Any]:
    msgs = [
        {"role": "system", "content": "You are a helpful assistant that can interact with a computer shell."},
        {"role": "user", "content": "<pr_description>\nrange_sum(n) leaves out n\n</pr_description>"},
        {"role": "assistant", "content": "THOUGHT: Run the tests.\n\n```bash\npytest -x tests\n```"},
        {"role": "user", "content": "<returncode>1</returncode>\n<output>\nTraceback (most recent call last):\n"
                                    "AssertionError\n1 failed, 3 passed\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Fix it.\n\n```bash\nsed -i 's/range(n)/range(n + 1)/' src/m.py\n```"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Again.\n\n```bash\npytest -x tests\n```"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\n4 passed\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Submit.\n\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n```"},
        {"role": "user", "content": "diff --git a/src/m.py b/src/m.py\n"},
    ]
    return {"instance_id": instance, "resolved": resolved, "exit_status": "Submitted", "messages": msgs}


def _edge_cases() -> list[ImportedRun]:
    """Unmapped steps (mapped by the hooks), a model message that is the final answer, an empty
    model message, a blocked call, a repeated failing call."""
    run = Run(run_id="edge-1", task="Fix it", task_id="edge", outcome="failure", framework="synthetic")
    steps = [Step(tool="run_tests", arguments={"t": 1}, error="AssertionError: 1 != 2", return_code=1)
             for _ in range(4)]
    steps += [Step(tool="edit_file", arguments={"p": "m.py"}, result="edited", data={"blocked": True}),
              Step(text="", data={"from_model": True}),
              Step(text="I think it is done.", data={"from_model": True}),
              Step(text="I think it is done.", data={"final": True})]
    booked = Run(run_id="edge-2", task="Book it", task_id="edge2", outcome="success", framework="synthetic",
                 domain="support")
    call = {"flight": "HAT002"}
    steps2 = [Step(tool="book_reservation", arguments=call, result="{\"ok\": true}", data={"tool_call_id": "c1"}),
              Step(tool="book_reservation", arguments=call, result="{\"ok\": true}", data={"tool_call_id": "c1"}),
              Step(tool="get_user_details", arguments={"user_id": "u"}, result="{}")]
    return [ImportedRun(run=run, steps=steps, source="synthetic"),
            ImportedRun(run=booked, steps=steps2, source="synthetic")]


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    d = tmp_path_factory.mktemp("traces")
    tau = d / "airline.json.gz"
    recs = [_tau_record(t, k, float(k % 2), [("get_user_details", {"user_id": "u"}, "{\"reservations\": []}"),
                                              ("book_reservation", {"flight": "HAT001"}, "Error: not found"),
                                              ("book_reservation", {"flight": "HAT002"}, "{\"ok\": true}"),
                                              ("book_reservation", {"flight": "HAT002"}, "{\"ok\": true}")])
            for t in range(2) for k in range(2)]
    with gzip.open(tau, "wt", encoding="utf-8") as fh:
        json.dump(recs, fh)
    mini = d / "trajs.jsonl.gz"
    with gzip.open(mini, "wt", encoding="utf-8") as fh:
        for i in range(3):
            fh.write(json.dumps(_mini_row(f"demo__demo-{i}", i == 1)) + "\n")
    read = read_runs([str(tau)], "tau-bench") + read_runs([str(mini)], "mini-swe-agent")
    return read + population(n_tasks=3, trials=2) + _edge_cases()


@pytest.fixture(scope="module")
def trace_files(items: list[Any]) -> list[str]:
    return sorted({it.run.metadata["source"]["path"] for it in items if "source" in it.run.metadata})


def test_the_feature_pass_equals_a_full_runtime_replay(items: list[Any]) -> None:
    full = _collect_runtime(items, "task", None)
    rt = make_runtime([])
    try:
        light = _collect_light(items, "task", _Feeder(rt, {}))
    finally:
        rt.close()
    assert len(full) == len(light) == len(items)
    assert sum(len(c.actions) for c in full) > 50
    for a, b in zip(full, light, strict=True):
        assert a.run_id == b.run_id
        assert a.actions == b.actions and a.tools == b.tools
        assert a.signatures == b.signatures
        assert a.extra == b.extra
        np.testing.assert_array_equal(a.numeric, b.numeric)
        np.testing.assert_array_equal(a.signals, b.signals)
    # the cases the pass has to get right are really there
    rt = make_runtime([])
    try:
        feeder = _Feeder(rt, {})
        states = {it.run.run_id: feature_pass(it, feeder)[0] for it in items}
    finally:
        rt.close()
    edge = states["edge-1"]
    assert [s.action_type.value for s in edge.steps][-1] == "DONE" and edge.steps[-1].data.get("final")
    assert edge.n_steps == 5  # the blocked call and the empty model message made no step
    if states["edge-2"].steps[0].side_effect:  # the support domain is installed: the repeat is a cached answer
        assert states["edge-2"].steps[1].data.get("replayed")
        assert len(next(c for c in light if c.run_id == "edge-2").actions) == 3
    tau = [row for c in light if c.run_id.startswith("tau-bench") for row in c.extra]
    if any("support_user_frustrated" in row for row in tau):  # the support domain is installed
        # the customer's turns are steps now: their frustration and "transfer me" reach the signals
        assert max(row["support_user_frustrated"] for row in tau) == 1.0
        assert max(row["support_user_asks_transfer"] for row in tau) == 1.0


def test_collect_in_worker_processes_gives_the_same_runs(items: list[Any]) -> None:
    one, _ = collect(items, jobs=1)
    two, _ = collect(items, jobs=2)
    for a, b in zip(one, two, strict=True):
        assert a.run_id == b.run_id and a.actions == b.actions
        np.testing.assert_array_equal(a.numeric, b.numeric)
        np.testing.assert_array_equal(a.sig_vecs, b.sig_vecs)


def test_learn_writes_the_same_pack_whatever_the_number_of_jobs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("immunity.learning.parallel.MIN_PARALLEL_STEPS", 0)  # small data: fork anyway
    store = str(tmp_path / "runs.db")
    write_store(store, population())
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"pack-{jobs}.json"
        res = CliRunner().invoke(build_cli(), ["learn", "--store", store, "--folds", "4", "--jobs", jobs,
                                               "--name", "same", "--out", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["patterns"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_mapping_in_the_feature_pass_gives_the_same_runs(trace_files: list[str], jobs: int) -> None:
    """``learn`` reads with the mapping left to collect's workers: the same runs, labels included
    (tau-bench's failure step needs the mapped steps)."""
    assert len(trace_files) == 2
    mapped, _ = collect(read_runs(trace_files), jobs=jobs)
    deferred = read_runs(trace_files, mapping=False)
    assert all(it.unmapped for it in deferred)
    later, _ = collect(deferred, jobs=jobs)
    assert len(mapped) == len(later) == 7
    assert any(r.failure_step is not None for r in mapped)
    for a, b in zip(mapped, later, strict=True):
        assert (a.run_id, a.actions, a.tools, a.failure_step, a.outcome) == (b.run_id, b.actions, b.tools,
                                                                             b.failure_step, b.outcome)
        assert a.extra == b.extra
        np.testing.assert_array_equal(a.numeric, b.numeric)
        np.testing.assert_array_equal(a.sig_vecs, b.sig_vecs)
        np.testing.assert_array_equal(a.task_vec, b.task_vec)


def test_a_record_whose_steps_cannot_be_mapped_is_reported_and_left_out(trace_files: list[str]) -> None:
    deferred = read_runs(trace_files, mapping=False)

    def broken(_item: Any) -> None:
        raise ValueError("no such thing")

    deferred[0].pending = broken
    problems: list[str] = []
    got, _ = collect(deferred, on_problem=problems.append)
    assert len(got) == len(deferred) - 1 and deferred[0].run.run_id not in {r.run_id for r in got}
    assert len(problems) == 1 and "cannot map its steps: ValueError: no such thing" in problems[0]


@pytest.mark.parametrize("jobs", [1, 2])
def test_one_pass_over_several_domains_gives_each_domain_its_own_collect(trace_files: list[str], jobs: int) -> None:
    """``learn`` collects every domain's features in one pass: each domain gets what ``collect``
    gives for its runs alone (features, signature and task vectors)."""
    together = collect_by_domain(read_runs(trace_files, mapping=False), jobs=jobs)
    assert len(together) == 2
    for domain, (runs, (embedder, spec, mode)) in together.items():
        alone, (embedder2, spec2, mode2) = collect(
            [it for it in read_runs(trace_files, mapping=False) if it.run.domain == domain], domain=domain, jobs=1)
        assert (spec, mode, embedder.name) == (spec2, mode2, embedder2.name)
        assert [r.run_id for r in runs] == [r.run_id for r in alone] and runs
        for a, b in zip(runs, alone, strict=True):
            assert (a.actions, a.tools, a.failure_step, a.outcome, a.extra) == (b.actions, b.tools, b.failure_step,
                                                                               b.outcome, b.extra)
            np.testing.assert_array_equal(a.numeric, b.numeric)
            np.testing.assert_array_equal(a.signals, b.signals)
            np.testing.assert_array_equal(a.sig_vecs, b.sig_vecs)
            np.testing.assert_array_equal(a.task_vec, b.task_vec)


def _same_runs(a_runs: list[Any], b_runs: list[Any]) -> None:
    assert [r.run_id for r in a_runs] == [r.run_id for r in b_runs] and a_runs
    for a, b in zip(a_runs, b_runs, strict=True):
        assert (a.actions, a.tools, a.failure_step, a.outcome, a.extra, a.group) == (
            b.actions, b.tools, b.failure_step, b.outcome, b.extra, b.group)
        np.testing.assert_array_equal(a.numeric, b.numeric)
        np.testing.assert_array_equal(a.signals, b.signals)
        np.testing.assert_array_equal(a.sig_vecs, b.sig_vecs)
        np.testing.assert_array_equal(a.task_vec, b.task_vec)


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_reading_in_shares_gives_what_collect_gives(trace_files: list[str], jobs: int) -> None:
    """``learn`` reads the files in ``jobs`` shares (each process its own records) and computes the
    features there: every domain gets the runs, in the order, that ``collect`` gives."""
    feats = read_features(trace_files, jobs=jobs)
    assert feats.domains() and not feats.left_out
    for domain in feats.domains():
        alone = collect([it for it in read_runs(trace_files, mapping=False) if it.run.domain == domain],
                        domain=domain, jobs=1)
        _same_runs(feats.embedded(domain)[0], alone[0])
    everything = collect(read_runs(trace_files, mapping=False), jobs=1)
    _same_runs(feats.embedded(every_domain=True)[0], everything[0])
    # --domain: the domain of records that name none, and a filter on the others (as read_runs does)
    only = read_features(trace_files, domain="coding", jobs=jobs)
    kept = [it for it in read_runs(trace_files, domain="coding", mapping=False) if it.run.domain == "coding"]
    assert set(only.domains()) == {"coding"}
    _same_runs(only.embedded("coding")[0], collect(kept, domain="coding")[0])


def test_shares_split_the_records_and_report_a_bad_line_once(tmp_path: Path) -> None:
    path = tmp_path / "trajs.jsonl"
    rows = [json.dumps(_mini_row(f"demo__demo-{i}", i % 2 == 0)) for i in range(7)]
    rows.insert(3, "{not json")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    whole = [it.run.run_id for it in iter_runs([str(path)], "mini-swe-agent") if isinstance(it, ImportedRun)]
    assert len(whole) == 7
    seen: list[tuple[int, str]] = []
    for part in range(3):
        share = Share(part, 3)
        for it in iter_runs([str(path)], "mini-swe-agent", share=share):
            if isinstance(it, ImportedRun):
                assert (share.last - 1) % 3 == part
                seen.append((share.last, it.run.run_id))
    assert [rid for _n, rid in sorted(seen)] == whole
    problems: list[str] = []
    feats = read_features([str(path)], jobs=3, on_problem=problems.append)
    assert [c.run_id for c in feats.collected] == whole
    assert len(problems) == 1 and "line 4" in problems[0]


def test_learn_from_files_writes_the_same_pack_whatever_the_number_of_jobs(
        trace_files: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("immunity.learning.parallel.MIN_PARALLEL_STEPS", 0)  # small data: fork anyway
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"pack-{jobs}.json"
        res = CliRunner().invoke(build_cli(), ["learn", *trace_files, "--folds", "2", "--jobs", jobs, "--all-domains",
                                               "--name", "same", "--out", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_per_domain_packs_learned_side_by_side_are_the_packs_learned_one_after_the_other(
        trace_files: list[str], tmp_path: Path) -> None:
    """With several domains and --jobs 2, a small pack is learned in a process of its own while the
    others are learned (here every pack is small); the packs are byte-identical to --jobs 1's."""
    outs: dict[str, list[bytes]] = {}
    for jobs in ("1", "2"):
        out = tmp_path / jobs / "pack.json"
        out.parent.mkdir()
        res = CliRunner().invoke(build_cli(), ["learn", *trace_files, "--folds", "2", "--jobs", jobs,
                                               "--out", str(out)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert "writing one pack per domain" in res.output
        outs[jobs] = [p.read_bytes() for p in sorted(out.parent.glob("pack-*.json"))]
    assert len(outs["1"]) >= 2 and outs["1"] == outs["2"]


def _fails(shared: dict[str, Any]) -> None:
    raise ValueError(f"no runs of {shared['what']}")


def _crashes(shared: dict[str, Any]) -> None:
    raise KeyError(shared["what"])


def test_work_in_a_background_process_returns_its_result_or_its_error() -> None:
    from immunity.learning.parallel import in_background

    assert in_background(sorted, [3, 1, 2])() == [1, 2, 3]
    assert in_background(sorted, [3, 1, 2], enabled=False)() == [1, 2, 3]
    with pytest.raises(ValueError, match="no runs of x"):
        in_background(_fails, {"what": "x"})()
    with pytest.raises(RuntimeError, match="KeyError: 'y'"):
        in_background(_crashes, {"what": "y"})()
