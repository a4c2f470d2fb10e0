"""A private PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, 127.0.0.1 on a free port.

PostgreSQL refuses to run as root; when the tests run as root (CI), the cluster runs as the
``postgres`` system user (created by Debian's package) through ``runuser``. Missing binaries are
an error, never a skip: CI installs PostgreSQL in scripts/setup.sh.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid

from edgekit.broker import free_port


def find_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found: install it (apt-get install -y postgresql; scripts/setup.sh "
                           "does) — the PostgreSQL backend tests must not be skipped")
    return found


class PostgresCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="edgekit-pg-")
        self.data = os.path.join(self.dir, "data")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> None:
        proc = subprocess.run(self.as_user + list(cmd), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {proc.stderr[-2000:]}")

    def start(self) -> "PostgresCluster":
        self._run(find_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "edgekit", "--no-sync", "-E", "UTF8")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(find_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "pg.log"),
                  "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://edgekit@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database (one per test keeps tests independent); returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=edgekit dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(find_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
