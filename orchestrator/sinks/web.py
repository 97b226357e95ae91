"""The `web` sink: a live view of the records in a browser, served by `ecapture apply`.

One port serves both the page (plain HTTP GETs, answered in `process_request`) and the
websocket the page reads records from, with the `websockets` library on an asyncio loop in a
thread of its own. Owns:

- the listen address rules (`parse_listen`: an IP literal or `localhost` and a port; loopback
  unless the profile names another address, which is warned about);
- the access token: random, kept in a 0600 file (`safefile`, no link followed) so that it
  survives an `apply` restart and an open page reconnects with it; the page (`/?token=`), the
  socket and `/ping` need it (missing: 401, wrong: 403, compared in constant time). The static
  files the page loads (`/app.js`, `/app.css`) are the same for everyone and need none;
- one server per listen address, shared (reference counted) by every sink object on it, so a
  reload that rebuilds a profile's sinks keeps the port, the token and the open pages;
- bounded per-browser queues. `write` runs on the dispatcher thread and only serialises
  (`Record.to_json`, the exact JSONL line) and appends to each browser's queue; the loop thread
  sends. A browser that reads too slowly misses the batches that find its queue full: they are
  counted per browser and shown on its page, and `write` then raises ENOBUFS so the dispatcher
  counts the batch as lost at stage `sink.web` (status, summary, loss records to other sinks).
  Capture is never slowed by a browser.

Messages to the page are JSON text: `{"kind":"hello",...}` once, then
`{"kind":"records","upto":N,"missed":M,"records":[...]}`, where `upto` numbers the records this
server has published (the page reconnects with `?since=RUN:UPTO` and gets what it has not seen
from a short history) and `missed` counts what this connection missed.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import importlib.resources
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import threading
import urllib.parse

import msgspec
import websockets.exceptions
from websockets.asyncio import server as ws_server
from websockets.datastructures import Headers
from websockets.http11 import Response

from orchestrator import safefile, threadname
from orchestrator.bpf import owner

DEFAULT_LISTEN = "127.0.0.1:8089"
CONTROL_SOCKET = "/run/ecapture/apply.sock"   # reconcile.control's default: token files live beside it
QUEUE_BYTES = 8 << 20          # per browser: what may wait to be sent before batches are dropped
HISTORY_BYTES = 4 << 20        # recent batches a page gets when it (re)connects
HISTORY_BATCHES = 2000
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
SOCKET_PATH = "/socket"
STATIC = {"/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8"),
          "/favicon.svg": ("favicon.svg", "image/svg+xml")}
PAGE = ("index.html", "text/html; charset=utf-8")
# The page loads only its own files and talks only to its own origin (ws: included in 'self').
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),          # the token is in the page's URL
    ("Cache-Control", "no-store"),
]

_log = logging.getLogger("ecapture.web")
_log.addHandler(logging.NullHandler())
_log.propagate = False


# ---------------------------------------------------------------- listen address

def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` → (host, port). HOST is an IPv4 address, an IPv6 address in brackets or
    `localhost` (127.0.0.1); no other names, so what is bound is what the profile says."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host, _, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"listen {text!r}: the port must be a number from 1 to 65535")
    if host == "localhost":
        host = "127.0.0.1"
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        addr = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ValueError(f"listen {text!r}: the host must be an IP address (IPv6 in brackets) or localhost") \
            from None
    if addr.version == 6 and not bracketed:
        raise ValueError(f"listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:{port_text}")
    return str(addr), int(port_text)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- the token

def default_token_file(host: str, port: int) -> str:
    """Beside the control socket (tmpfs /run: a reboot makes a new token, a restart keeps it)."""
    folder = os.path.dirname(os.environ.get("ECAPTURE_SOCKET") or CONTROL_SOCKET) or "."
    return os.path.join(folder, f"web-{host.replace(':', '_')}-{port}.token")


def load_token(path: str) -> str:
    """The token kept in `path`, made (random, 0600, no link followed) when the file is new or empty."""
    fd = safefile.open_private(path)        # every check on the way; creates it 0600
    try:
        checked = os.fstat(fd)
        if checked.st_size == 0:
            token = secrets.token_urlsafe(24)
            safefile.write_whole(fd, token.encode() + b"\n")
            return token
        if checked.st_size > 1024:
            raise ValueError(f"token file {path} is not a token file ({checked.st_size} bytes): remove it")
        # open_private's fd is write-only: read through a second open of the same name, accepted only
        # if it is the file just checked (a folder swapped in between would show as another inode).
        rfd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(rfd)
            if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
                raise safefile.UnsafePathError(f"{path} was replaced while it was being read: try again")
            text = os.read(rfd, 1024).decode("ascii", "replace").strip()
        finally:
            os.close(rfd)
    finally:
        os.close(fd)
    if not TOKEN_RE.fullmatch(text):
        raise ValueError(f"token file {path} does not hold a token (16 to 128 of A-Z a-z 0-9 _ -): "
                         f"remove it and a new one is made")
    return text


def check_token(given: str | None, expected: str) -> int | None:
    """None when `given` is the token, else the HTTP status to refuse with: 401 missing, 403 wrong."""
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode(), expected.encode()) else 403


# ---------------------------------------------------------------- per-browser queue

class ClientQueue:
    """Batches waiting to be sent to one browser, at most `limit` bytes (one batch may exceed it
    alone, or a batch larger than the limit would never pass). A batch that finds it full is
    dropped whole and its records are counted in `missed`. Thread safe: `put` runs on the
    dispatcher thread, `take` on the loop thread."""

    def __init__(self, limit: int = QUEUE_BYTES):
        self.limit = limit
        self.missed = 0            # records dropped because this browser read too slowly
        self.upto = 0              # the server's record count after the last batch put or dropped
        self._batches: list = []
        self._bytes = 0
        self._armed = False        # a wake-up is on its way to the sender
        self._lock = threading.Lock()

    def put(self, batch: bytes, records: int, upto: int) -> tuple[bool, bool]:
        """(kept, wake): `wake` when the sender must be woken to send it."""
        with self._lock:
            self.upto = upto
            if self._batches and self._bytes + len(batch) > self.limit:
                self.missed += records
                return False, False
            self._batches.append(batch)
            self._bytes += len(batch)
            wake = not self._armed
            self._armed = True
            return True, wake

    def take(self) -> tuple[list, int, int]:
        """(batches, upto, missed): everything queued, which leaves the queue empty."""
        with self._lock:
            batches, self._batches, self._bytes, self._armed = self._batches, [], 0, False
            return batches, self.upto, self.missed

    @property
    def queued_bytes(self) -> int:
        return self._bytes


# ---------------------------------------------------------------- the server, shared per listen address

class _Client:
    def __init__(self, peer: str, queue: ClientQueue, wake: asyncio.Event):
        self.peer = peer
        self.queue = queue
        self.wake = wake


class WebServer:
    """One listening socket, its loop thread, its browsers and the recent history."""

    def __init__(self, host: str, port: int, token: str, token_file: str):
        self.host, self.port = host, port
        self.token = token
        self.token_file = token_file
        self.queue_bytes = QUEUE_BYTES
        self.run_id = secrets.token_hex(6)      # a page that reconnects learns whether it is the same server
        self.refs = 0
        self.url = f"http://{netloc(host, port)}/?token={token}"
        self._lock = threading.Lock()
        self._clients: set = set()
        self._history: collections.deque = collections.deque()   # (first record, upto, batch)
        self._history_bytes = 0
        self._total = 0            # records published
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, on the caller's thread: a port in use is the sink's error, said at once.
        self._sock = socket.create_server((host, port), family=family, backlog=64)
        self._sock.setblocking(False)
        self._files = {name: importlib.resources.files(__package__).joinpath("web_static", name).read_bytes()
                       for name, _ in [PAGE, *STATIC.values()]}
        self._loop = asyncio.new_event_loop()
        self._ws = None
        self._start_error = "no answer in 10 s"
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name=f"ecapture-web-{port}", daemon=True)
        self._thread.start()
        started.wait(10)
        if self._ws is None:
            self._sock.close()
            raise OSError(errno.EIO, f"web view on {netloc(host, port)} did not start: {self._start_error}")

    # ---- loop thread
    def _run(self, started: threading.Event) -> None:
        threadname.name_this_thread()
        asyncio.set_event_loop(self._loop)
        try:
            self._ws = self._loop.run_until_complete(self._serve())
        except Exception as exc:      # said by the constructor, which waits for `started`
            self._start_error = f"{type(exc).__name__}: {exc}"
        finally:
            started.set()
        if self._ws is not None:
            self._loop.run_forever()
        self._loop.close()

    async def _serve(self):
        return await ws_server.serve(
            self._handler, sock=self._sock, process_request=self._process_request, compression=None,
            max_size=4096, server_header=None, logger=_log, ping_interval=20, ping_timeout=20)

    def _respond(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> Response:
        reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(status, "Error")
        headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *SECURITY_HEADERS])
        return Response(status, reason, headers, body)

    def _refused(self, status: int) -> Response:
        why = "no token" if status == 401 else "wrong token"
        return self._respond(status, f"{status}: {why}. Open the URL `ecapture apply` printed (it ends with "
                                     f"?token=...); the token is kept in {self.token_file}.\n".encode())

    def _process_request(self, connection, request):
        url = urllib.parse.urlsplit(request.path)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            return self._respond(200, self._files[name], content_type)
        if url.path not in ("/", "/index.html", "/ping", SOCKET_PATH):
            return self._respond(404, b"404: not found\n")
        given = urllib.parse.parse_qs(url.query).get("token", [None])[0]
        refused = check_token(given, self.token)
        if refused:
            return self._refused(refused)
        if url.path == "/ping":
            return self._respond(200, b"ok\n")
        if url.path != SOCKET_PATH:
            return self._respond(200, self._files[PAGE[0]], PAGE[1])
        origin = request.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get("Host"):
            return self._respond(403, b"403: the socket answers only its own page\n")   # another site's page
        return None       # the websocket handshake goes on

    async def _handler(self, ws) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        peer = netloc(*ws.remote_address[:2]) if ws.remote_address else "?"
        client = _Client(peer, ClientQueue(self.queue_bytes), asyncio.Event())
        with self._lock:
            backlog, gap = self._since(query.get("since", [""])[0])
            for first, upto, batch in backlog:
                client.queue.put(batch, upto - first, upto)
            client.queue.upto = self._total
            self._clients.add(client)
        try:
            await ws.send(json.dumps({"kind": "hello", "run": self.run_id, "listen": netloc(self.host, self.port),
                                      "upto": self._total, "gap": gap, "peer": peer}))
            client.wake.set()
            sender = asyncio.ensure_future(self._send_loop(ws, client))
            try:
                async for _ in ws:      # the page sends nothing; reading lets a close through
                    pass
            finally:
                sender.cancel()
        except websockets.exceptions.ConnectionClosed:
            pass                        # gone without a proper close: the same to us
        finally:
            with self._lock:
                self._clients.discard(client)

    async def _send_loop(self, ws, client: _Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                batches, upto, missed = client.queue.take()
                if batches:
                    await ws.send(b'{"kind":"records","upto":%d,"missed":%d,"records":[%s]}'
                                  % (upto, missed, b",".join(batches)), text=True)
        except websockets.exceptions.ConnectionClosed:
            pass            # the handler sees the close too and forgets this browser

    def _since(self, since: str) -> tuple[list, int]:
        """(history batches a page that saw records up to `since` lacks, records it missed meanwhile)."""
        run, _, upto_text = since.partition(":")
        if run != self.run_id or not upto_text.isdigit():
            return list(self._history), 0      # a new page, or a new server (apply restarted)
        upto = int(upto_text)
        backlog = [h for h in self._history if h[0] >= upto]
        oldest = backlog[0][0] if backlog else self._total
        return backlog, max(0, min(oldest, self._total) - upto)

    # ---- dispatcher thread
    def publish(self, batch: bytes, records: int) -> list:
        """Queue one batch (records' JSON joined by commas) for every browser; the browsers whose
        queue was full (they missed it)."""
        missed, wake = [], []
        with self._lock:
            first = self._total
            self._total += records
            self._history.append((first, self._total, batch))
            self._history_bytes += len(batch)
            while len(self._history) > 1 and (self._history_bytes > HISTORY_BYTES
                                              or len(self._history) > HISTORY_BATCHES):
                self._history_bytes -= len(self._history.popleft()[2])
            for client in self._clients:
                kept, woken = client.queue.put(batch, records, self._total)
                if not kept:
                    missed.append(client)
                elif woken:
                    wake.append(client)
        for client in wake:
            try:
                self._loop.call_soon_threadsafe(client.wake.set)
            except RuntimeError:
                pass            # the loop is closing: the page reconnects to the next server
        return missed

    @property
    def browsers(self) -> int:
        return len(self._clients)

    def stop(self) -> None:
        async def close():
            self._ws.close()            # closes the browsers' sockets too: their pages reconnect
            try:
                await asyncio.wait_for(self._ws.wait_closed(), 1.0)
            except asyncio.TimeoutError:
                pass
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:           # a browser that did not answer the close: no task left pending
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            self._loop.stop()
        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop)
        except RuntimeError:
            return
        self._thread.join(2.0)


_servers: dict = {}               # (host, port) → WebServer
_servers_lock = threading.Lock()


def acquire(host: str, port: int, token_file: str | None) -> WebServer:
    """The server on (host, port), started if none runs; each call must be matched by `release`."""
    token_file = token_file or default_token_file(host, port)
    with _servers_lock:
        srv = _servers.get((host, port))
        if srv is None:
            srv = WebServer(host, port, load_token(token_file), token_file)
            _servers[(host, port)] = srv
            _say(f"web view: {srv.url}")
            if not is_loopback(host):
                _say(f"warning: the web view listens on {netloc(host, port)}, not on loopback: whoever reaches "
                     f"it with the token sees the captured plaintext, and plain HTTP carries the token "
                     f"unencrypted")
        elif srv.token_file != token_file:
            raise ValueError(f"listen {netloc(host, port)} is served already with the token in {srv.token_file}, "
                             f"not {token_file}: give every web sink on it the same token_file (a changed "
                             f"token_file takes effect when apply restarts)")
        srv.refs += 1
        return srv


def release(srv: WebServer) -> None:
    with _servers_lock:
        srv.refs -= 1
        if srv.refs > 0:
            return
        _servers.pop((srv.host, srv.port), None)
    srv.stop()


def _say(line: str) -> None:
    """A line on the user's stderr: fd 2 points elsewhere while bcc compiles (bpf.owner), so
    only outside the owner lock."""
    owner.run(os.write, 2, f"ecapture: {line}\n".encode())


# ---------------------------------------------------------------- the sink

class WebSink:
    kind = "web"

    def __init__(self, listen: str = DEFAULT_LISTEN, token_file: str | None = None, show_secrets: bool = False):
        host, port = parse_listen(listen)
        self.server = acquire(host, port, token_file)
        self.path = f"http://{netloc(host, port)}/"    # how the dispatcher names this sink in warnings
        self.show_secrets = show_secrets              # TLS secrets reach a browser only when asked for
        self._encode = msgspec.json.Encoder().encode
        self._closed = False

    @property
    def url(self) -> str:
        return self.server.url

    def write(self, records) -> None:
        encode = self._encode
        lines = [r.to_json(encode) for r in records if r.type != "tls.secret" or self.show_secrets]
        if not lines:
            return
        missed = self.server.publish(b",".join(lines), len(lines))
        if missed:
            raise OSError(errno.ENOBUFS, f"{len(missed)} browser(s) read too slowly ("
                          f"{', '.join(c.peer for c in missed[:3])}): what each missed is counted and shown on its page")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            release(self.server)
