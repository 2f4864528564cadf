"""A private PostgreSQL server for the tests and the bench: ``initdb`` into a temp dir, ``postgres`` on a free
port of 127.0.0.1, stopped by its pid.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (Debian's packages make
it); as anyone else, as that user. Where no server can be started (no binaries, no such user), ``start``
raises ``PgUnavailable`` saying why, so a caller can skip with the reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 60.0


class PgUnavailable(Exception):
    """No PostgreSQL server can be started on this machine (the message says why)."""


def _bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent  # Debian links only some of them into /usr/local/bin
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if not versions:
        raise PgUnavailable("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql")
    return versions[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    """One running server; ``dsn(db)`` to connect, ``stop()`` to end it and remove its files."""

    root: Path
    port: int
    user: str
    proc: subprocess.Popen

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if that takes over 10 s; then remove the data dir."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start(parent: Path | None = None, hosts: tuple[str, ...] = (), trust: tuple[str, ...] = ()) -> PgServer:
    """initdb and start a server in a new temp dir under ``parent`` (default: the system's temp dir), on
    127.0.0.1 and the addresses ``hosts``, trusting connections from 127.0.0.1 and the networks ``trust``."""
    bindir = _bindir()
    run_as: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError:
            raise PgUnavailable("running as root and there is no 'postgres' user to run the server as") from None
    root = Path(tempfile.mkdtemp(prefix="tuici-pg-", dir=parent))
    root.chmod(0o755)
    data, sockets = root / "data", root / "sock"
    for d in (data, sockets):
        d.mkdir(mode=0o700)
        if run_as:
            os.chown(d, run_as.pw_uid, run_as.pw_gid)
    user = run_as.pw_name if run_as else pwd.getpwuid(os.geteuid()).pw_name
    spawn = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []} if run_as else {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(root)}
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
        capture_output=True, env=env, cwd=root, check=False, **spawn,  # type: ignore[arg-type]
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PgUnavailable(f"initdb failed: {init.stderr.decode(errors='replace').strip()[-500:]}")
    if trust:
        with open(data / "pg_hba.conf", "a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trust)
    port = _free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", ",".join(("127.0.0.1", *hosts)),
         "-k", str(sockets),
         "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        **spawn,  # type: ignore[arg-type]
    )
    log.close()
    server = PgServer(root=root, port=port, user=user, proc=proc)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            text = (root / "server.log").read_text(errors="replace")[-800:]
            server.stop()
            raise PgUnavailable(f"postgres exited with {proc.returncode}: {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            ready = subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                   capture_output=True, check=False).returncode == 0
        except OSError:
            ready = False
        if ready:
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise PgUnavailable(f"postgres did not accept connections within {START_TIMEOUT:g} s")
        time.sleep(0.05)
