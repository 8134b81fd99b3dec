"""The default selector is the bandit, constrained to the rules' actions: through a real runtime and
a real SQLite store, it never stops, blocks or hints where the ``default`` selector would not, it
starts as the ``default`` selector, and it learns the wording of hints from the outcomes users set."""

from __future__ import annotations

from typing import Any

from immunity.config import Config
from immunity.defaults.policy import DefaultSelector
from immunity.interventions.selector import BanditSelector
from immunity.models import InterventionKind
from immunity.outcomes import set_outcome
from immunity.runtime import Runtime
from immunity.testing import FakeRun, FlagTool

CLS = "wrong_parameters"


def Flag() -> FlagTool:  # noqa: N802 - reads like the plugin class it builds
    """Flags every completed ``flag_me`` call (a warning: the rules hint)."""
    return FlagTool("flag_me", error_class=CLS, message="the argument 'x' does not match the record",
                    evidence={"argument": "x"})


def _interventions(rt: Runtime, run_id: str) -> list[tuple[str, str]]:
    rt.flush()
    return [(iv.kind.value, iv.text) for iv in rt.store.interventions(run_id)]


def _mixed_run(rt: Runtime) -> tuple[str, str]:
    """Flagged calls (the rules hint, then hold back the same hint), then an identical loop (the rules
    hint, block, then stop)."""
    run = FakeRun(rt, task="find the ACME invoice", domain="support")
    for x in range(4):  # the same verdict on consecutive steps: the rules hint once, then hold back
        run.tool("flag_me", {"x": x})
    run.tool("list_folders", {}, result="inbox, archive")
    for _ in range(10):
        if run.tool("search_invoices", {"q": "ACME"}, result="no invoice found").stop:
            break
    run.end()
    return run.run.run_id, run.run.status


def test_the_bandit_is_the_default_and_the_rules_alone_stay_available() -> None:
    assert Config().selector == "bandit"
    rt = Runtime(store=None)
    try:
        assert rt.config.selector == "bandit" and isinstance(rt.selector, BanditSelector)
        assert not rt.selector.escalate
        assert "loops" not in rt.config.verifiers  # the default verifies exactly what the rules verify
    finally:
        rt.close()
    rt = Runtime(store=None, selector="default")
    try:
        assert isinstance(rt.selector, DefaultSelector)
    finally:
        rt.close()
    rt = Runtime(store=None, bandit={"escalate": True})
    try:
        assert rt.selector.escalate and "loops" in rt.config.verifiers
    finally:
        rt.close()


def test_cold_start_is_the_default_selectors_choice(tmp_path: Any) -> None:
    runs = {}
    for selector in ("default", "bandit"):
        rt = Runtime(store=str(tmp_path / f"{selector}.db"), selector=selector, plugins=[Flag()], seed=1)
        try:
            run_id, status = _mixed_run(rt)
            runs[selector] = (_interventions(rt, run_id), status)
        finally:
            rt.close()
    default, bandit = runs["default"], runs["bandit"]
    assert bandit == default  # kind and text of every intervention, and how the run ended
    kinds = [k for k, _ in default[0]]
    assert {"hint", "block", "stop"} <= set(kinds) and default[1] == "stopped"


def test_a_learned_bandit_keeps_every_action_of_the_rules(tmp_path: Any) -> None:
    """With no cold start (``warmup`` 0) the wording is sampled from the first hint; the kinds of the
    interventions (and so every stop and block) stay the rules'."""
    kinds = {}
    for selector, opts in (("default", {}), ("bandit", {"bandit": {"warmup": 0}})):
        rt = Runtime(store=str(tmp_path / f"{selector}.db"), selector=selector, plugins=[Flag()], seed=4, **opts)
        try:
            run_id, status = _mixed_run(rt)
            kinds[selector] = ([k for k, _ in _interventions(rt, run_id)], status)
            if selector == "bandit":
                variants = {iv.variant for iv in rt.store.interventions(run_id) if iv.kind == InterventionKind.HINT}
        finally:
            rt.close()
    assert kinds["bandit"] == kinds["default"]
    assert all(v and "/" in v for v in variants)  # the hints are the bandit's choices, with their variant ids


def test_a_run_where_the_rules_only_hint_is_never_stopped(tmp_path: Any) -> None:
    """The scenario of the import-safety test: one search, then five more with new arguments and the
    same answer. The rules hint at most; the escalating ladder would stop it; the default does not."""
    def drive(rt: Runtime) -> tuple[str, list[str], int]:
        run = FakeRun(rt, task="long")
        run.tool("search", {"q": 0}, result="r")
        for i in range(5):
            run.tool("search", {"q": i + 1}, result="r")
        run.end("success")
        rt.flush()
        return run.run.status, [iv.kind.value for iv in rt.store.interventions(run.run.run_id)], \
            len(rt.store.steps(run.run.run_id))

    seen = {}
    for name, kw in (("default", {"selector": "default"}), ("bandit", {}), ("learned", {"bandit": {"warmup": 0}}),
                     ("ladder", {"bandit": {"escalate": True}})):
        rt = Runtime(store=str(tmp_path / f"{name}.db"), seed=0, **kw)
        try:
            seen[name] = drive(rt)
        finally:
            rt.close()
    assert "stop" in seen["ladder"][1]  # the escalating ladder stops this run: the case being guarded against
    for name in ("bandit", "learned"):
        status, kinds, steps = seen[name]
        assert "stop" not in kinds and "block" not in kinds and steps == 6, (name, seen[name])
        assert kinds == seen["default"][1]


def test_the_choice_shifts_toward_the_better_rewarded_wording(tmp_path: Any) -> None:
    """Every run gets one hint; the user marks it a success when the hint was the ``reflect`` wording,
    a failure otherwise. Cold start gives the rules' wording; then the bandit moves to ``reflect``, and
    a new process on the same store starts from what was learned."""
    good = f"{CLS}/reflect"
    db = str(tmp_path / "learn.db")

    def runs(rt: Runtime, n: int) -> list[str]:
        chosen = []
        for _ in range(n):
            run = FakeRun(rt, task="update the record")
            vid = run.tool("flag_me", {"x": 1}).intervention.variant
            run.end()  # the framework says nothing; the user's verdict comes after the run
            set_outcome(rt, run.run.run_id, "success" if vid == good else "failure", reason="checked by hand")
            chosen.append(vid)
        return chosen

    rt = Runtime(store=db, plugins=[Flag()], seed=7)
    try:
        chosen = runs(rt, 60)
    finally:
        rt.close()
    assert chosen[:5] == [f"{CLS}/default"] * 5  # cold start: the rules' wording until 5 rewarded pulls
    assert len(set(chosen[5:])) > 1  # then it tries the other wordings of the class
    assert chosen[-20:].count(good) >= 15, chosen[-20:]
    rt = Runtime(store=db, plugins=[Flag()], seed=8)
    try:
        later = runs(rt, 10)
    finally:
        rt.close()
    assert later.count(good) >= 8, later


def test_a_run_without_a_hint_leaves_the_store_as_the_rules_would(tmp_path: Any) -> None:
    db = str(tmp_path / "quiet.db")
    rt = Runtime(store=db)
    try:
        run = FakeRun(rt)
        run.tool("lookup", {"id": 1}, result="found")
        run.end("success")
        rt.flush()
        tables = set(rt.store.db.table_names())
        assert not tables & {"bandit_arms", "bandit_pulls", "bandit_variants"}  # nothing chosen, nothing kept
    finally:
        rt.close()
