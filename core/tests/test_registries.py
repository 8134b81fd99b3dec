"""Registration hooks: each kind is collected by name, consumed by the runtime where core uses it."""

import pluggy
import pytest
from immunity.errors import ImmunityError
from immunity.models import Intervention, InterventionKind, Verdict
from immunity.runtime import Runtime
from immunity.store import SQLiteStore
from immunity.testing import FakeRun

hookimpl = pluggy.HookimplMarker("immunity")


class MemoryStore(SQLiteStore):
    opened: list[str] = []

    def __init__(self, location):
        MemoryStore.opened.append(location)
        super().__init__(":memory:")


class AlwaysWarn:
    def __init__(self, config, store):
        self.updates = 0

    def select(self, verdicts, event, run, state):
        return Intervention(kind=InterventionKind.WARN, text="noted", variant="always-warn")

    def update(self, run, session=None):
        self.updates += 1


class Everything:
    @hookimpl
    def immunity_register_stores(self, register):
        register("memtest", MemoryStore)

    @hookimpl
    def immunity_register_selectors(self, register):
        register("always-warn", AlwaysWarn)

    @hookimpl
    def immunity_register_embedders(self, register):
        register("test-embedder", lambda **kw: "embedder")

    @hookimpl
    def immunity_register_vector_indexes(self, register):
        register("test-index", lambda dimension, **kw: "index")

    @hookimpl
    def immunity_register_pattern_packs(self, register):
        register("test-pack", "/path/to/pack.json")

    @hookimpl
    def immunity_register_importers(self, register):
        register("test-format", object())

    @hookimpl
    def immunity_verify(self, event, step, run, state):
        if step is not None and step.tool == "bad":
            return Verdict(ok=False, error_class="wrong_tool", message="bad tool")


def test_store_selected_by_scheme():
    rt = Runtime(store="memtest:somewhere", plugins=[Everything()])
    assert MemoryStore.opened[-1] == "somewhere" and isinstance(rt.store, MemoryStore)
    rt.close()


def test_unknown_store_scheme_falls_back_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        rt = Runtime(store="nosuch://x")
    assert any("nosuch" in r.getMessage() for r in caplog.records)
    rt.close()


def test_selector_chosen_by_config_and_updated_at_run_end():
    rt = Runtime(store=":memory:", plugins=[Everything()], selector="always-warn")
    run = FakeRun(rt)
    d = run.tool("bad", {})
    assert d.intervention.kind == InterventionKind.WARN and d.intervention.variant == "always-warn"
    run.end("failure")
    assert rt.selector.updates == 1
    rt.close()
    # a typo is a warning plus the default, never an exception into the agent (unless fail-closed)
    typo = Runtime(store=None, selector="missing")
    assert typo.config.selector == "default" and typo.selector is not None
    typo.close()
    with pytest.raises(ImmunityError, match="no intervention selector named 'missing'"):
        Runtime(store=None, selector="missing", fail_closed=True)


@pytest.mark.parametrize("kind,name", [("embedders", "test-embedder"), ("vector_indexes", "test-index"),
                                       ("pattern_packs", "test-pack"), ("importers", "test-format"),
                                       ("stores", "memtest"), ("selectors", "always-warn")])
def test_registries_collect_by_name(kind, name):
    rt = Runtime(store=None, plugins=[Everything()])
    assert name in rt.pm.registry(kind)
    assert rt.pm.registry_owner(kind, name) is not None
    rt.close()


def test_core_defaults_are_registered_like_any_plugin():
    rt = Runtime(store=None)
    assert rt.pm.registry_owner("stores", "sqlite") == "immunity.defaults.store"
    assert rt.pm.registry_owner("selectors", "default") == "immunity.defaults.policy"
    assert rt.pm.registry_owner("verifiers", "rules") == "immunity.defaults.rules"
    rt.close()
