"""The `nats` sink: records published to a NATS JetStream stream on an existing broker.

Owns:

- the hand-off: `write` runs on the dispatcher thread and only serialises (`Record.to_json`, the
  exact JSONL line, which is each message's payload) and appends to a bounded in-memory buffer
  (`buffer_records` and `buffer_bytes`). A batch that does not fit whole is refused whole:
  `write` raises ENOBUFS and the dispatcher counts its records as lost at stage `sink.nats`
  (status, summary, `loss` records to the profile's other sinks). An unreachable server never
  slows capture: nothing in `write` waits for the network;
- the connection: the `nats-py` client on an asyncio loop in a thread of its own, connecting
  again with a capped exponential backoff whenever the server goes away. The buffer is emptied
  in order; a record leaves it only when JetStream acknowledged it;
- exactly once: each record carries a `Nats-Msg-Id` header made of this sink's run id and the
  record's position, so a record sent again (its acknowledgement was lost, the server restarted)
  is dropped by JetStream as a duplicate. That holds within the stream's duplicate window: a
  stream this sink creates keeps the JetStream default, two minutes; after a longer outage a
  record the server stored just before it went away may arrive twice;
- the stream: `stream` is created (file storage, the subject) when missing, else checked to
  take the subject; each message names the stream it must land in (`Nats-Expected-Stream`);
- secrets: the token or password is read from a file (0600, no link followed, folders checked
  as for the files ecapture writes), never from the URL or the profile, and never printed;
- shutdown: `close` returns at once; the loop thread (not a daemon: the interpreter waits for it
  on exit) keeps sending what is buffered for at most `flush_timeout` seconds, then says on
  stderr how many records, per target, were lost.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import logging
import os
import re
import secrets
import stat
import threading
import time
import urllib.parse

import msgspec
import nats
import nats.errors
import nats.js.api
import nats.js.errors

from orchestrator import safefile, threadname

BUFFER_RECORDS = 100_000          # records waiting for the server (sent or not, not yet acknowledged)
BUFFER_BYTES = 64 << 20           # their payloads
FLUSH_TIMEOUT_S = 5.0             # after close: how long what is buffered may take to go out
CONNECT_TIMEOUT_S = 2
ACK_TIMEOUT_S = 5.0               # a chunk not acknowledged by then is sent again (same Msg-Ids)
BACKOFF_S = (0.1, 2.0)            # between connection attempts: doubling from the first to the second
CHUNK_RECORDS = 1000              # published before waiting for their acknowledgements
CHUNK_BYTES = 4 << 20
SECRET_FILE_MAX = 4096
SCHEMES = ("nats", "tls")
SUBJECT_RE = re.compile(r"[^.\s*>]+(\.[^.\s*>]+)*")
STREAM_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")


# asyncio logs this for every TLS connection nats-py opens (its protocol's eof_received returns True):
# noise on the user's stderr, nothing to act on.
logging.getLogger("asyncio").addFilter(
    lambda rec: not str(rec.msg).startswith("returning true from eof_received() has no effect"))


class StreamMismatch(Exception):
    """The named stream exists but does not take the subject: fixed by whoever runs the server."""


# ---------------------------------------------------------------- checks

def parse_servers(url: str) -> list[str]:
    """`nats://host:port` or `tls://host:port`, several comma-separated, without credentials."""
    servers = [u.strip() for u in str(url).split(",") if u.strip()]
    if not servers:
        raise ValueError("nats url is empty: e.g. nats://127.0.0.1:4222")
    for server in servers:
        parts = urllib.parse.urlsplit(server)
        if parts.username is not None or parts.password is not None:
            # Never repeat the URL: it holds a secret.
            raise ValueError("the nats url holds credentials: give them in token_file or user + password_file")
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"nats url {server!r}: expected nats://HOST:PORT or tls://HOST:PORT")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"nats url {server!r}: the port must be a number from 0 to 65535") from None
    return servers


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with `*` and `>` wildcards) takes `subject`."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def read_secret(path: str, option: str) -> str:
    """The text of a secret file: absolute path, every folder on the way safe (`safefile`), a
    regular file owned by root or us, mode 0600 or narrower, no link followed, at most 4 KiB."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"{option} {path!r}: give an absolute path")
    for problem in safefile.problems(path):
        raise safefile.UnsafePathError(f"{option}: {problem}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"{option} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise safefile.UnsafePathError(f"{option} {path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()) or stat.S_IMODE(st.st_mode) & 0o077:
            raise safefile.UnsafePathError(f"{option} {path}: a secret must be owned by root and mode 0600 "
                                           f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > SECRET_FILE_MAX:
            raise ValueError(f"{option} {path} is {st.st_size} bytes: not a secret file")
        text = os.read(fd, SECRET_FILE_MAX).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{option} {path}: the file must hold one secret, without spaces")
    return text


def _target_of(record) -> tuple:
    if record.event is not None:
        source = record.event.source
        return source.profile, source.target.name
    return record.fields.get("profile", ""), record.fields.get("target", "*")


def _say(line: str) -> None:
    """A line on the user's stderr: fd 2 points elsewhere while bcc compiles (bpf.owner), so
    only outside the owner lock."""
    from orchestrator.bpf import owner
    owner.run(os.write, 2, f"ecapture: {line}\n".encode())


# ---------------------------------------------------------------- the sink

class NatsSink:
    kind = "nats"

    def __init__(self, url: str, subject: str, stream: str, *, buffer_records: int = BUFFER_RECORDS,
                 buffer_bytes: int = BUFFER_BYTES, flush_timeout: float = FLUSH_TIMEOUT_S,
                 token_file: str | None = None, user: str | None = None, password_file: str | None = None,
                 warn=None):
        self.servers = parse_servers(url)
        if not isinstance(subject, str) or not SUBJECT_RE.fullmatch(subject):
            raise ValueError(f"nats subject {subject!r}: tokens separated by dots, no spaces and no wildcards")
        if not isinstance(stream, str) or not STREAM_RE.fullmatch(stream):
            raise ValueError(f"nats stream {stream!r}: 1 to 255 of A-Z a-z 0-9 _ -")
        if token_file and (user or password_file):
            raise ValueError("nats: give token_file, or user and password_file, not both")
        if bool(user) != bool(password_file):
            raise ValueError("nats: user and password_file go together")
        self.subject, self.stream = subject, stream
        self.path = f"{','.join(self.servers)} subject {subject}"     # how the dispatcher names this sink
        self.buffer_records, self.buffer_bytes = buffer_records, buffer_bytes
        self.flush_timeout = flush_timeout
        self._auth = {}
        if token_file:
            self._auth["token"] = read_secret(token_file, "token_file")
        if user:
            self._auth["user"] = user
            self._auth["password"] = read_secret(password_file, "password_file")
        self._warn = warn or _say
        self._encode = msgspec.json.Encoder().encode
        self._run_id = secrets.token_hex(8)
        self._seq = 0
        self._lock = threading.Lock()
        self._buffer: collections.deque = collections.deque()     # (position, payload, (profile, target))
        self._bytes = 0
        self._armed = False           # a wake-up is on its way to the loop
        self._closed = False
        self._closing = False         # on the loop: sending what is left, then stopping
        self._problem = ""            # why the server is not taking records, for ENOBUFS
        self._down = False            # an outage was said; said again when it ends
        self.sent = 0                 # records acknowledged by JetStream
        self.lost_at_close: collections.Counter = collections.Counter()   # (profile, target) → records
        self._loop = asyncio.new_event_loop()
        self._kick: asyncio.Event | None = None
        self._main_task: asyncio.Task | None = None
        started = threading.Event()
        # Not a daemon: at exit the interpreter waits for the flush, which close() bounds.
        self._thread = threading.Thread(target=self._run, args=(started,), name=f"ecapture-nats-{stream}")
        self._thread.start()
        started.wait(5)

    # ---- dispatcher thread
    def write(self, records) -> None:
        encode = self._encode
        items = [(r.to_json(encode), _target_of(r)) for r in records]
        if not items:
            return
        size = sum(len(payload) for payload, _ in items)
        with self._lock:
            if self._closed:
                raise OSError(errno.EPIPE, "the nats sink is closed")
            buffered = len(self._buffer)
            # One batch may exceed the limits alone: a batch larger than the buffer would never pass.
            if buffered and (buffered + len(items) > self.buffer_records or self._bytes + size > self.buffer_bytes):
                why = f": {self._problem}" if self._problem else ""
                raise OSError(errno.ENOBUFS, f"buffer full ({buffered} records, {self._bytes} bytes waiting for "
                                             f"the server{why})")
            seq = self._seq
            self._buffer.extend((seq + i, payload, target) for i, (payload, target) in enumerate(items))
            self._seq = seq + len(items)
            self._bytes += size
            wake = not self._armed
            self._armed = True
        if wake:
            self._call(self._wake)

    def close(self) -> None:
        """Stop taking records; what is buffered goes out for at most flush_timeout seconds (on
        the loop thread: the caller does not wait, see `join`), the rest is counted and said."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._call(self._begin_close)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop thread to end (after close); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _call(self, fn) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass          # the loop has ended: nothing is waiting for a wake-up

    # ---- loop thread
    def _run(self, started: threading.Event) -> None:
        threadname.name_this_thread()
        asyncio.set_event_loop(self._loop)
        self._kick = asyncio.Event()
        self._main_task = self._loop.create_task(self._main())
        started.set()
        try:
            self._loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            pass
        finally:
            self._report_lost()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _wake(self) -> None:
        self._kick.set()

    def _begin_close(self) -> None:
        self._closing = True
        self._kick.set()
        self._loop.call_later(self.flush_timeout, self._main_task.cancel)

    async def _main(self) -> None:
        backoff = BACKOFF_S[0]
        while not (self._closing and not self._buffer):
            nc = None
            try:
                lost = asyncio.Event()
                nc = await self._connect(lost)
                js = nc.jetstream()
                await self._ensure_stream(js)
                self._up()
                backoff = BACKOFF_S[0]
                await self._publish(js, lost)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                self._failed(exc)
            finally:
                if nc is not None:
                    await self._close_connection(nc)
            if self._closing and not self._buffer:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])

    async def _connect(self, lost: asyncio.Event):
        async def gone():
            lost.set()
            self._kick.set()

        errors: list = []

        async def error(exc):        # said by _failed, not by nats-py's logger (with a traceback)
            errors.append(exc)

        # Reconnection is ours (the loop above): every new connection checks the stream again and
        # sends the whole buffer from its start. max_reconnect_attempts=1: each server tried twice.
        try:
            return await nats.connect(self.servers, allow_reconnect=False, max_reconnect_attempts=1,
                                      reconnect_time_wait=BACKOFF_S[0], connect_timeout=CONNECT_TIMEOUT_S,
                                      name="ecapture", error_cb=error, disconnected_cb=gone, closed_cb=gone,
                                      **self._auth)
        except nats.errors.NoServersError:
            if errors:
                raise errors[-1] from None     # why the last attempt failed, not only that it did
            raise

    async def _ensure_stream(self, js) -> None:
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(name=self.stream, subjects=[self.subject],
                                    storage=nats.js.api.StorageType.FILE)
                return
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(self.stream)     # another agent created it meanwhile
        subjects = info.config.subjects or []
        if not any(subject_matches(s, self.subject) for s in subjects):
            raise StreamMismatch(f"stream {self.stream} exists but does not take subject {self.subject} "
                                 f"(its subjects: {', '.join(subjects) or 'none'}): add the subject to it "
                                 f"or name another stream")

    async def _publish(self, js, lost: asyncio.Event) -> None:
        """Send the buffer from its start, a chunk at a time, until closing leaves it empty; raise
        when the connection is lost or a chunk is refused or not acknowledged in time."""
        while True:
            if lost.is_set():
                raise ConnectionError("connection lost")
            chunk = self._peek()
            if not chunk:
                if self._closing:
                    return
                self._kick.clear()
                with self._lock:
                    if self._buffer:
                        continue
                    self._armed = False
                await self._kick.wait()
                continue
            futures = []
            run = self._run_id
            for position, payload, _ in chunk:
                futures.append(await js.publish_async(self.subject, payload, stream=self.stream,
                                                      headers={"Nats-Msg-Id": f"{run}-{position}"}))
            acks = asyncio.gather(*futures)
            watch = asyncio.ensure_future(lost.wait())
            try:
                done, _ = await asyncio.wait({acks, watch}, timeout=ACK_TIMEOUT_S,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
            if acks not in done:
                acks.cancel()
                raise ConnectionError("connection lost" if lost.is_set() else
                                      f"no acknowledgement within {ACK_TIMEOUT_S:g} s")
            acks.result()            # a refusal (limits, wrong stream) raises its API error
            self._acknowledged(len(chunk))

    def _peek(self) -> list:
        with self._lock:
            chunk, size = [], 0
            for item in itertools.islice(self._buffer, CHUNK_RECORDS):
                if chunk and size + len(item[1]) > CHUNK_BYTES:
                    break
                chunk.append(item)
                size += len(item[1])
            return chunk

    def _acknowledged(self, n: int) -> None:
        with self._lock:             # only this thread takes from the front: the chunk is still there
            for _ in range(n):
                self._bytes -= len(self._buffer.popleft()[1])
        self.sent += n

    async def _close_connection(self, nc) -> None:
        try:
            await asyncio.wait_for(nc.close(), 1.0)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception:
            pass

    def _up(self) -> None:
        if self._down:
            self._warn(f"nats {self.path}: connected again; sending {len(self._buffer)} buffered record(s)")
        self._down = False
        self._problem = ""

    def _failed(self, exc: Exception) -> None:
        problem = _describe(exc)
        if not self._down or problem != self._problem:
            self._warn(f"nats {self.path}: {problem}; keeping up to {self.buffer_records} records "
                       f"({self.buffer_bytes >> 20} MiB) until it takes them again, retrying")
        self._down = True
        self._problem = problem

    def _report_lost(self) -> None:
        with self._lock:
            self._closed = True
            left, self._buffer, self._bytes = self._buffer, collections.deque(), 0
        if not left:
            return
        self.lost_at_close.update(target for _, _, target in left)
        per_target = ", ".join(f"{p}/{t}: {n}" for (p, t), n in sorted(self.lost_at_close.items()))
        self._warn(f"nats {self.path}: {len(left)} record(s) not sent within {self.flush_timeout:g} s of closing "
                   f"({self._problem or 'not acknowledged in time'}): lost ({per_target})")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StreamMismatch):
        return str(exc)
    if isinstance(exc, nats.js.errors.APIError):
        return f"JetStream refused the records: {exc.description or exc}"
    if isinstance(exc, (nats.errors.NoServersError, OSError, asyncio.TimeoutError, nats.errors.TimeoutError)):
        return f"cannot reach the server ({type(exc).__name__}: {exc})" if str(exc) else \
            f"cannot reach the server ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"
