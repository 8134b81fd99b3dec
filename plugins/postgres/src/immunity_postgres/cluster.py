"""A throwaway PostgreSQL cluster on the local server binaries (Debian's ``postgresql`` package),
for tests, benchmarks and a docker-free local start::

    with TempCluster() as pg:
        store = PostgresStore(pg.dsn)

``initdb`` into a temporary folder, ``pg_ctl start`` on 127.0.0.1 with a free port and a unix socket
in the same folder, and ``pg_ctl stop`` + removal at the end. PostgreSQL refuses to run as root, so
when this process is root the cluster runs as the ``postgres`` system user (through ``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

__all__ = ["ClusterUnavailable", "TempCluster", "find_pg_bin"]


class ClusterUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (or cannot run here)."""


def find_pg_bin() -> str | None:
    """The folder holding ``pg_ctl`` and ``initdb``: ``$PG_BIN``, the ``PATH``, or the newest
    ``/usr/lib/postgresql/*/bin`` (Debian puts them there, off the ``PATH``)."""
    env = os.environ.get("PG_BIN")
    if env and os.path.exists(os.path.join(env, "pg_ctl")):
        return env
    found = shutil.which("pg_ctl")
    if found:
        folder = os.path.dirname(os.path.realpath(found))
        if os.path.exists(os.path.join(folder, "initdb")):
            return folder

    def version(p: str) -> float:
        try:
            return float(p.split("/")[-2])
        except ValueError:
            return 0.0

    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.path.exists(os.path.join(path, "pg_ctl")):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempCluster:
    """A PostgreSQL cluster in a temporary folder; ``dsn`` connects to its ``immunity`` database."""

    def __init__(self, *, port: int | None = None, database: str = "immunity"):
        self.bin = find_pg_bin()
        if self.bin is None:
            raise ClusterUnavailable("PostgreSQL server binaries (pg_ctl, initdb) not found: install Debian's "
                                     "`postgresql` package or set PG_BIN")
        self.port = port or _free_port()
        self.database = database
        self.root = tempfile.mkdtemp(prefix="immunity-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.user = "postgres" if os.geteuid() == 0 else None
        self.running = False

    # ------------------------------------------------------------------ commands
    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bin or "", args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # run from the cluster's folder: the postgres user may not be allowed into the caller's
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise ClusterUnavailable(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
                                     + self._log_tail())
        return proc

    def _log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return "\n" + "".join(fh.readlines()[-10:])
        except OSError:
            return ""

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user or os.environ.get('USER') or 'postgres'}@127.0.0.1:{self.port}/{self.database}"

    def init(self) -> TempCluster:
        if self.user:
            shutil.chown(self.root, user=self.user)
            os.chmod(self.root, 0o700)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", self.user or os.environ.get("USER") or "postgres",
                  "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> TempCluster:
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60", "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)
            self.running = False

    def create_database(self, name: str | None = None) -> str:
        """Create a database (default: :attr:`database`) and return its DSN."""
        import psycopg
        from psycopg import sql

        name = name or self.database
        base = self.dsn.rsplit("/", 1)[0]
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        return base + "/" + name

    def __enter__(self) -> TempCluster:
        try:
            self.init().start()
            self.create_database()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __exit__(self, *exc: Any) -> None:
        self.close()
