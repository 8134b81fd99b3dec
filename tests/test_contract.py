"""Contract tests: every hook is tested and documented; every member is a proper plugin."""

from __future__ import annotations

import functools
import inspect
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from immunity import hookdocs, hookspecs

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = sorted(p.parent for kind in ("adapters", "domains", "plugins") for p in ROOT.glob(f"{kind}/*/pyproject.toml"))
HOOKS = hookdocs.hook_names()


@functools.cache
def _test_sources() -> str:
    files = [p for p in ROOT.glob("**/tests/**/*.py") if ".venv" not in p.parts and p.name != Path(__file__).name]
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    assert re.search(rf"\b{hook}\b", _test_sources()), f"no test mentions {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    func = getattr(hookspecs, hook)
    doc = inspect.getdoc(func) or ""
    assert doc, f"{hook} has no docstring"
    params = [p for p in inspect.signature(func).parameters]
    if not hook.startswith("immunity_register_"):
        for p in params:
            assert f":param {p}:" in doc, f"{hook} does not document its argument {p!r}"
        assert ":returns:" in doc


def test_hook_reference_is_generated_from_the_specs():
    committed = (ROOT / "docs" / "hooks.md").read_text(encoding="utf-8")
    assert committed == hookdocs.render(), "docs/hooks.md is stale: run python -m immunity.hookdocs > docs/hooks.md"


def test_there_are_members():
    kinds = {m.parent.name for m in MEMBERS}
    assert {"adapters", "domains", "plugins"} <= kinds


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_member_shape(member):
    meta = tomllib.loads((member / "pyproject.toml").read_text())
    short = member.name.replace("-", "_")
    package = f"immunity_{short}"
    assert (member / "src" / package / "__init__.py").exists(), f"package {package} missing in {member}"
    assert meta["project"]["name"] == f"immunity-{member.name}"
    eps = meta["project"]["entry-points"]["immunity"]
    assert eps == {short: package}, f"{member}: one entry point `{short} = \"{package}\"` in group immunity"
    assert (member / "README.md").read_text().strip().count("\n") > 5, f"{member}: README is too thin"
    assert list((member / "tests").glob("test_*.py")), f"{member}: no tests"
    assert "immunity" in meta["project"]["dependencies"][0]


@pytest.mark.parametrize("member", [m for m in MEMBERS if m.parent.name == "adapters"], ids=lambda p: p.name)
def test_adapter_framework_only_in_instruments_extra(member):
    meta = tomllib.loads((member / "pyproject.toml").read_text())
    deps = " ".join(meta["project"]["dependencies"])
    extra = meta["project"]["optional-dependencies"]["instruments"]
    assert extra, "the instruments extra must name the framework and its supported range"
    for req in extra:
        name = re.split(r"[<>=!~ \[]", req)[0]
        assert name not in deps, f"{name} must not be in dependencies"


def test_immunity_plugins_lists_every_member():
    out = subprocess.run([sys.executable, "-m", "immunity.cli", "plugins"], capture_output=True, text=True, check=True)
    rows = {r["distribution"]: r for r in json.loads(out.stdout)}
    for member in MEMBERS:
        dist = f"immunity-{member.name}"
        assert dist in rows, f"immunity plugins does not list {dist}"
        assert rows[dist]["error"] is None, rows[dist]["error"]


def test_committed_json_schemas_are_current():
    from immunity.models import json_schemas

    for name, schema in json_schemas().items():
        path = ROOT / "docs" / "schemas" / f"{name}.schema.json"
        assert json.loads(path.read_text()) == schema, f"{path} is stale: run immunity schema --out-dir docs/schemas"
