"""Fixtures for cross-package tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Venv:
    """A virtual environment made by ``python -m venv``; ``bin`` is its scripts folder."""

    bin: Path

    def install(self, *paths: Path | str) -> None:
        """``pip install`` the given paths (plain pip, as a user would)."""
        subprocess.run([str(self.bin / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *[str(p) for p in paths]], check=True, timeout=600)

    def run(self, *args: str) -> str:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                              check=True).stdout


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
