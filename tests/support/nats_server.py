"""A throw-away NATS server with JetStream (Debian's `nats-server`) for the nats sink's tests,
and a reader that takes a stream's messages back.

Usage::

    with NatsServer() as srv:            # 127.0.0.1, a free port, JetStream in a temp store
        ...                              # srv.url
        srv.stop(); srv.start()          # a restart keeps the store (and the stream)
        msgs = read_stream(srv.url, "ECAPTURE")

The store lives in a private temp dir removed on exit.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import nats

from tests.support.listen import start_server
from tests.support.nginx import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    def __init__(self, token: str | None = None, user: str | None = None, password: str | None = None,
                 tls: tuple[str, str] | None = None):
        """`tls`: (certificate file, key file): clients must speak TLS."""
        self.port = free_port()
        self.token, self.user, self.password = token, user, password
        self.tls = tls
        self._tmp = Path(tempfile.mkdtemp(prefix="ecapture-nats-"))
        self.store = self._tmp / "store"
        self.log = self._tmp / "nats.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
               "-l", str(self.log)]
        if self.token:
            cmd += ["--auth", self.token]
        if self.user:
            cmd += ["--user", self.user, "--pass", self.password]
        if self.tls:
            cmd += ["--tls", "--tlscert", self.tls[0], "--tlskey", self.tls[1]]
        self.proc = start_server(cmd, self.port, timeout=15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> "NatsServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)


def read_stream(url: str, stream: str, timeout: float = 10.0, **auth) -> list:
    """Every message of `stream` as (Nats-Msg-Id, payload bytes), in stream order, read back with
    an ephemeral ordered JetStream consumer."""
    return asyncio.run(_read_stream(url, stream, timeout, auth))


async def _read_stream(url: str, stream: str, timeout: float, auth: dict) -> list:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, **auth)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        total = info.state.messages
        subject = info.config.subjects[0] if info.config.subjects else ">"
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        out = []
        while len(out) < total:
            msg = await sub.next_msg(timeout=timeout)
            out.append(((msg.headers or {}).get("Nats-Msg-Id"), msg.data))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()
