"""The store contract: what every store (SQLite in core, PostgreSQL in ``immunity-postgres``, any
plugin's) must do for the runtime, the CLI, the importers and the bandit.

Subclass :class:`StoreContract` in a test module and give it a ``store`` fixture that yields a new,
empty store (the contract closes nothing; the fixture does)::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self):
            s = MyStore(...)
            yield s
            s.close()

Every test goes through the public methods only (``save``, ``flush``, ``write_run``, the reads,
``transaction`` and ``db`` for a plugin's own tables), so a store passes by behaving, not by its
insides.
"""

from __future__ import annotations

import time
from typing import Any

from immunity.models import (
    ActionType,
    Checkpoint,
    Event,
    EventKind,
    FailurePattern,
    Intervention,
    Outcome,
    Recovery,
    RecoveryKind,
    Run,
    Severity,
    Step,
    Verdict,
)

__all__ = ["StoreContract"]


def _run(**kw: Any) -> Run:
    kw.setdefault("task", "fix the failing test")
    kw.setdefault("domain", "coding")
    kw.setdefault("framework", "fake")
    return Run(**kw)


class StoreContract:
    """Tests every store must pass; needs a ``store`` fixture (a new, empty store)."""

    # ------------------------------------------------------------------ runs
    def test_run_round_trip(self, store: Any) -> None:
        run = _run(task_id="t-1", agent="coder", outcome="failure", failure_step=3, source="live", tokens=120,
                   cost=0.25, steps=4, status="ended", final_answer="done", metadata={"k": [1, 2], "s": "x"})
        store.save("runs", run)
        store.flush()
        got = store.get_run(run.run_id)
        assert got is not None
        assert got.model_dump() == run.model_dump()

    def test_a_run_saved_again_is_replaced(self, store: Any) -> None:
        run = _run()
        store.save("runs", run)
        run.status, run.outcome, run.steps = "ended", Outcome.SUCCESS, 7
        store.save("runs", run)
        store.flush()
        got = store.get_run(run.run_id)
        assert (got.status, got.outcome, got.steps) == ("ended", Outcome.SUCCESS, 7)
        assert store.count("runs") == 1

    def test_runs_filters_order_and_limit(self, store: Any) -> None:
        t0 = time.time()
        made = [_run(outcome=o, domain=d, source=s, started_at=t0 + i)
                for i, (o, d, s) in enumerate([("success", "coding", "a"), ("failure", "support", "b"),
                                               ("failure", "coding", "a"), ("unknown", "data", "b")])]
        for r in made:
            store.save("runs", r)
        store.flush()
        assert [r.run_id for r in store.runs(limit=None)] == [r.run_id for r in reversed(made)]
        assert [r.run_id for r in store.runs(limit=2)] == [made[3].run_id, made[2].run_id]
        assert {r.run_id for r in store.runs(outcome="failure")} == {made[1].run_id, made[2].run_id}
        assert [r.run_id for r in store.runs(domain="coding", source="a")] == [made[2].run_id, made[0].run_id]
        assert len(list(store.iter_runs(source="b"))) == 2

    def test_get_run_by_unique_prefix_only(self, store: Any) -> None:
        a, b, c = _run(run_id="run_aaa111"), _run(run_id="run_aaa222"), _run(run_id="run_b_1")
        for r in (a, b, c):
            store.save("runs", r)
        store.flush()
        assert store.get_run("run_aaa1").run_id == a.run_id
        assert store.get_run("run_aaa") is None  # two runs start so: not unique
        assert store.get_run("run_b") .run_id == c.run_id
        assert store.get_run("run_%") is None  # a LIKE wildcard in the id is taken literally
        assert store.get_run("nope") is None

    def test_update_run(self, store: Any) -> None:
        run = _run()
        store.save("runs", run)
        store.update_run(run.run_id, outcome="success", failure_step=None)
        got = store.get_run(run.run_id)
        assert got.outcome is Outcome.SUCCESS and got.failure_step is None

    # ------------------------------------------------------------------ steps and events
    def test_steps_round_trip_in_order(self, store: Any) -> None:
        run = _run()
        store.save("runs", run)
        steps = [Step(run_id=run.run_id, index=i, action_type=ActionType(a), tool="bash", arguments={"command": c},
                      result="out\x00with a NUL" if i == 1 else "ok", error="boom" if i == 2 else None,
                      return_code=2 if i == 2 else 0, side_effect=i == 1, tokens=10 * i, cost=0.5,
                      data={"x": i, "_private": "kept in memory only"})
                 for i, (a, c) in enumerate([("SEARCH", "ls"), ("EDIT", "sed -i s/a/b/ f"), ("VERIFY", "pytest")])]
        for s in reversed(steps):
            store.save("steps", s)
        store.flush()
        got = store.steps(run.run_id)
        assert [s.index for s in got] == [0, 1, 2]
        assert [s.action_type for s in got] == [ActionType.SEARCH, ActionType.EDIT, ActionType.VERIFY]
        assert got[1].side_effect is True and got[0].side_effect is False
        assert got[2].error == "boom" and got[2].return_code == 2
        assert got[0].data == {"x": 0}  # private keys are not stored
        assert "NUL" in (got[1].result or "")
        assert got[1].arguments == {"command": "sed -i s/a/b/ f"}

    def test_a_step_saved_again_is_replaced(self, store: Any) -> None:
        run = _run()
        step = Step(run_id=run.run_id, index=0, tool="bash", result="first")
        store.save("steps", step)
        store.save("steps", Step(run_id=run.run_id, index=0, tool="bash", result="second"))
        store.flush()
        (got,) = store.steps(run.run_id)
        assert got.result == "second"

    def test_events_keep_their_order_and_fields(self, store: Any) -> None:
        run = _run()
        store.save("runs", run)
        evs = [Event(kind=EventKind.RUN_START, run_id=run.run_id),
               Event(kind=EventKind.MODEL_END, run_id=run.run_id, model="m-1", output="thinking",
                     usage={"input_tokens": 12, "output_tokens": 3}),
               Event(kind=EventKind.TOOL_START, run_id=run.run_id, tool="bash", tool_call_id="c1",
                     arguments={"command": "ls"}),
               Event(kind=EventKind.TOOL_END, run_id=run.run_id, tool="bash", tool_call_id="c1", result="a b",
                     return_code=0),
               Event(kind=EventKind.RUN_END, run_id=run.run_id, outcome=Outcome.FAILURE)]
        for e in evs:
            store.save("events", e)
        other = _run()
        store.save("events", Event(kind=EventKind.RUN_START, run_id=other.run_id))
        store.flush()
        got = store.events(run.run_id)
        assert [e.event_id for e in got] == [e.event_id for e in evs]
        assert got[1].usage == {"input_tokens": 12, "output_tokens": 3} and got[1].model == "m-1"
        assert got[2].arguments == {"command": "ls"} and got[3].result == "a b"
        assert got[4].outcome is Outcome.FAILURE
        assert len(store.events(other.run_id)) == 1

    # ------------------------------------------------------------------ what plugins record
    def test_verdicts_interventions_recoveries_checkpoints(self, store: Any) -> None:
        run = _run()
        rid = run.run_id
        store.save("runs", run)
        store.save("verdicts", Verdict(ok=False, run_id=rid, step=1, error_class="loop", severity=Severity.ERROR,
                                       message="same call again", hint="try another", evidence={"n": 3},
                                       plugin="rules", block=True))
        store.save("verdicts", Verdict(ok=True, run_id=rid, step=2, plugin="rules"))
        iv = Intervention(run_id=rid, step=1, text="hint", arguments={"a": 1}, error_class="loop",
                          variant="v1", delivered=True)
        store.save("interventions", iv)
        store.save("recoveries", Recovery(run_id=rid, step=1, kind=RecoveryKind.ROLLBACK, hint="back",
                                          checkpoint_id="cp_1", reason="verify failed"))
        store.save("checkpoints", Checkpoint(checkpoint_id="cp_1", run_id=rid, step=1, verified=True,
                                             ref={"thread_id": "t", "checkpoint_id": "abc"}))
        store.flush()
        v1, v2 = store.verdicts(rid)
        assert (v1.ok, v1.block, v1.error_class, v1.evidence, v1.hint) == (False, True, "loop", {"n": 3},
                                                                          "try another")
        assert v2.ok is True and v2.step == 2
        (giv,) = store.interventions(rid)
        assert giv.model_dump() == iv.model_dump()
        assert [i.intervention_id for i in store.interventions()] == [iv.intervention_id]
        (rc,) = store.recoveries(rid)
        assert rc.kind is RecoveryKind.ROLLBACK and rc.checkpoint_id == "cp_1"
        (cp,) = store.checkpoints(rid)
        assert cp.verified is True and cp.ref == {"thread_id": "t", "checkpoint_id": "abc"}

    def test_plugin_errors(self, store: Any) -> None:
        run = _run()
        store.save("plugin_errors", {"run_id": run.run_id, "plugin": "p", "hook": "immunity_verify",
                                     "error": "ValueError: x", "ts": time.time()})
        store.save("plugin_errors", {"run_id": "other", "plugin": "q", "hook": "immunity_observe",
                                     "error": "KeyError", "ts": time.time()})
        store.flush()
        (mine,) = store.plugin_errors(run.run_id)
        assert mine["plugin"] == "p" and mine["hook"] == "immunity_verify"
        assert [e["plugin"] for e in store.plugin_errors()] == ["q", "p"]  # newest first

    def test_patterns(self, store: Any) -> None:
        a = FailurePattern(error_class="loop", domain="coding", vector=[0.5, 0.25], metadata={"pack": "p1"})
        b = FailurePattern(error_class="gave_up", metadata={"pack": "p2"})
        store.save("patterns", a)
        store.save("patterns", b)
        store.flush()
        assert {p.pattern_id for p in store.patterns()} == {a.pattern_id, b.pattern_id}
        (got,) = store.patterns("p1")
        assert got.model_dump() == a.model_dump()

    def test_idempotency_keys(self, store: Any) -> None:
        store.save("idempotency", {"key": "k1", "run_id": "run_1", "tool": "charge", "result": "charged $5",
                                   "ts": time.time()})
        store.flush()
        assert store.idempotent_result("k1") == "charged $5"
        assert store.idempotent_result("k2") is None
        store.save("idempotency", {"key": "k1", "run_id": None, "tool": None, "result": None, "ts": time.time()})
        store.flush()
        assert store.idempotent_result("k1") is None  # forgotten

    def test_idempotency_results_of_a_run(self, store: Any) -> None:
        for key, rid in (("a", "run_1"), ("b", "run_1"), ("c", "run_2")):
            store.save("idempotency", {"key": key, "run_id": rid, "tool": "t", "result": f"r-{key}", "ts": 1.0})
        store.flush()
        assert store.idempotency_results("run_1") == {"a": "r-a", "b": "r-b"}
        assert store.idempotency_results("nope") == {}

    def test_get_run_without_flush_or_prefix(self, store: Any) -> None:
        run = _run(run_id="run_exact_1")
        store.save("runs", run)
        store.flush()
        assert store.get_run("run_exact_1", flush=False, prefix=False).run_id == "run_exact_1"
        assert store.get_run("run_exact", flush=False, prefix=False) is None

    def test_secrets_are_masked_before_they_are_stored(self, store: Any) -> None:
        secret = "sk-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
        run = _run()
        store.save("steps", Step(run_id=run.run_id, index=0, tool="http", arguments={"header": f"Bearer {secret}"},
                                 result=f"using {secret}"))
        store.flush()
        (got,) = store.steps(run.run_id)
        assert secret not in str(got.arguments) and secret not in (got.result or "")

    # ------------------------------------------------------------------ whole runs (importers)
    def test_write_run_replaces_everything_about_the_run(self, store: Any) -> None:
        run = _run(outcome="failure")
        rid = run.run_id
        store.save("runs", run)
        for i in range(5):
            store.save("steps", Step(run_id=rid, index=i, tool="old"))
        store.save("verdicts", Verdict(ok=False, run_id=rid, step=0, error_class="old"))
        store.flush()
        run.outcome = Outcome.SUCCESS
        steps = [Step(run_id=rid, index=i, tool="new", action_type=ActionType.EDIT) for i in range(2)]
        events = [Event(kind=EventKind.TOOL_START, run_id=rid, tool="new") for _ in range(2)]
        store.write_run(run, steps, related={"events": events, "verdicts": [Verdict(ok=False, error_class="new")],
                                             "interventions": [], "recoveries": [], "checkpoints": [],
                                             "plugin_errors": []})
        assert store.get_run(rid).outcome is Outcome.SUCCESS
        assert [s.tool for s in store.steps(rid)] == ["new", "new"]
        assert [e.event_id for e in store.events(rid)] == [e.event_id for e in events]
        assert [(v.error_class, v.run_id) for v in store.verdicts(rid)] == [("new", rid)]

    def test_events_numbering_goes_on_after_write_run(self, store: Any) -> None:
        run = _run()
        first = [Event(kind=EventKind.TOOL_START, run_id=run.run_id, tool="a") for _ in range(3)]
        store.write_run(run, [], related={"events": first})
        later = Event(kind=EventKind.TOOL_START, run_id=run.run_id, tool="b")
        store.save("events", later)
        store.flush()
        assert [e.tool for e in store.events(run.run_id)] == ["a", "a", "a", "b"]

    # ------------------------------------------------------------------ a plugin's own tables
    def test_a_plugins_own_table(self, store: Any) -> None:
        store.save("myplugin_rows", {"name": "a", "n": 1, "score": 0.5})
        store.save("myplugin_rows", {"name": "b", "n": 2, "score": 1.5})
        store.flush()
        assert store.count("myplugin_rows") == 2
        rows = store.db.execute("select name, n, score from [myplugin_rows] where n > ? order by n", [0]).fetchall()
        assert [tuple(r) for r in rows] == [("a", 1, 0.5), ("b", 2, 1.5)]
        assert "myplugin_rows" in store.db.table_names()

    def test_transaction_for_a_plugins_counters(self, store: Any) -> None:
        with store.transaction():
            store.db.execute("create table if not exists [myplugin_counts] (k text primary key, "
                             "n integer not null default 0)")
        for _ in range(3):
            with store.transaction(flush=False):
                store.db.execute("insert into [myplugin_counts] (k, n) values (?, 1) on conflict (k) do update "
                                 "set n = n + 1", ["a"])
        with store.transaction():
            store.db.execute("insert or ignore into [myplugin_counts] (k, n) values (?, ?)", ["a", 100])
            store.db.execute("insert or replace into [myplugin_counts] (k, n) values (?, ?)", ["b", 7])
        assert dict(store.db.execute("select k, n from [myplugin_counts] order by k").fetchall()) == {"a": 3, "b": 7}

    def test_bandit_posteriors(self, store: Any) -> None:
        from immunity.interventions.bandit import BanditStore, Pull, class_key, read_report

        bandit = BanditStore(store)
        bandit.ensure_tables()
        pulls = [Pull(f"iv_{i}", f"run_{i % 3}", "v1" if i % 2 else "v2", "loop", "domain=coding|pos=early", i)
                 for i in range(6)]
        bandit.record_pulls(pulls, [])
        bandit.reward_run("run_0", 1)
        bandit.reward_run("run_1", 0)
        bandit.reward_run("run_1", 1)  # corrected: the failure is taken back
        fresh = BanditStore(store)
        fresh.load()
        arm = fresh.arms[(class_key("loop"), "v1")]
        assert (arm.pulls, arm.successes, arm.failures) == (3, 2, 0)
        rows = read_report(store.db)
        assert {(r["variant"], r["level"]) for r in rows} >= {("v1", "class"), ("v2", "context")}

    # ------------------------------------------------------------------ through the runtime
    def test_a_live_run_through_the_runtime(self, store: Any) -> None:
        from immunity.runtime import Runtime

        rt = Runtime(store=store)
        session = rt.start_run(task="list files", framework="fake", domain="coding")
        for i in range(20):
            session.tool_start("bash", {"command": f"ls {i}"})
            session.tool_end("bash", f"file{i}")
        session.end("success")
        rid = session.run.run_id
        rt.flush()
        got = store.get_run(rid)
        assert got.outcome is Outcome.SUCCESS and got.framework == "fake"
        assert len(store.steps(rid)) == 20
        kinds = [e.kind for e in store.events(rid)]
        assert kinds[0] is EventKind.RUN_START and kinds[-1] is EventKind.RUN_END
        assert kinds.count(EventKind.TOOL_END) == 20
