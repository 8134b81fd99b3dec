"""The sequence-distance inputs: distance of a run's action sequence to runs of similar tasks."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from immunity.errors import PackError
from immunity.learning.sequences import (
    SEQUENCE_NAMES,
    SequenceRefs,
    SequenceTracker,
    build_refs,
    run_features,
    token,
)


@dataclass
class _Run:
    actions: list[str]
    tools: list[str | None]
    outcome: int | None
    task_key: str
    group: str
    run_id: str = "r"
    extra: list[Any] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.actions)


def _run(seq: str, outcome: int, task: str) -> _Run:
    """A run from a compact spec: one letter per step (S search, R read, E edit, T test, D done)."""
    acts = {"S": ("SEARCH", "grep"), "R": ("READ", "cat"), "E": ("EDIT", "sed"), "T": ("TEST", "pytest"),
            "D": ("DONE", None)}
    steps = [acts[c] for c in seq]
    return _Run([a for a, _ in steps], [t for _, t in steps], outcome, task, task)


def _refs() -> SequenceRefs:
    runs = [_run("SRRETD", 0, "t1"), _run("SRETD", 0, "t2"), _run("SRRRETD", 0, "t3"),
            _run("EEEEEEED", 1, "t4"), _run("EEEEED", 1, "t5")]
    return build_refs(runs, ["t1", "t2", "t3", "t4", "t5"], k=3)


def _last(refs: SequenceRefs, run: _Run) -> dict[str, float]:
    out = run_features(refs, run.actions, run.tools, None)
    return dict(zip(SEQUENCE_NAMES, out[-1], strict=True))


def test_a_run_following_successful_runs_is_closer_than_a_diverging_one() -> None:
    refs = _refs()
    follows = _last(refs, _run("SRRET", 1, "new"))
    diverges = _last(refs, _run("EEEEE", 1, "new"))
    assert follows["seq_dist_success"] < diverges["seq_dist_success"]
    assert follows["seq_dist_failure"] > diverges["seq_dist_failure"]
    assert follows["seq_dist_contrast"] < 0 < diverges["seq_dist_contrast"]
    # identical to one successful reference: distance 0 to it, so the mean is below the others'
    same = run_features(refs, *(lambda r: (r.actions, r.tools))(_run("SRRETD", 0, "x")), None)
    assert same[-1][0] < follows["seq_dist_success"] + 1e-12


def test_ended_share_counts_references_shorter_than_the_prefix() -> None:
    refs = _refs()
    feats = run_features(refs, *(lambda r: (r.actions, r.tools))(_run("SRRRRRRR", 0, "x")), None)
    ended = dict(zip(SEQUENCE_NAMES, feats[5], strict=True))  # after 6 steps: SRETD (5) and SRRETD (6) ended
    assert ended["seq_success_ended"] == pytest.approx(2 / 3)
    assert ended["seq_failure_ended"] == pytest.approx(1 / 2)  # EEEEED (6) ended, EEEEEEED (8) not


def test_tracker_overlap_equals_the_multiset_intersection() -> None:
    rng = random.Random(3)
    vocab = [f"A{i}:t" for i in range(4)]
    for _ in range(30):
        ref = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
        live = [rng.randrange(4) for _ in range(rng.randint(1, 12))]
        refs = SequenceRefs(vocab=vocab, seqs=[ref], lengths=np.asarray([len(ref)]), outcomes=np.asarray([0]),
                            tasks=np.asarray([-1]))
        tr = SequenceTracker(refs, [0], [])
        for k, t in enumerate(live):
            got = tr.update(t)[0]
            a, b = live[: k + 1], ref[: k + 1]
            ca = Counter(a) + Counter(zip(a, a[1:], strict=False))
            cb = Counter(b) + Counter(zip(b, b[1:], strict=False))
            inter = sum((ca & cb).values())
            want = 1.0 - inter / max(sum(ca.values()), sum(cb.values()))
            assert got == pytest.approx(want)


def test_references_of_the_runs_own_group_are_never_used() -> None:
    runs = [_run("SRETD", 0, "g1"), _run("EEED", 1, "g1"), _run("SRRETD", 0, "g2"), _run("EEEED", 1, "g3")]
    refs = build_refs(runs, ["g1", "g2", "g3"], k=5)
    succ, fail = refs.nearest(np.asarray([1.0, 0.5, 0.2]), exclude="g1")
    assert succ == [2] and fail == [3]
    succ, fail = refs.nearest(np.asarray([1.0, 0.5, 0.2]))
    assert succ == [0, 2] and fail == [1, 3]  # by task similarity, nearest first


def test_unknown_tokens_never_match() -> None:
    refs = _refs()
    feats = run_features(refs, ["PLAN", "PLAN"], ["brand-new", "brand-new"], None)
    assert feats[-1][0] == pytest.approx(1.0) and feats[-1][1] == pytest.approx(1.0)
    assert token("EDIT", None) == "EDIT:-"


def test_refs_round_trip_as_plain_data_and_bad_data_is_refused() -> None:
    refs = _refs()
    doc = json.loads(json.dumps(refs.as_dict()))
    back = SequenceRefs.from_dict(doc, n_tasks=5)
    assert back.vocab == refs.vocab and back.seqs == refs.seqs
    assert back.lengths.tolist() == refs.lengths.tolist() and back.outcomes.tolist() == refs.outcomes.tolist()
    bad = dict(doc, seqs=[[*doc["seqs"][0], 99], *doc["seqs"][1:]])
    with pytest.raises(PackError, match="tokens"):
        SequenceRefs.from_dict(bad, n_tasks=5)
    with pytest.raises(PackError, match="tasks"):
        SequenceRefs.from_dict(doc, n_tasks=2)
    with pytest.raises(PackError, match="lengths"):
        SequenceRefs.from_dict(dict(doc, outcomes=doc["outcomes"][:-1]), n_tasks=5)
    for broken in (dict(doc, seqs=[["0"]]), dict(doc, lengths=[1.5] * len(doc["lengths"])), dict(doc, vocab=[1]),
                   dict(doc, k=10**9)):
        with pytest.raises(PackError):
            SequenceRefs.from_dict(broken, n_tasks=5)


def test_learned_pack_keeps_its_sequences_as_data(learned: dict[str, Any]) -> None:
    from immunity.learning.model import member_from_dict
    from immunity.learning.packs import load_pack, pattern_matrix

    raw = json.loads(open(learned["path"], encoding="utf-8").read())
    member_doc = raw["model"]["members"][0]
    seqs = member_doc["sequences"]
    assert set(seqs) == {"vocab", "seqs", "lengths", "outcomes", "tasks", "k", "max_len"}
    assert all(isinstance(t, str) for t in seqs["vocab"])
    assert all(isinstance(x, int) for s in seqs["seqs"] for x in s)
    assert len(seqs["seqs"]) == sum(1 for r in learned["train"] if r.run.outcome)
    inputs = member_doc["logistic"]["inputs"]
    assert inputs[-len(SEQUENCE_NAMES):] == list(SEQUENCE_NAMES)
    pack = load_pack(learned["path"])
    member = member_from_dict(pack.model["members"][0], pack.patterns, pattern_matrix(pack), pack.dimension)
    assert member.sequences is not None and member.sequences.seqs == seqs["seqs"]
    # a model that reads the distances but lost its references is refused
    broken = dict(member_doc)
    broken.pop("sequences")
    with pytest.raises(PackError, match="sequence references"):
        member_from_dict(broken, pack.patterns, pattern_matrix(pack), pack.dimension)


def test_learning_without_sequences_has_no_sequence_inputs(runs: list[Any]) -> None:
    from immunity.learning.data import collect
    from immunity.learning.learn import LearnConfig, learn_model

    data, _ = collect(runs[:32])
    learned = learn_model(data, LearnConfig(folds=3, min_successes=5, sequence_k=0))
    assert learned.member.sequences is None
    assert not set(SEQUENCE_NAMES) & set(learned.member.input_names or [])
