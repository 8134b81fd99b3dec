"""The guard contract: what every adapter offers, checked against its real framework.

An adapter's test suite (this project's four, or a third-party adapter's) subclasses
:class:`GuardContract` and says how to build a small agent of its framework and how to run it; the
inherited tests then drive that agent through the framework's real runtime::

    from immunity.testing.contract import GuardContract

    class TestGuardContract(GuardContract):
        adapter_name = "langgraph"

        def build(self, *, fail: bool) -> Any:
            model = ScriptedChatModel(script=[] if fail else ["done"])   # no turn left: the model raises
            return create_react_agent(model, [])

        def run(self, target: Any) -> None:
            target.invoke({"messages": [("user", "hi")]})

``build(fail=False)`` is an agent whose (scripted, offline) model answers once; ``build(fail=True)``
one whose model raises. :meth:`arun` defaults to running :meth:`run` in a worker thread; override it
with the framework's own async call.

What is checked: ``protect`` returns a :class:`~immunity.adapter.Guard` found by the object's type
and registered under the adapter's one name, which is also the run's ``framework``; unknown options
are rejected and the common options have their common defaults; ``run_id`` / ``run_ids`` name the
runs; a completed run's outcome is ``unknown`` and ``set_outcome`` sets it (stored, with the
reason); a run whose model raised is a ``failure`` recorded by the framework; protecting twice warns
and keeps one guard; after ``uninstrument`` nothing is recorded; ``resume`` / ``aresume`` exist.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from immunity.adapter import COMMON_OPTIONS, Guard
from immunity.models import Outcome
from immunity.runtime import Runtime


class GuardContract:
    """Subclass as ``Test...`` in an adapter's tests; set :attr:`adapter_name` and implement
    :meth:`build` and :meth:`run` (see the module docstring)."""

    #: the name the adapter is registered under (``immunity_register_adapters``)
    adapter_name: str = ""

    # ------------------------------------------------------------------ what the adapter provides
    def build(self, *, fail: bool) -> Any:  # pragma: no cover - provided by the adapter's tests
        raise NotImplementedError

    def run(self, target: Any) -> None:  # pragma: no cover - provided by the adapter's tests
        raise NotImplementedError

    async def arun(self, target: Any) -> None:
        await asyncio.to_thread(self.run, target)

    # ------------------------------------------------------------------ helpers
    @pytest.fixture
    def contract_runtime(self) -> Any:
        rt = Runtime(store=":memory:")
        try:
            yield rt
        finally:
            rt.close()

    def _run_failing(self, target: Any) -> None:
        try:
            self.run(target)
        except Exception:
            return  # the framework let the model's error through: that is the user's to handle
        # a framework that turned the error into an answer still has to record a failure

    def _stored(self, rt: Runtime, run_id: str) -> Any:
        rt.flush()
        run = rt.store.get_run(run_id)
        assert run is not None and run.run_id == run_id, f"run {run_id} not in the store"
        return run

    # ------------------------------------------------------------------ the contract
    def test_protect_returns_a_guard_found_by_type(self, contract_runtime: Any) -> None:
        adapters = contract_runtime.pm.registry("adapters")
        assert self.adapter_name in adapters, f"no adapter registered as {self.adapter_name!r}: {sorted(adapters)}"
        target = self.build(fail=False)
        guard = contract_runtime.protect(target)
        assert isinstance(guard, adapters[self.adapter_name]) and isinstance(guard, Guard)
        assert guard.name == self.adapter_name and guard.instrumented
        assert guard.run_id is None and guard.run_ids == []
        for name in ("set_outcome", "resume", "aresume", "uninstrument"):
            assert callable(getattr(guard, name)), name
        assert inspect.iscoroutinefunction(guard.aresume)

    def test_options_are_checked_with_common_defaults(self, contract_runtime: Any) -> None:
        with pytest.raises(TypeError, match="unknown option"):
            contract_runtime.protect(self.build(fail=False), no_such_option=1)
        guard = contract_runtime.protect(self.build(fail=False))
        for name, default in COMMON_OPTIONS.items():
            assert guard.options[name] == default, (name, guard.options[name])
        other = contract_runtime.protect(self.build(fail=False), node_events="end", max_rollbacks=1)
        assert other.options["node_events"] == "end" and other.options["max_rollbacks"] == 1

    def test_a_completed_run_is_unknown_until_the_user_says(self, contract_runtime: Any) -> None:
        rt = contract_runtime
        target = self.build(fail=False)
        guard = rt.protect(target)
        self.run(target)
        run_id = guard.run_id
        assert run_id is not None and guard.run_ids == [run_id]
        run = self._stored(rt, run_id)
        assert run.framework == self.adapter_name and run.outcome == Outcome.UNKNOWN
        assert run.ended_at is not None
        guard.set_outcome(run_id, "success", reason="checked by the contract")
        run = self._stored(rt, run_id)
        assert run.outcome == Outcome.SUCCESS and run.metadata["outcome_reason"] == "checked by the contract"
        assert run.metadata["outcome_source"] == "user"

    def test_a_run_whose_model_raised_is_a_failure(self, contract_runtime: Any) -> None:
        rt = contract_runtime
        target = self.build(fail=True)
        guard = rt.protect(target)
        self._run_failing(target)
        assert guard.run_id is not None
        run = self._stored(rt, guard.run_id)
        assert run.outcome == Outcome.FAILURE and run.metadata["outcome_source"] == "framework"
        assert run.metadata.get("outcome_reason")

    def test_async_run(self, contract_runtime: Any) -> None:
        target = self.build(fail=False)
        guard = contract_runtime.protect(target)
        asyncio.run(self.arun(target))
        assert guard.run_id is not None
        assert self._stored(contract_runtime, guard.run_id).framework == self.adapter_name

    def test_protecting_twice_keeps_one_guard(self, contract_runtime: Any) -> None:
        target = self.build(fail=False)
        guard = contract_runtime.protect(target)
        with pytest.warns(UserWarning, match="already protected"):
            again = contract_runtime.protect(target)
        assert again is guard
        self.run(target)
        assert len(guard.run_ids) == 1
        contract_runtime.flush()
        assert len(contract_runtime.store.runs()) == 1  # recorded once, not once per guard

    def test_uninstrument_stops_recording(self, contract_runtime: Any) -> None:
        target = self.build(fail=False)
        guard = contract_runtime.protect(target)
        guard.uninstrument()
        assert not guard.instrumented
        self.run(target)
        contract_runtime.flush()
        assert guard.run_ids == [] and contract_runtime.store.runs() == []
