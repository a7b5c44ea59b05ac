"""A real PostgreSQL server for the tests: Debian's ``postgresql`` package (``make test`` installs
it), a cluster made by ``initdb`` in a temporary folder, started by ``pg_ctl`` on a free
127.0.0.1 port and stopped when the test session ends. As root (CI here) the server runs as the
``postgres`` user, since PostgreSQL refuses to run as root. Each test gets a database of its own.
Skipped, saying why, where the package is missing."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.serving import free_port


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (``/usr/lib/postgresql/N/bin``), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """``postgresql://geoguide@127.0.0.1:PORT/postgres`` while the block runs (trust auth, local only)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql; make test does it as root)")
    folder = Path(tempfile.mkdtemp(prefix="geoguide-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        data, port = folder / "data", free_port()
        subprocess.run(_as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "geoguide",
                                        "-E", "UTF8"]), check=True, capture_output=True, cwd=folder)
        opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                        str(folder / "log"), "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, cwd=folder)
        try:
            yield f"postgresql://geoguide@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), capture_output=True, cwd=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A fresh, empty database on the server: its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name
