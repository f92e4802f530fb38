"""A PgBouncer in transaction pooling mode in front of the test session's server.

Debian's ``pgbouncer`` binary, started on a free local port with a generated ini and
userlist. Every database of the server is reachable through it under its own name (the
``*`` fallback entry), so a test's fresh database is too. The pool is small (4 server
connections per database and user), so that session state left by one client is soon
seen by another: a test that passes here does not depend on a session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

POOL_SIZE = 4
# A database alias with room for two server connections, for the control test that shows
# what a server-side prepared statement does behind this pooler.
CONTROL_DB = "aq_control"


def find_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _unprivileged_user() -> str:
    """The embedded server's own user (it can reach the server's socket), else nobody."""
    import pwd

    try:
        return pwd.getpwnam("embedded_postgres").pw_name
    except KeyError:
        return "nobody"


class PgBouncer:
    """One pgbouncer process; ``dsn_for(server_dsn)`` is the same database through it."""

    def __init__(self, binary: str, server_dsn: str) -> None:
        params = conninfo_to_dict(server_dsn)
        self.user = str(params.get("user") or os.environ.get("PGUSER") or "postgres")
        self.password = str(params.get("password") or "")
        host = str(params.get("host") or "127.0.0.1")
        port = str(params.get("port") or "5432")
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="angela-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        backend = f"host={host} port={port}"
        (self.dir / "userlist.txt").write_text(f"{_quote(self.user)} {_quote(self.password)}\n")
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{CONTROL_DB} = {backend} dbname=postgres pool_size=2\n"
            f"* = {backend}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"logfile = {self.log}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 500\n"
            # psycopg sends these at start-up; they are harmless in transaction mode.
            "ignore_startup_parameters = extra_float_digits,options\n"
            "server_check_delay = 0\n"
        )
        args = [binary, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            os.chmod(self.dir, 0o777)
            for f in self.dir.iterdir():
                os.chmod(f, 0o666)
            args[1:1] = ["-u", _unprivileged_user()]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._wait_ready()

    def dsn_for(self, dsn: str) -> str:
        """``dsn``'s database, through the pooler."""
        return make_conninfo(dsn, host="127.0.0.1", hostaddr="", port=str(self.port))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        probe = make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=self.user, dbname=CONTROL_DB
        )
        if self.password:
            probe = make_conninfo(probe, password=self.password)
        while True:
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise RuntimeError(f"pgbouncer exited at start: {err.strip()} {self.logtail()}")
            try:
                with psycopg.connect(probe, connect_timeout=2, prepare_threshold=None) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    why = f"pgbouncer did not come up: {str(exc).strip()} {self.logtail()}"
                    self.stop()
                    raise RuntimeError(why) from None
                time.sleep(0.1)

    def logtail(self) -> str:
        try:
            return " | ".join(self.log.read_text().splitlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: pgbouncer closes at once ("immediate shutdown")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)
