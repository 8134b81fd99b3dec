"""Every member is packaged the same way: a LICENSE file, py.typed, classifiers, project URLs,
version bounds on immunity, and its import package checked by mypy; a top-level CHANGELOG."""

from __future__ import annotations

import re
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
    assert project["license"] == "MIT"
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Source", "Changelog", "Issues"} <= set(project["urls"])
    for pkg in _packages(member):
        assert (pkg / "py.typed").exists(), pkg
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
