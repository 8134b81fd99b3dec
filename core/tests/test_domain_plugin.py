"""make_domain_plugin: the hooks a domain package shares, driven through a real runtime and store."""

import types
from typing import Any

from immunity.domain import Domain, Rule
from immunity.domain_plugin import DomainPlugin, make_domain_plugin
from immunity.models import ActionType, EventKind, Severity, Verdict
from immunity.runtime import Runtime
from immunity.state import RunState
from immunity.testing import FakeRun


def memo(state: RunState) -> dict[str, Any]:
    m = state.extras.get("shop")
    if m is None:
        m = state.extras["shop"] = {"opts": {}, "refunds": 0, "seen": []}
    return m


def track(step: Any, run: Any, state: RunState) -> None:
    m = memo(state)
    m["seen"].append(step.index)
    if step.tool == "refund" and not step.failed:
        m["refunds"] += 1


def too_many_refunds(event: Any, step: Any, run: Any, state: RunState) -> Verdict | None:
    """Reads the memo: the options copied at run start and the counter ``track`` keeps."""
    if step is None or event.kind != EventKind.TOOL_END or step.tool != "refund":
        return None
    m = memo(state)
    limit = int(m["opts"].get("max_refunds", 99))
    # observe_step ran before verify for this event: the current step is already counted
    assert m["seen"] and m["seen"][-1] == step.index
    if m["refunds"] > limit:
        return Verdict(ok=False, error_class="policy_violation", severity=Severity.ERROR,
                       message=f"{m['refunds']} refunds, over the limit of {limit}")
    return None


SHOP = Domain(name="shop", rules=[Rule(tool="refund", action="EDIT", side_effect=True),
                                  Rule(tool="lookup", action="SEARCH")], checks=[too_many_refunds])


def test_hooks_register_the_domain_and_packs_and_keep_the_memo(tmp_path: Any) -> None:
    events: list[str] = []
    plugin = make_domain_plugin(SHOP, packs={"shop-basics": tmp_path / "shop.json"}, memo=memo, track=track,
                                on_event=lambda event, run, state: events.append(event.kind))
    rt = Runtime(store=":memory:", plugins=[plugin], shop={"max_refunds": 1})
    assert rt.pm.registry("domains")["shop"] is SHOP
    assert rt.pm.registry("pattern_packs")["shop-basics"] == str(tmp_path / "shop.json")

    run = FakeRun(rt, task="refund order 7", domain="shop")
    run.tool("lookup", {"order": 7}, result="order 7: 20 EUR")
    first = run.tool("refund", {"order": 7}, result="refunded")
    second = run.tool("refund", {"order": 8}, result="refunded")
    run.end("failure")

    state = run.state
    assert memo(state)["opts"] == {"max_refunds": 1}
    assert memo(state)["refunds"] == 2 and memo(state)["seen"] == [0, 1, 2]
    assert [s.action_type for s in state.steps] == [ActionType.SEARCH, ActionType.EDIT, ActionType.EDIT]
    assert not [v for v in first.verdicts if v.plugin.startswith("shop:")]
    assert [v.message for v in second.verdicts if v.plugin.startswith("shop:")] == ["2 refunds, over the limit of 1"]
    assert events[0] == EventKind.RUN_START and events[-1] == EventKind.RUN_END
    assert events.count(EventKind.TOOL_END) == 3  # lookup, refund, refund
    rt.flush()
    assert [v.error_class for v in rt.store.verdicts(run.run.run_id)] == ["policy_violation"]
    rt.close()


def test_runs_of_other_domains_are_left_alone() -> None:
    seen: list[Any] = []
    plugin = make_domain_plugin(SHOP, memo=memo, track=track, on_event=lambda e, r, s: seen.append(e.kind))
    rt = Runtime(store=":memory:", plugins=[plugin], shop={"max_refunds": 0})
    run = FakeRun(rt, task="x", domain="other")
    d = run.tool("refund", {"order": 1}, result="refunded")
    run.end("success")
    assert "shop" not in run.state.extras and seen == []
    assert not [v for v in d.verdicts if not v.ok]
    rt.close()


def test_options_key_and_defaults() -> None:
    plugin = make_domain_plugin(SHOP, memo=memo, track=track, options_key="shop_policy")
    rt = Runtime(store=":memory:", plugins=[plugin], shop={"max_refunds": 5}, shop_policy={"max_refunds": 0})
    run = FakeRun(rt, task="x", domain="shop")
    d = run.tool("refund", {"order": 1}, result="refunded")
    assert memo(run.state)["opts"] == {"max_refunds": 0}
    assert [v.error_class for v in d.verdicts if not v.ok] == ["policy_violation"]
    rt.close()

    bare = make_domain_plugin(SHOP)  # no memo, no tracking: registration only, events pass through
    rt = Runtime(store=":memory:", plugins=[bare])
    run = FakeRun(rt, task="x", domain="shop")
    run.tool("lookup", {"order": 1}, result="order 1")
    assert "shop" not in run.state.extras and rt.pm.registry("domains")["shop"] is SHOP
    assert rt.pm.registry("pattern_packs").get("shop-basics") is None
    rt.close()


def test_hooks_re_exported_from_a_module_work_as_the_module_plugin() -> None:
    plugin = make_domain_plugin(SHOP, memo=memo, track=track)
    assert isinstance(plugin, DomainPlugin)
    module = types.ModuleType("immunity_shop_example")
    module.PLUGIN = plugin  # type: ignore[attr-defined]
    for name in ("immunity_register_domains", "immunity_register_pattern_packs", "immunity_observe",
                 "immunity_observe_step"):
        setattr(module, name, getattr(plugin, name))
    rt = Runtime(store=":memory:", plugins=[module], shop={"max_refunds": 0})
    names = {impl.plugin_name for impl in rt.pm.hook.immunity_observe_step.get_hookimpls()}
    assert rt.pm.get_name(module) in names
    run = FakeRun(rt, task="x", domain="shop")
    d = run.tool("refund", {"order": 1}, result="refunded")
    assert memo(run.state)["refunds"] == 1
    assert [v.error_class for v in d.verdicts if not v.ok] == ["policy_violation"]
    rt.close()


def test_a_run_resumed_in_a_new_runtime_rebuilds_the_domain_memo(tmp_path):

    from immunity.domain import Domain, Rule
    from immunity.domain_plugin import make_domain_plugin
    from immunity.runtime import Runtime

    seen: list[str] = []

    def memo(state):
        return state.extras.setdefault("toy", {})

    def track(step, run, state):
        memo(state).setdefault("tools", []).append(step.tool)
        seen.append(step.tool)

    toy = Domain(name="toy", rules=[Rule(tool="a", action="SEARCH")])
    plugin = make_domain_plugin(toy, memo=memo, track=track)
    db = str(tmp_path / "toy.db")
    rt = Runtime(store=db, plugins=[plugin], domain="toy", toy={"limit": 3})
    s = rt.start_run(run_id="r")
    s.tool_start("a", {}, tool_call_id="1")
    s.tool_end("a", "x", tool_call_id="1")
    rt.close()
    rt2 = Runtime(store=db, plugins=[make_domain_plugin(toy, memo=memo, track=track)], domain="toy", toy={"limit": 3})
    s2 = rt2.resume_run("r")
    assert memo(s2.state)["tools"] == ["a"]  # rebuilt from the stored step
    s2.tool_start("a", {"n": 2}, tool_call_id="2")
    assert memo(s2.state)["opts"] == {"limit": 3}  # options read on the first event after the resume
    rt2.close()
