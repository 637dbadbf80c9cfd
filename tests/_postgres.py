"""A PostgreSQL server for the fleet tests: the one ``MAXSIM_FORGE_TEST_PG`` names (a
SQLAlchemy URL), else a fresh cluster started from Debian's binaries in a temporary folder,
on a free port of 127.0.0.1, stopped at the end.

Where no server can be had the tests are skipped, unless ``MAXSIM_FORGE_REQUIRE_PG=1``
(``.ci/run`` sets it), where they fail: CI must run them against a real server.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(why: str):
    if os.environ.get("MAXSIM_FORGE_REQUIRE_PG", "") not in ("", "0"):
        pytest.fail(f"PostgreSQL is required here (MAXSIM_FORGE_REQUIRE_PG) but {why}")
    pytest.skip(f"no PostgreSQL server: {why}")


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, commands run as the postgres user."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        _unavailable("running as root without runuser to start the server as user postgres")
    return [runuser, "-u", "postgres", "--", *cmd]


def start():
    """(url, stop) of a server for the tests."""
    url = os.environ.get("MAXSIM_FORGE_TEST_PG", "").strip()
    if url:
        return url, lambda: None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        _unavailable("initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    # A folder the server's user can reach (pytest's own are private to this user).
    folder = Path(tempfile.mkdtemp(prefix="maxsim-forge-pg-"))
    data = folder / "pgdata"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    port = _free_port()
    done = subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        _unavailable(f"initdb failed: {done.stderr[-500:]}")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} -c max_connections=60"
    done = subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-o", options, "-w", "-t", "60",
                                           "-l", str(data / "log"), "start"]),
                          capture_output=True, text=True, timeout=90)
    if done.returncode != 0:
        _unavailable(f"the server did not start: {done.stdout[-300:]} {done.stderr[-300:]}")

    def stop() -> None:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]), capture_output=True,
                       timeout=60)
        shutil.rmtree(folder, ignore_errors=True)

    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while True:  # accepting connections
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                stop()
                _unavailable("the server does not accept connections")
            time.sleep(0.2)
    return url, stop


def fresh_database(url: str, name: str) -> str:
    """A new, empty database on the server of ``url``; its URL."""
    import psycopg

    base = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.rsplit("/", 1)[0] + f"/{name}"
