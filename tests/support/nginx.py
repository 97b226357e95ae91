"""A throw-away, self-contained nginx TLS server for capture tests.

Usage::

    with NginxServer(workers=2, http2=True) as srv:
        r = curl(srv.url + "/", "-w", "%{http_code}")
        pids = srv.worker_pids()

Everything (certificate, key, config, logs, pid file, temp paths, document
root) lives in a private 0700 temp dir that is removed on exit; nothing under
/etc/nginx or /var/lib/nginx is read or written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

NGINX_BIN = "/usr/sbin/nginx"
ROOT_BODY = "hello from ecapture demo\n"
POST_BODY = "posted\n"
BIG_SIZE = 100_000
STATIC_FILES = {
    "hello.txt": "static hello\n",
    "small.bin": "0123456789abcdef" * 64,  # 1024 bytes
}


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=None)
def nginx_version(binary: str = NGINX_BIN) -> tuple[int, ...]:
    """Version of the nginx binary, e.g. (1, 22, 1). `nginx -v` prints to stderr."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    if not m:
        raise RuntimeError(f"cannot parse nginx version from {out.stderr!r}")
    return tuple(int(x) for x in m.groups())


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on `host` (bind 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (via /proc/<pid>/task/*/children, else a /proc scan)."""
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
        found_file = False
        for t in tasks:
            try:
                data = (t / "children").read_text()
            except FileNotFoundError:
                continue
            found_file = True
            kids.extend(int(x) for x in data.split())
        if found_file:
            return sorted(set(kids))
    except (FileNotFoundError, ProcessLookupError):
        return []
    # Fallback: scan /proc/*/stat for ppid == pid.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # comm may contain spaces/parens: fields after the last ')'
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 2 and int(rest[1]) == pid:
            kids.append(int(entry.name))
    return sorted(kids)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rfind(")") + 2 :].split()[0]
    return state not in ("Z", "X")


def curl(
    url: str,
    *args: str,
    http2: bool = False,
    timeout: float = 10,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``curl -sS -k --noproxy '*' [--http2|--http1.1] [args...] url``.

    `http2=True` adds ``--http2``; otherwise ``--http1.1`` is forced (curl would
    negotiate h2 by ALPN against an http2 server) unless `args` already contain
    an ``--http...`` flag.  Extra URLs may be passed in `args` (they are placed
    after the options; curl reuses the connection between them).  Returns the
    CompletedProcess with captured stdout/stderr (str unless text=False); it
    does not raise on a non-zero exit status.
    """
    cmd = ["curl", "-sS", "-k", "--noproxy", "*", "--max-time", str(timeout)]
    if http2:
        cmd.append("--http2")
    elif not any(str(a).startswith("--http") for a in args):
        cmd.append("--http1.1")
    cmd.extend(str(a) for a in args)
    cmd.append(url)
    return subprocess.run(cmd, capture_output=True, text=text, timeout=timeout + 10)


# --------------------------------------------------------------------------- #
# the server
# --------------------------------------------------------------------------- #
class NginxServer:
    """Standalone nginx (master + `workers` workers) serving HTTPS on 127.0.0.1.

    Locations:
      /          -> 200 "hello from ecapture demo\\n"          (ROOT_BODY)
      /echo      -> 200 "<method> <uri> <protocol>\\n"
      = /post    -> 200 "posted\\n" (any method; request body is read+discarded)
      /big       -> static file of exactly 100000 bytes          (BIG_SIZE)
      /static/x  -> files from <tmp>/www/static (hello.txt, small.bin)
    """

    def __init__(
        self,
        workers: int = 1,
        http2: bool = False,
        keepalive_requests: int = 100000,
        access_log: bool = False,
        port: int | None = None,
        key_type: str = "rsa",
        startup_timeout: float = 10.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if key_type not in ("rsa", "ec"):
            raise ValueError("key_type must be 'rsa' or 'ec'")
        self.workers = workers
        self.http2 = http2
        self.keepalive_requests = keepalive_requests
        self.access_log = access_log
        self.key_type = key_type
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port: int = port or 0
        self._fixed_port = port is not None
        self.tmpdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._known_workers: set[int] = set()
        self._stderr = None

    # ---- paths -------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def cert_path(self) -> Path:
        return self._tmp / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self._tmp / "key.pem"

    @property
    def conf_path(self) -> Path:
        return self._tmp / "nginx.conf"

    @property
    def error_log_path(self) -> Path:
        return self._tmp / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self._tmp / "access.log"

    @property
    def www_root(self) -> Path:
        return self._tmp / "www"

    @property
    def master_pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("nginx not started")
        return self.proc.pid

    @property
    def _tmp(self) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("NginxServer not started (use it as a context manager)")
        return self.tmpdir

    # ---- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "NginxServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="ecap-nginx-"))
        try:
            os.chmod(self.tmpdir, 0o700)
            self._make_cert()
            self._make_docroot()
            # A port picked by free_port() can be stolen before nginx binds it
            # (parallel tests); retry with a fresh one in that case.
            for attempt in range(5):
                if not self._fixed_port:
                    self.port = free_port(self.host)
                self._launch()
                try:
                    self._wait_ready()
                    break
                except RuntimeError as e:
                    if (self._fixed_port or attempt == 4
                            or "Address already in use" not in str(e)):
                        raise
                    self.proc.wait(timeout=5)
                    self.proc = None
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> None:
        self.conf_path.write_text(self.render_conf())
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        self._stderr = open(self._tmp / "stderr.log", "wb")
        self.error_log_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [NGINX_BIN, "-c", str(self.conf_path), "-p", str(self._tmp) + "/",
             "-e", str(self.error_log_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self._tmp,
            start_new_session=True,
        )

    def restart(self) -> None:
        """Stop nginx (master and workers, gracefully) and start the same binary again with the same
        config, port, certificate and files: the new master and workers have new pids."""
        if self.proc is None:
            raise RuntimeError("nginx not started")
        self._stop_processes()
        self.proc = None
        self._known_workers = set()
        self._launch()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stop_processes()
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
            self._stderr = None
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _stop_processes(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                self._known_workers.update(child_pids(proc.pid))
                try:
                    proc.send_signal(signal.SIGQUIT)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._known_workers.update(child_pids(proc.pid))
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.kill()
                    proc.wait(timeout=5)
            # Workers die with a graceful master; make sure after a hard kill too.
            deadline = time.monotonic() + 2
            for w in self._known_workers:
                while pid_alive(w) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if pid_alive(w):
                    try:
                        os.kill(w, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # ---- introspection -----------------------------------------------------
    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (children of the master)."""
        pids = child_pids(self.master_pid)
        self._known_workers.update(pids)
        return pids

    def error_log(self) -> str:
        try:
            return self.error_log_path.read_text(errors="replace")
        except (FileNotFoundError, RuntimeError):
            return ""

    # ---- setup pieces ------------------------------------------------------
    def _make_cert(self) -> None:
        if self.key_type == "rsa":
            newkey = ["-newkey", "rsa:2048"]
        else:
            newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        cmd = [
            "openssl", "req", "-x509", *newkey, "-nodes", "-days", "2",
            "-keyout", str(self.key_path), "-out", str(self.cert_path),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl req failed: {r.stderr}")
        os.chmod(self.key_path, 0o600)

    def _make_docroot(self) -> None:
        static = self.www_root / "static"
        static.mkdir(parents=True)
        pattern = b"ecapture-demo-big-body-0123456789abcdefghijklmnopqrstuvwxyz\n"
        big = (pattern * (BIG_SIZE // len(pattern) + 1))[: BIG_SIZE - 1] + b"\n"
        assert len(big) == BIG_SIZE
        (self.www_root / "big").write_bytes(big)
        for name, content in STATIC_FILES.items():
            (static / name).write_text(content)

    def render_conf(self) -> str:
        t = self._tmp
        # Workers default to user "nobody", which cannot traverse our 0700 dir.
        user = "user root root;" if os.geteuid() == 0 else ""
        if self.http2:
            if nginx_version() >= (1, 25, 1):
                listen = f"listen {self.host}:{self.port} ssl;\n        http2 on;"
            else:  # Debian 12 ships 1.22: http2 is a listen parameter
                listen = f"listen {self.host}:{self.port} ssl http2;"
        else:
            listen = f"listen {self.host}:{self.port} ssl;"
        access = f"access_log {t}/access.log;" if self.access_log else "access_log off;"
        return f"""\
# generated by tests/support/nginx.py
{user}
daemon off;
master_process on;
worker_processes {self.workers};
pid {t}/nginx.pid;
error_log {t}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    types {{
        text/html html htm;
        text/plain txt;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    {access}
    sendfile off;
    keepalive_timeout 65;
    keepalive_requests {self.keepalive_requests};
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;

    server {{
        {listen}
        server_name localhost;
        ssl_certificate {t}/cert.pem;
        ssl_certificate_key {t}/key.pem;
        root {t}/www;

        location / {{
            default_type text/plain;
            return 200 "{ROOT_BODY.rstrip()}\\n";
        }}
        location /echo {{
            default_type text/plain;
            return 200 "$request_method $request_uri $server_protocol\\n";
        }}
        location = /post {{
            client_max_body_size 10m;
            default_type text/plain;
            return 200 "{POST_BODY.rstrip()}\\n";
        }}
        location = /big {{
            default_type application/octet-stream;
        }}
        location /static/ {{
        }}
    }}
}}
"""

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        last_err: Exception | None = None
        handshake_ok = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if not handshake_ok:
                try:
                    with socket.create_connection((self.host, self.port), timeout=1) as s:
                        with ctx.wrap_socket(s, server_hostname="localhost"):
                            handshake_ok = True
                except OSError as e:  # includes ssl.SSLError
                    last_err = e
            if handshake_ok and len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.05)
        self._startup_failed(last_err)

    def _startup_failed(self, last_err: Exception | None) -> None:
        rc = self.proc.poll() if self.proc else None
        try:
            stderr = (self._tmp / "stderr.log").read_text(errors="replace")
        except Exception:
            stderr = ""
        raise RuntimeError(
            f"nginx did not become ready on {self.url} "
            f"(exit status {rc}, last error {last_err!r})\n"
            f"--- stderr ---\n{stderr}\n--- error.log ---\n{self.error_log()}"
        )


@contextlib.contextmanager
def curl_loop(url_of, limit: int = 2000):
    """curl `url_of(i)` for i = 0, 1, ... (one process each) until the block ends or `limit` is
    reached; yields the list of the i whose request completed."""
    stop = threading.Event()
    sent: list = []

    def loop():
        i = 0
        while not stop.is_set() and i < limit:
            curl(url_of(i), timeout=5)
            sent.append(i)
            i += 1

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield sent
    finally:
        stop.set()
        t.join(timeout=20)


__all__ = [
    "NginxServer", "curl", "curl_loop", "free_port", "child_pids", "pid_alive", "nginx_version",
    "ROOT_BODY", "POST_BODY", "BIG_SIZE", "STATIC_FILES",
]
