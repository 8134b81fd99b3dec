import importlib
import sys
from importlib import metadata

import pluggy
import pytest
from immunity import plugins as plugins_mod
from immunity.errors import PluginCollisionError, PluginError
from immunity.plugins import BUILTIN_PLUGINS, get_plugin_manager

hookimpl = pluggy.HookimplMarker("immunity")


def test_nothing_loaded_at_import():
    code = "import immunity, sys; print(any(m.startswith('immunity_') for m in sys.modules))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_factory_returns_new_managers_with_builtins_first():
    a, b = get_plugin_manager(load_entrypoints=False), get_plugin_manager(load_entrypoints=False)
    assert a is not b
    names = [i.name for i in a.plugin_infos()]
    assert names[: len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)


class FakeEP:
    def __init__(self, name, value, dist="fake-dist", loader=None):
        self.name, self.value, self._loader = name, value, loader
        self.dist = type("D", (), {"name": dist})()

    def load(self):
        return self._loader()


def _with_eps(monkeypatch, eps):
    monkeypatch.setattr(plugins_mod, "_entry_points", lambda: iter(eps))


class GoodPlugin:
    @hookimpl
    def immunity_register_domains(self, register):
        from immunity.domain import Domain

        register("good-domain", Domain(name="good-domain"))


def _broken():
    raise ImportError("no module named frobnicate")


def test_broken_plugin_is_reported_and_skipped(monkeypatch):
    monkeypatch.delenv("IMMUNITY_STRICT_PLUGINS", raising=False)
    _with_eps(monkeypatch, [FakeEP("broken", "x:y", loader=_broken), FakeEP("good", "g", loader=GoodPlugin)])
    pm = get_plugin_manager()
    infos = {i.name: i for i in pm.plugin_infos()}
    assert "ImportError" in infos["broken"].error and "frobnicate" in infos["broken"].error
    assert infos["good"].error is None
    assert "immunity_register_domains" in infos["good"].hooks
    assert "good-domain" in pm.registry("domains")


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("IMMUNITY_STRICT_PLUGINS", "1")
    _with_eps(monkeypatch, [FakeEP("broken", "x:y", loader=_broken)])
    with pytest.raises(PluginError, match="broken"):
        get_plugin_manager()


def test_disable_autoload(monkeypatch):
    _with_eps(monkeypatch, [FakeEP("good", "g", loader=GoodPlugin)])
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert "good" not in pm.infos
    # an allow-list still loads what it names
    monkeypatch.setenv("IMMUNITY_LOAD_PLUGINS", "good")
    assert "good" in get_plugin_manager().infos


def test_deny_and_allow_lists(monkeypatch):
    eps = [FakeEP("good", "g", loader=GoodPlugin), FakeEP("other", "o", dist="other", loader=lambda: object())]
    _with_eps(monkeypatch, eps)
    monkeypatch.setenv("IMMUNITY_DISABLE_PLUGINS", "good")
    pm = get_plugin_manager()
    assert "good" not in pm.infos and "other" in pm.infos
    monkeypatch.delenv("IMMUNITY_DISABLE_PLUGINS")
    monkeypatch.setenv("IMMUNITY_LOAD_PLUGINS", "other")
    pm = get_plugin_manager()
    assert "good" not in pm.infos and "other" in pm.infos


def test_trace_switch_logs_hook_calls(monkeypatch, caplog):
    _with_eps(monkeypatch, [])
    monkeypatch.setenv("IMMUNITY_TRACE_PLUGINS", "1")
    pm = get_plugin_manager()
    with caplog.at_level("INFO", logger="immunity.trace"):
        from immunity.config import Config

        pm.hook.immunity_configure(config=Config())
    assert any("immunity_configure" in r.getMessage() for r in caplog.records)


def test_entry_point_name_collision_names_both(monkeypatch):
    monkeypatch.delenv("IMMUNITY_STRICT_PLUGINS", raising=False)
    _with_eps(monkeypatch, [FakeEP("dup", "a", dist="dist-a", loader=GoodPlugin),
                            FakeEP("dup", "b", dist="dist-b", loader=lambda: object())])
    pm = get_plugin_manager()
    errors = [i.error for i in pm.plugin_infos() if i.error]
    assert errors and "dist-a" in errors[0] and "dist-b" in errors[0]


def test_registry_collision_names_both_plugins(monkeypatch):
    class Other(GoodPlugin):
        pass

    _with_eps(monkeypatch, [FakeEP("first", "f", loader=GoodPlugin), FakeEP("second", "s", dist="d2", loader=Other)])
    pm = get_plugin_manager()
    with pytest.raises(PluginCollisionError) as err:
        pm.registry("domains")
    assert "first" in str(err.value) and "second" in str(err.value)


def test_broken_registration_reported(monkeypatch):
    monkeypatch.delenv("IMMUNITY_STRICT_PLUGINS", raising=False)

    class Bad:
        @hookimpl
        def immunity_register_domains(self, register):
            raise RuntimeError("bad table")

    _with_eps(monkeypatch, [FakeEP("bad", "b", loader=Bad), FakeEP("good", "g", dist="g", loader=GoodPlugin)])
    pm = get_plugin_manager()
    assert "good-domain" in pm.registry("domains")
    assert "bad table" in pm.infos["bad"].error


def test_installed_members_are_discovered():
    eps = {ep.name for ep in metadata.entry_points(group="immunity")}
    pm = get_plugin_manager()
    assert eps <= set(pm.infos)
    assert not pm.failed(), [(i.name, i.error) for i in pm.failed()]


def test_optional_builtins_missing_are_skipped(monkeypatch):
    monkeypatch.setattr(plugins_mod, "OPTIONAL_BUILTINS", ("immunity.no_such_module",))
    pm = get_plugin_manager(load_entrypoints=False)
    assert "immunity.no_such_module" not in pm.infos
    importlib.invalidate_caches()
