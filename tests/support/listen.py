"""Start a server and wait until it accepts connections: the one readiness check of the tests.

The check connects once and closes: a server that serves a single connection (bssl-tool server
without -loop) would spend it on the check.
"""
from __future__ import annotations

import socket
import subprocess
import time


def wait_listening(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def start_server(cmd, port: int, timeout: float = 10.0, **popen) -> subprocess.Popen:
    """Popen(cmd) once it listens on 127.0.0.1:port; killed and an AssertionError otherwise."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, **popen)
    if not wait_listening(port, timeout):
        proc.kill()
        raise AssertionError(f"{cmd[0]} did not listen on {port} within {timeout:g} s")
    return proc
