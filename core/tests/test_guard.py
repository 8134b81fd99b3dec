"""One guard surface: ``protect()`` routes every option to the runtime or the adapter and rejects the
rest, options have the same names and defaults, protecting twice keeps one guard, one RunStopped."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import immunity
import pytest
from immunity import hookimpl
from immunity.adapter import COMMON_OPTIONS, Guard
from immunity.errors import RunStopped
from immunity.runtime import Runtime
from immunity.testing import FakeAdapter


class Toy:
    """An object of a made-up framework."""


class ToyAdapter(FakeAdapter):
    name = "toy"
    extra_options: ClassVar[dict[str, Any] | None] = {"speed": 1}

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return isinstance(obj, Toy)


class ToyPlugin:
    @hookimpl
    def immunity_register_adapters(self, register: Any) -> None:
        register("toy", ToyAdapter)


def protect(target: Any, **kw: Any) -> Any:
    guard = immunity.protect(target, store=":memory:", plugins=[ToyPlugin()], **kw)
    return guard


def test_protect_routes_options_to_the_runtime_and_the_adapter() -> None:
    toy = Toy()
    guard = protect(toy, domain="coding", selector="bandit", max_interventions=2, speed=3, max_rollbacks=1,
                    options={"seed": 4})
    try:
        assert isinstance(guard, ToyAdapter) and isinstance(guard, Guard)
        assert guard.options == {**COMMON_OPTIONS, "speed": 3, "max_rollbacks": 1}
        cfg = guard.runtime.config
        assert cfg.domain == "coding" and cfg.selector == "bandit" and cfg.max_interventions == 2
        assert cfg.options == {"seed": 4}
    finally:
        guard.runtime.close()


def test_unknown_keywords_are_rejected_with_a_suggestion() -> None:
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['sped'\] \(did you mean 'speed'\?\)"):
        protect(Toy(), sped=3)
    with pytest.raises(TypeError, match="handle_tool_errors"):
        protect(Toy(), handle_tool_errors=False)  # another adapter's option: not silently dropped
    with pytest.raises(TypeError, match=r"'domian' \(did you mean 'domain'\?\)"):
        Runtime(domian="coding", store=None)
    rt = Runtime(store=None, seed=3)  # a plugin option that is no misspelling stays allowed
    assert rt.config.options == {"seed": 3}
    rt.close()


def test_plugin_options_as_one_mapping_and_as_keywords() -> None:
    rt = Runtime(store=None, options={"seed": 3, "mode": "a"}, mode="b")
    assert rt.config.options == {"seed": 3, "mode": "b"}  # a keyword wins over the mapping
    rt.close()
    with pytest.raises(TypeError, match="takes a mapping"):
        Runtime(store=None, options=["seed"])


def test_common_options_are_checked_and_old_spellings_still_work(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[ToyPlugin()])
    with pytest.warns(DeprecationWarning, match="node_events=True is deprecated"):
        guard = rt.protect(Toy(), node_events=True)
    assert guard.options["node_events"] == "end"
    with pytest.raises(ValueError, match="node_events must be one of"):
        rt.protect(Toy(), node_events="sometimes")
    with pytest.raises(TypeError, match="max_rollbacks"):
        rt.protect(Toy(), max_rollbacks=-1)


def test_protecting_twice_warns_and_keeps_one_guard(make_runtime: Any) -> None:
    toy = Toy()
    rt = make_runtime(plugins=[ToyPlugin()])
    first = rt.protect(toy)
    with pytest.warns(UserWarning, match="already protected"):
        again = rt.protect(toy)
    with pytest.warns(UserWarning, match="already protected"):
        other_runtime = protect(toy)  # immunity.protect makes a runtime of its own: still one guard
    assert again is first and other_runtime is first and rt.adapters == [first]
    first.uninstrument()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = rt.protect(toy)  # detached: protecting it again is fine
    assert second is not first


def test_one_run_stopped() -> None:
    exc = RunStopped("deleting records ends this run", run_id="toy-1")
    assert exc.reason == "deleting records ends this run" and exc.final_answer == exc.reason
    assert exc.run_id == "toy-1" and immunity.RunStopped is RunStopped
    assert isinstance(exc, immunity.errors.ImmunityError)


def test_a_plugins_option_that_shares_a_word_with_an_argument_is_not_a_typo():
    from immunity.guard import check_runtime_options

    check_runtime_options({"llm_verifier": {"model": "m"}, "otel": True})  # immunity-llm-verifier's, immunity-otel's
    with pytest.raises(TypeError, match="did you mean 'store'"):
        check_runtime_options({"stroe": "x.db"})
