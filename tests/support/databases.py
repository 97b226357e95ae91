"""Real MariaDB and PostgreSQL servers in private temp dirs on loopback, for kernel tests and demos.

    with MariaDB() as db: db.client("SELECT 1")        # mariadb CLI over TCP
    with Postgres() as pg: pg.client("SELECT 1")       # psql over TCP
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {timeout}s: {_tail(log)}")


def _tail(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()[-2000:]
    except OSError:
        return ""


class MariaDB:
    """mariadbd with a fresh datadir; root may log in over TCP without a password."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="ecap-mariadb-")
        os.chmod(self.tmp, 0o755)
        self.port = free_port()
        self.proc = None

    def __enter__(self):
        data = os.path.join(self.tmp, "data")
        subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root", "--auth-root-authentication-method=normal",
                        "--skip-test-db", "--no-defaults"], check=True, capture_output=True, timeout=120)
        log = os.path.join(self.tmp, "error.log")
        self.proc = subprocess.Popen([
            "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", "--user=root",
            f"--socket={self.tmp}/mysqld.sock", f"--port={self.port}", "--bind-address=127.0.0.1",
            f"--pid-file={self.tmp}/mysqld.pid", f"--log-error={log}", "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M", "--performance-schema=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, self.proc, log)
        return self

    def client(self, sql: str, database: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(self.port), "-u", "root",
               "--skip-ssl", "--batch", "-e", sql]
        if database:
            cmd.append(database)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return found[-1]


class Postgres:
    """A PostgreSQL cluster run as the `postgres` user, trust auth on 127.0.0.1."""

    def __init__(self, ssl: bool = False):
        self.ssl = ssl
        self.tmp = tempfile.mkdtemp(prefix="ecap-pg-")
        shutil.chown(self.tmp, "postgres", "postgres")
        os.chmod(self.tmp, 0o700)
        self.port = free_port()
        self.proc = None

    def _as_postgres(self, argv, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], **kw)

    def __enter__(self):
        data = os.path.join(self.tmp, "data")
        self._as_postgres([_pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                          check=True, capture_output=True, timeout=120)
        log = os.path.join(self.tmp, "server.log")
        ssl_opts = ["-c", "ssl=off"]
        if self.ssl:
            cert, key = os.path.join(self.tmp, "server.crt"), os.path.join(self.tmp, "server.key")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                            "/CN=localhost", "-keyout", key, "-out", cert], check=True, capture_output=True)
            for f in (cert, key):
                shutil.chown(f, "postgres", "postgres")
                os.chmod(f, 0o600)
            ssl_opts = ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", _pg_bin("postgres"), "-D", data, "-p", str(self.port),
             "-k", self.tmp, "-c", "listen_addresses=127.0.0.1", *ssl_opts, "-c", "logging_collector=off"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, log)
        return self

    def client(self, sql: str, timeout: float = 30) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGSSLMODE="require" if self.ssl else "disable", PGCONNECT_TIMEOUT="10")
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-X", "-A", "-t",
                               "-c", sql], capture_output=True, text=True, timeout=timeout, env=env)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)   # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)
