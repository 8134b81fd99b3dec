"""Fixtures for cross-package tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Venv:
    """A virtual environment made by ``python -m venv``; ``bin`` is its scripts folder."""

    bin: Path

    def install(self, *paths: Path | str) -> None:
        """``pip install`` the given paths (plain pip, as a user would), each from a copy, so that
        no build artefact (``build/``, ``*.egg-info``) is left in the repository."""
        with tempfile.TemporaryDirectory(prefix="immunity-install-") as tmp:
            subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *[str(source_copy(Path(p), Path(tmp))) for p in paths]], check=True, timeout=600)

    def run(self, *args: str) -> str:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                              check=True).stdout


def source_copy(path: Path, into: Path) -> Path:
    """A copy of a project folder to build from (anything else is returned as it is)."""
    if not path.is_dir():
        return path
    dest = into / path.name
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", ".venv", "__pycache__"))
    return dest


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A new virtual environment with core installed by plain pip (its few dependencies come from
    the package index), shared by the tests of one session."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    venv = Venv(path / "bin")
    venv.install(ROOT / "core")
    return venv
