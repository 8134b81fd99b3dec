"""Every member is packaged the same way: a LICENSE file, py.typed, classifiers, project URLs,
version bounds on immunity, and its import package checked by mypy; a top-level CHANGELOG."""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = [ROOT / "core"] + sorted(p.parent for p in ROOT.glob("*/*/pyproject.toml")
                                   if p.parts[-3] in ("adapters", "domains", "plugins"))


def _packages(member: Path) -> list[Path]:
    return [p for p in (member / "src").iterdir() if p.is_dir() and not p.name.endswith(".egg-info")
            and (p / "__init__.py").exists()]


@pytest.mark.parametrize("member", MEMBERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_member_metadata(member: Path) -> None:
    project = tomllib.loads((member / "pyproject.toml").read_text())["project"]
    assert (member / "LICENSE").read_text().startswith("MIT License")
    # the code is MIT; a member that ships third-party data adds that data's licence (immunity-static)
    assert project["license"] == "MIT" or project["license"].startswith("MIT AND "), project["license"]
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Source", "Changelog", "Issues"} <= set(project["urls"])
    for pkg in _packages(member):
        assert (pkg / "py.typed").exists(), pkg
    # one repository for all: core's Homepage; a member's own links point at its own folder
    base = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())["project"]["urls"]["Homepage"]
    folder = str(member.relative_to(ROOT))
    for name, url in project["urls"].items():
        assert url.startswith(base + "/") or url == base, f"{member.name}: {name} = {url} is not under {base}"
    assert project["urls"]["Changelog"] == f"{base}/blob/main/CHANGELOG.md"
    assert project["urls"]["Issues"] == f"{base}/issues"
    if member.name != "core":
        assert project["urls"]["Source"] == f"{base}/tree/main/{folder}"
    docs = project["urls"].get("Documentation", "")
    assert docs.endswith("README.md") and (ROOT / docs.split("/blob/main/", 1)[1]).exists(), docs
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in project["classifiers"])
    assert any(c.startswith("Development Status ::") for c in project["classifiers"])
    if member.name != "core":
        core = [d for d in project["dependencies"] if re.match(r"immunity\b(?![-_])", d)]
        assert core and "<" in core[0] and ">=" in core[0], f"{member.name}: bound immunity, got {core}"


def test_mypy_checks_every_member_and_the_changelog_exists() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    paths = set(mypy["mypy_path"].split(","))
    for member in MEMBERS:
        assert str((member / "src").relative_to(ROOT)) in paths
        for pkg in _packages(member):
            assert pkg.name in mypy["packages"], pkg.name
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


ADAPTER_PACKAGES = ("immunity_langgraph", "immunity_crewai", "immunity_llamaindex", "immunity_openai_agents")


def test_core_imports_no_adapter() -> None:
    """Core's wheel depends on no adapter: nothing under core/src names an adapter package (the
    benchmark drivers are registered by the adapters through ``immunity_register_bench_drivers``)."""
    pattern = re.compile("|".join(ADAPTER_PACKAGES))
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sorted((ROOT / "core" / "src").rglob("*"))
             if p.is_file() and p.suffix in (".py", ".toml", ".json", ".txt", ".md", ".cfg")
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if pattern.search(line)]
    assert not found, "core names an adapter package:\n" + "\n".join(found)


def test_every_adapter_registers_its_bench_driver() -> None:
    """Each installed adapter's plugin registers a driver through the hook, and core finds them
    only through the plugin manager."""
    from immunity.bench.drivers import Driver, bench_drivers
    from immunity.plugins import get_plugin_manager

    pm = get_plugin_manager()
    drivers = bench_drivers(pm)
    expected = {"langgraph": "immunity_langgraph", "crewai": "immunity_crewai", "llamaindex": "immunity_llamaindex",
                "openai_agents": "immunity_openai_agents"}
    for name, package in expected.items():
        if importlib.util.find_spec(package) is None:
            continue  # that adapter is not installed in this environment
        assert name in drivers, f"{package} registers no bench driver"
        driver = drivers[name]
        assert issubclass(driver, Driver) and driver.name == name
        assert driver.__module__ == f"{package}.bench"
        assert pm.registry_owner("bench_drivers", name) == pm.get_name(sys.modules[package])
