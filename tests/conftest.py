"""Fixtures for cross-package tests."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


#: What .ci/run runs (with the network) before the tests so that the offline installs below resolve
WARM_CACHE = ("uv venv -q /tmp/immunity-warm && uv pip install -q --python /tmp/immunity-warm "
              "./core ./examples/custom_domain ./examples/plugin_example")

ARTEFACTS = ("build", "dist", "*.egg-info", ".venv", "__pycache__")


def install_offline(python: Path, *paths: Path | str) -> None:
    """Install project folders into the environment of ``python`` with no package index: each is
    built from a copy (so no ``build/``, ``dist/`` or ``*.egg-info`` is left in the repository) and
    installed with ``uv pip install --offline``, which takes the dependencies and the build
    backend from uv's cache (filled by ``uv sync``, which CI and the README's setup run first)."""
    uv = shutil.which("uv")
    assert uv, "uv is needed to install without a package index"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "PIP_"))}
    env.update(UV_PYTHON_DOWNLOADS="never", UV_CACHE_DIR=str(uv_cache_dir()))
    before = _artefacts()
    with tempfile.TemporaryDirectory(prefix="immunity-install-") as tmp:
        res = subprocess.run([uv, "pip", "install", "--offline", "--quiet", "--python", str(python),
                              *[str(source_copy(Path(p), Path(tmp))) for p in paths]],
                             capture_output=True, text=True, env=env, timeout=600)
    if res.returncode != 0 and ("not found in the cache" in res.stderr or "downloaded from a registry" in res.stderr):
        pytest.fail("uv's cache lacks a dependency these offline installs need (`uv sync --locked` caches wheels "
                    "by the lock's URLs, not the index pages an install resolves from). Warm it once, with the "
                    f"network: `{WARM_CACHE}`\n{res.stderr}")
    assert res.returncode == 0, f"offline install failed:\n{res.stdout}\n{res.stderr}"
    assert _artefacts() == before, f"build artefacts left in the repository: {sorted(_artefacts() - before)}"


def uv_cache_dir() -> Path:
    """uv's package cache as the user has it: the workspace conftest points HOME at a temporary
    folder, so it is found from the account's real home (uv's own default) unless set."""
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache")
    return Path(base) / "uv"


def _artefacts() -> set[Path]:
    return {p for pattern in ("build", "dist", "*.egg-info") for top in ("core", "examples", "adapters", "domains",
                                                                         "plugins")
            for p in (ROOT / top).rglob(pattern) if ".venv" not in p.parts}


@dataclass
class Venv:
    """A virtual environment made by ``python -m venv``; ``bin`` is its scripts folder."""

    bin: Path

    def install(self, *paths: Path | str) -> None:
        """Install the given project folders, built from copies, with no package index
        (:func:`install_offline`)."""
        install_offline(self.bin / "python", *paths)

    def run(self, *args: str) -> str:
        return subprocess.run([str(self.bin / args[0]), *args[1:]], capture_output=True, text=True,
                              check=True).stdout


def source_copy(path: Path, into: Path) -> Path:
    """A copy of a project folder to build from (anything else is returned as it is)."""
    if not path.is_dir():
        return path
    dest = into / path.name
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns(*ARTEFACTS))
    return dest


@pytest.fixture(scope="session")
def offline_install() -> Any:
    """:func:`install_offline`: ``offline_install(python, *project_folders)``."""
    return install_offline


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A new virtual environment with core installed, offline (:func:`install_offline`), shared by
    the tests of one session."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    venv = Venv(path / "bin")
    venv.install(ROOT / "core")
    return venv
