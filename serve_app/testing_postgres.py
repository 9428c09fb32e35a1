"""A throwaway, real Postgres for tests and benchmarks (no mocks).

Uses the Postgres 16 binaries that the ``pgserver`` wheel ships (a test extra),
so nothing but pip is needed on a fresh machine. Postgres refuses to run as
root, so as root the server runs as a dedicated system user. It listens on
127.0.0.1 at a fixed port for its whole life, so a stop and start (the "database
went away" tests) keeps every DSN valid::

    with PostgresServer() as pg:
        dsn = pg.dsn
        pg.stop(); pg.start()
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

SYSTEM_USER = "serveflow-pg"


def _bin_dir() -> Path:
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError("Postgres for tests needs the 'pgserver' package: pip install -e '.[test]'") from exc
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> dict[str, Any]:
    """subprocess kwargs that run Postgres as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True)
    return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}


class PostgresServer:
    """One Postgres cluster in a fresh temporary folder, database ``serveflow``, trust auth on 127.0.0.1.

    The folder sits directly in the system temp dir: the Postgres user must be able to reach it,
    and test folders (pytest's tmp_path) are private to root."""

    def __init__(self, *, port: int | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="serveflow-pg-"))
        self.data = self.root / "pgdata"
        self.port = port or _free_port()
        self._bin = _bin_dir()
        self._user = _as_user()
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/serveflow"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        out = subprocess.run([str(self._bin / tool), *args], capture_output=True, text=True, timeout=timeout, **self._user)
        if out.returncode != 0:
            raise subprocess.CalledProcessError(out.returncode, tool, out.stdout, f"{tool} failed: {out.stderr.strip()}")
        return out.stdout

    def _initdb(self) -> None:
        if self._user:
            os.chown(self.root, pwd.getpwnam(SYSTEM_USER).pw_uid, self._user["group"])
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "serveflow")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` drops every connection at once, like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.data), "status")
        except subprocess.CalledProcessError:
            return False
        return True

    def close(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()
