"""The control socket of a running `ecapture apply`: `status` and `plan` ask it what runs.

A unix socket in a root-only directory (0700, socket 0600). One JSON request line in,
one JSON answer out.
"""
from __future__ import annotations

import json
import os
import socket
import threading

from orchestrator import threadname, workdir

DEFAULT_PATH = "/run/ecapture/apply.sock"
MAX_REQUEST = 4096      # bytes of one request line


def socket_path() -> str:
    return workdir.absolute(os.environ.get("ECAPTURE_SOCKET", DEFAULT_PATH))


class ControlServer:
    def __init__(self, handlers: dict, path: str | None = None):
        self.path = workdir.absolute(path) if path else socket_path()
        self.handlers = handlers
        self._sock = None

    def start(self) -> str | None:
        """Listen; returns a reason when it cannot (another apply owns the socket)."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        if os.path.exists(self.path):
            if request("ping", self.path, timeout=1.0) is not None:
                return f"another ecapture apply answers on {self.path}; status will show that one"
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock
        threading.Thread(target=self._serve, name="ecapture-control", daemon=True).start()
        return None

    def _serve(self) -> None:
        threadname.name_this_thread()
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return           # closed
            with conn:
                try:
                    conn.settimeout(5)
                    conn.sendall(json.dumps(self.answer(conn.makefile("rb").readline(MAX_REQUEST)),
                                            default=str).encode() + b"\n")
                except OSError:
                    continue

    def answer(self, line: bytes) -> dict:
        """The answer to one request line. Never raises: a bad request or a failing handler is one
        error answer, and the server goes on serving."""
        try:
            request = json.loads(line or b"{}")
        except ValueError:
            return {"ok": False, "error": "not JSON"}
        cmd = request.get("cmd") if isinstance(request, dict) else None
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            return {"ok": True, "result": handler()}
        except Exception as exc:    # a bug in one answer must not end the server
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass


def request(cmd: str, path: str | None = None, timeout: float = 5.0):
    """The answer of the running apply, or None when none answers."""
    path = path or socket_path()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            data = s.makefile("rb").readline()
    except OSError:
        return None
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer.get("result") if answer.get("ok") else None
