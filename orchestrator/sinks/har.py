"""HAR sink (`{type: har, path}`): HTTP/1.1 and HTTP/2 exchanges as an HTTP Archive 1.2 file.

Owns two things:

* `HarBuilder` (no I/O): pairs `http.request` and `http.response` records of one connection
  (HTTP/1: in order, checked against the `request` a response names; HTTP/2: by stream) and
  turns each pair into a HAR entry. Every other record type is ignored. Whichever half comes
  first waits for the other; at most MAX_PENDING halves wait (MAX_PER_CONNECTION on one
  connection), beyond that the oldest is written alone and counted in `evicted`. A request
  still waiting when the sink closes is written with status 0 and `_incomplete: true` (counted
  in `unanswered`); a response whose request never came, with the method and path it names and
  `_incomplete: true` (counted in `unrequested`); a 1xx interim response (100 Continue, ...) has
  no place in HAR and is counted in `interim`.
* `HarSink`: the file. It always holds a whole HAR document: the entries array is closed by the
  trailer ``\\n]}}\\n``, and each batch's entries plus a new trailer go out in one write over the
  old trailer, so a run killed between two batches (SIGKILL included) leaves a valid file. One
  entry per line, so the file also reads well with grep.

A file that exists when the sink opens it is appended to if it is a HAR file written by this
sink: its first line is our header, it ends with our trailer and its last entry line is whole.
Anything else (another tool's HAR, a file cut short mid-write, any other content) is refused
with an error saying so: it is never overwritten, since a HAR file is often someone's evidence.

Timings come from the records: `startedDateTime` is the request record's `ts` (the moment its
last byte was read or written), `time` and `timings.wait` the response's `latency_ms`; the
records hold no finer phases, so `send` and `receive` are 0 and the connection phases absent.
"""
from __future__ import annotations

import base64
import collections
import datetime
import email.utils
import errno
import fcntl
import http
import os
import threading
import urllib.parse
import zlib
from importlib import metadata

import msgspec

from orchestrator import safefile
from orchestrator.bpf import layout
from orchestrator.pipeline import events

MAX_PENDING = 4096              # requests waiting for their response, over all connections
MAX_PER_CONNECTION = 256        # ... on one connection (HTTP/1 pipelining) or HTTP/2 stream key
MAX_DECODED = 64 << 20          # a compressed body decodes to at most this many bytes, else stays as sent
HTTP_TYPES = ("http.request", "http.response")
TRAILER = b"\n]}}\n"
_HEADER_START = b'{"log":{"version":"1.2","creator":{"name":"ecapture",'
_HEADER_END = b'"entries":['
_TAIL_SCAN = 256 << 20          # how far back from the end the last entry line is looked for


class HarFileError(ValueError):
    """The path names a file this sink will not write into; the message says why and what to do."""


def _version() -> str:
    try:
        return metadata.version("ecapture")
    except metadata.PackageNotFoundError:
        return "0"


# ---------------------------------------------------------------- records → entries

def _iso(ts_ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ts_ns / 1e9, tz=datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _split_endpoint(text: str) -> tuple[str, str]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), port


def _header_list(headers: dict | None) -> list[dict]:
    """Record headers (a name sent more than once maps to a list) as HAR name/value pairs, in order."""
    out = []
    for name, value in (headers or {}).items():
        for one in value if isinstance(value, list) else (value,):
            out.append({"name": name, "value": one})
    return out


def _header(headers: dict | None, wanted: str):
    """The first value of header `wanted` (any case), or None."""
    for name, value in (headers or {}).items():
        if name.lower() == wanted:
            return value[0] if isinstance(value, list) else value
    return None


def _request_cookies(headers: dict | None) -> list[dict]:
    cookie = _header(headers, "cookie")
    out = []
    for piece in (cookie or "").split(";"):
        name, eq, value = piece.strip().partition("=")
        if name and eq:
            out.append({"name": name, "value": value})
    return out


def _response_cookies(headers: dict | None) -> list[dict]:
    out = []
    for hname, values in (headers or {}).items():
        if hname.lower() != "set-cookie":
            continue
        for line in values if isinstance(values, list) else (values,):
            first, *attrs = line.split(";")
            name, eq, value = first.strip().partition("=")
            if not (name and eq):
                continue
            cookie: dict = {"name": name, "value": value}
            for attr in attrs:
                key, _, val = attr.strip().partition("=")
                key = key.lower()
                if key in ("path", "domain"):
                    cookie[key] = val
                elif key == "expires":
                    try:
                        cookie["expires"] = email.utils.parsedate_to_datetime(val).isoformat()
                    except (TypeError, ValueError, IndexError):
                        pass
                elif key == "httponly":
                    cookie["httpOnly"] = True
                elif key == "secure":
                    cookie["secure"] = True
            out.append(cookie)
    return out


def _decoded_body(body: str, encoding: str | None, content_encoding: str | None, truncated: bool):
    """(text, encoding, size, compression) of a response body: HAR wants it HTTP-decoded, so a
    whole gzip or deflate body is decompressed (bounded); anything else stays as captured."""
    raw = base64.b64decode(body) if encoding else body.encode("utf-8")
    coding = (content_encoding or "").strip().lower()
    if not raw or truncated or coding not in ("gzip", "x-gzip", "deflate"):
        return body, encoding, len(raw), None
    try:
        d = zlib.decompressobj(47 if "gzip" in coding else zlib.MAX_WBITS)
        plain = d.decompress(raw, MAX_DECODED)
        if d.unconsumed_tail:
            return body, encoding, len(raw), None
    except zlib.error:
        return body, encoding, len(raw), None
    text, enc = events.text_or_base64(plain)
    return text, enc, len(plain), len(plain) - len(raw)


def _sides(d: dict) -> tuple[str | None, str | None]:
    """(server endpoint, client endpoint) of a record's connection, from which side wrote what."""
    conn = d.get("conn")
    if not conn:
        return None, None
    wrote = d.get("direction") == "write"
    captured_is_client = wrote if d["type"] == "http.request" else not wrote
    if captured_is_client:
        return conn.get("remote"), conn.get("local")
    return conn.get("local"), conn.get("remote")


def _url(req: dict, method: str, path: str, server: str | None) -> str:
    if path.startswith(("http://", "https://")):           # absolute form (a proxy request)
        return path
    scheme = req.get("scheme") or ("https" if req.get("tls") else "http")
    host = req.get("authority") or _header(req.get("headers"), "host") or server or "unknown"
    if method == "CONNECT" or path == "*":
        return f"{scheme}://{host}/"
    return f"{scheme}://{host}{path if path.startswith('/') else '/' + path}"


def _query(path: str) -> list[dict]:
    query = urllib.parse.urlsplit(path).query if "?" in path else ""
    return [{"name": n, "value": v} for n, v in urllib.parse.parse_qsl(query, keep_blank_values=True,
                                                                       errors="replace")]


def entry(req: dict | None, resp: dict | None, incomplete: str | None = None) -> dict:
    """One HAR entry from a request record and its response record (either may be None).

    `incomplete` says what is missing (written as the entry's `_incomplete: true` and in its comment).
    """
    base = req if req is not None else resp
    assert base is not None
    named = (resp or {}).get("request") or {}
    method = (req or {}).get("method") or named.get("method") or ""
    path = (req or {}).get("path") or named.get("path") or "/"
    server, client = _sides(base)
    if resp is not None and resp.get("latency_ms") is not None:
        wait = max(float(resp["latency_ms"]), 0.0)
    elif req is not None and resp is not None:
        wait = max((resp["ts"] - req["ts"]) / 1e6, 0.0)      # 0 when the server answered before the request ended
    else:
        wait = 0.0
    if req is not None:
        started = req["ts"] if resp is None else min(req["ts"], resp["ts"])
    else:
        started = resp["ts"] - int(wait * 1e6)       # type: ignore[index]
    req_headers = (req or {}).get("headers") or {}
    request: dict = {
        "method": method,
        "url": _url(req or resp or {}, method, path, server),
        "httpVersion": base.get("version") or "",
        "cookies": _request_cookies(req_headers),
        "headers": _header_list(req_headers),
        "queryString": _query(path),
        "headersSize": -1,
        "bodySize": (req or {}).get("body_len", 0) if req is not None else -1,
    }
    if req is not None and (req.get("body") or req.get("body_len")):
        post: dict = {"mimeType": _header(req_headers, "content-type") or "", "text": req.get("body", "")}
        if req.get("body_encoding"):
            post["_encoding"] = req["body_encoding"]       # HAR 1.2 postData has no encoding field
        if req.get("truncated"):
            post["_truncated"] = True
        request["postData"] = post
    response = _response(resp)
    comment = f"pid={base.get('pid')} comm={base.get('comm')} profile={base.get('profile')} target={base.get('target')}"
    out: dict = {
        "startedDateTime": _iso(started),
        "time": wait,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": 0},
    }
    if server:
        out["serverIPAddress"] = _split_endpoint(server)[0]
    if client:
        out["connection"] = _split_endpoint(client)[1]
    info = {k: base[k] for k in ("pid", "tid", "comm", "uid", "profile", "target", "conn", "tls", "stream_id")
            if k in base}
    for d in (req, resp):
        if d is not None and d.get("reset"):
            info["reset"] = d.get("error_code")
            comment += f" reset={d.get('error_code')}"
    if incomplete:
        out["_incomplete"] = True
        comment += f"; incomplete: {incomplete}"
    out["comment"] = comment
    out["_ecapture"] = info
    return out


def _response(resp: dict | None) -> dict:
    if resp is None:
        return {"status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
                "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "", "headersSize": -1,
                "bodySize": -1}
    headers = resp.get("headers") or {}
    status = resp.get("status") or 0
    reason = resp.get("reason")
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    text, enc, size, compression = _decoded_body(resp.get("body") or "", resp.get("body_encoding"),
                                                 _header(headers, "content-encoding"), bool(resp.get("truncated")))
    content: dict = {"size": size, "mimeType": _header(headers, "content-type") or "x-unknown"}
    if compression is not None:
        content["compression"] = compression
    if text:
        content["text"] = text
        if enc:
            content["encoding"] = enc
    if resp.get("truncated"):
        content["_truncated"] = True
    return {"status": status, "statusText": reason, "httpVersion": resp.get("version") or "",
            "cookies": _response_cookies(headers), "headers": _header_list(headers), "content": content,
            "redirectURL": _header(headers, "location") or "", "headersSize": -1,
            "bodySize": resp.get("body_len", 0)}


class HarBuilder:
    """Pairs HTTP record dicts (the JSONL contract) into HAR entries; see the module doc.

    Whichever half of an exchange comes first waits for the other on its connection key: usually
    the request, but a server may answer before the request has ended (nginx answers an HTTP/2
    POST it does not read while the client still sends the body), so a response can wait too.
    """

    def __init__(self, max_pending: int = MAX_PENDING, max_per_connection: int = MAX_PER_CONNECTION):
        self.max_pending = max_pending
        self.max_per_connection = max_per_connection
        self._waiting: collections.OrderedDict = collections.OrderedDict()   # key → deque of record dicts
        self._count = 0
        self.evicted = 0          # written without their other half because too many waited
        self.unanswered = 0       # requests written without a response (at close, or none came)
        self.unrequested = 0      # responses written without their request
        self.interim = 0          # 1xx interim responses, not exchanges

    @staticmethod
    def _key(d: dict):
        conn = d.get("conn") or {}
        return (d.get("profile"), d.get("target"), d.get("pid"), d.get("fd"), conn.get("local"), conn.get("remote"),
                d.get("stream_id"))

    @property
    def pending(self) -> int:
        return self._count

    def add(self, d: dict) -> list[dict]:
        """Take one http.request / http.response record dict; the entries it completes."""
        is_request = d["type"] == "http.request"
        if not is_request:
            status = d.get("status")
            if isinstance(status, int) and 100 <= status < 200 and status != 101:
                self.interim += 1
                return []
        key = self._key(d)
        queue = self._waiting.get(key)
        found = self._match(queue, d, is_request) if queue else None
        if found is None:
            return self._wait(key, queue, d)
        out = []
        if not is_request:
            # Requests that waited before the one answered get no response on this connection.
            stale = [i for i in range(found) if queue[i]["type"] == "http.request"]
            for i in reversed(stale):
                out.insert(0, self._incomplete(queue[i]))
                del queue[i]
            self.unanswered += len(stale)
            found -= len(stale)
        other = queue[found]
        del queue[found]
        self._count -= len(out) + 1
        if not queue:
            del self._waiting[key]
        out.append(entry(d, other) if is_request else entry(other, d))
        return out

    @staticmethod
    def _match(queue, d: dict, is_request: bool):
        """Index of the waiting other half of `d` in `queue`, or None."""
        if is_request:
            for i, r in enumerate(queue):
                if r["type"] == "http.response":
                    named = r.get("request")
                    if named is None or (named.get("method"), named.get("path")) == (d.get("method"), d.get("path")):
                        return i
            return None
        named = d.get("request")
        for i, r in enumerate(queue):
            if r["type"] == "http.request" and (named is None or (named.get("method"), named.get("path")) ==
                                                (r.get("method"), r.get("path"))):
                return i
        return None

    def _wait(self, key, queue, d: dict) -> list[dict]:
        if queue is None:
            queue = self._waiting[key] = collections.deque()
        else:
            self._waiting.move_to_end(key)
        queue.append(d)
        self._count += 1
        out = []
        if len(queue) > self.max_per_connection:
            out.append(self._evict(key, queue))
        while self._count > self.max_pending:
            oldest_key, oldest = next(iter(self._waiting.items()))
            out.append(self._evict(oldest_key, oldest))
        return out

    def _evict(self, key, queue) -> dict:
        d = queue.popleft()
        self._count -= 1
        if not queue:
            del self._waiting[key]
        self.evicted += 1
        return self._incomplete(d, "while too many exchanges waited (evicted)")

    def _incomplete(self, d: dict, when: str = "") -> dict:
        if d["type"] == "http.request":
            return entry(d, None, f"no response {when}".strip())
        return entry(None, d, f"the request was not captured {when}".strip())

    def drain(self) -> list[dict]:
        """Every half still waiting as an entry of its own (at close), oldest first."""
        waiting = sorted((d for q in self._waiting.values() for d in q), key=lambda d: d.get("ts", 0))
        self._waiting.clear()
        self._count = 0
        for d in waiting:
            if d["type"] == "http.request":
                self.unanswered += 1
            else:
                self.unrequested += 1
        return [self._incomplete(d, "before the capture stopped") for d in waiting]


# ---------------------------------------------------------------- the file

class _HarFile:
    """One open HAR file: its fd and where its trailer starts. Shared by the sinks of this process
    that name the same file (a reload opens the new sinks before the old ones close)."""

    def __init__(self, fd: int, key, offset: int, has_entries: bool):
        self.fd = fd
        self.key = key
        self.offset = offset            # where the trailer starts
        self.has_entries = has_entries
        self.users = 1
        self.lock = threading.Lock()

    def append(self, entries: list[bytes]) -> None:
        """Write `entries` (encoded) and a new trailer over the old trailer, in one write; on a
        failure the old trailer is put back, so the file stays a valid HAR, and the error raised."""
        if not entries:
            return
        with self.lock:
            data = (b",\n" if self.has_entries else b"\n") + b",\n".join(entries) + TRAILER
            try:
                _pwrite_all(self.fd, data, self.offset)
            except BaseException:
                try:
                    _pwrite_all(self.fd, TRAILER, self.offset)
                    os.ftruncate(self.fd, self.offset + len(TRAILER))
                except OSError:
                    pass
                raise
            self.offset += len(data) - len(TRAILER)
            self.has_entries = True


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += n


_files: dict = {}                   # (st_dev, st_ino) → _HarFile
_files_lock = threading.Lock()


def _acquire(path: str) -> _HarFile:
    fd = safefile.open_private(path)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with _files_lock:
            shared = _files.get(key)
            if shared is not None:
                shared.users += 1
                os.close(fd)
                return shared
            # pwrite at an offset needs the O_APPEND that open_private sets cleared.
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_APPEND)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise HarFileError(f"{path} is being written by another process (another `ecapture apply`?): "
                                   f"choose another path") from None
            if st.st_size == 0:
                header = (_HEADER_START + b'"version":' + msgspec.json.encode(_version()) + b'},"pages":[],'
                          + _HEADER_END)
                _pwrite_all(fd, header + TRAILER, 0)
                har = _HarFile(fd, key, len(header), False)
            else:
                # open_private's fd is write-only: read through a second open of the same file.
                reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    offset, has_entries = _check_existing(reader, st.st_size, path)
                finally:
                    os.close(reader)
                har = _HarFile(fd, key, offset, has_entries)
            _files[key] = har
            return har
    except BaseException:
        os.close(fd)
        raise


def _release(har: _HarFile) -> None:
    with _files_lock:
        har.users -= 1
        if har.users > 0:
            return
        _files.pop(har.key, None)
    os.close(har.fd)


def _check_existing(fd: int, size: int, path: str) -> tuple[int, bool]:
    """(trailer offset, has entries) of a HAR file this sink wrote, else HarFileError."""
    def refuse(why: str) -> HarFileError:
        return HarFileError(f"{path} exists and {why}; ecapture appends only to HAR files it wrote whole: "
                            f"move the file away or choose another path")

    head = os.pread(fd, 4096, 0)
    first = head.split(b"\n", 1)[0]
    if not (first.startswith(_HEADER_START) and first.endswith(_HEADER_END)):
        raise refuse("is not a HAR file written by ecapture")
    if size < len(first) + len(TRAILER) or os.pread(fd, len(TRAILER), size - len(TRAILER)) != TRAILER:
        raise refuse("is an ecapture HAR file that was cut short (no closing `]}}`: a crash or full disk mid-write?)")
    offset = size - len(TRAILER)
    if offset == len(first):
        return offset, False
    # The last entry line, read backwards in chunks until the newline before it.
    start = offset
    chunk = b""
    while b"\n" not in chunk and start > 0 and offset - start < _TAIL_SCAN:
        step = min(start, 1 << 16)
        start -= step
        chunk = os.pread(fd, step, start) + chunk
    line = chunk[chunk.rfind(b"\n") + 1:] if b"\n" in chunk else b""
    try:
        last = msgspec.json.decode(line)
    except msgspec.DecodeError:
        last = None
    if not isinstance(last, dict) or "request" not in last:
        raise refuse("is an ecapture HAR file whose last entry is damaged")
    return offset, True


class HarSink:
    kind = "har"

    def __init__(self, path: str, max_pending: int = MAX_PENDING, max_per_connection: int = MAX_PER_CONNECTION):
        self.path = path
        self.builder = HarBuilder(max_pending, max_per_connection)
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode
        self._file: _HarFile | None = _acquire(path)
        self.written = 0

    # Counts of what the builder wrote without its other half, for status and tests.
    @property
    def evicted(self) -> int:
        return self.builder.evicted

    @property
    def unanswered(self) -> int:
        return self.builder.unanswered

    def _record_dict(self, r) -> dict:
        # From the JSONL line, not r.fields: handing out the fields would make to_json slower for the other sinks.
        d = self._decode(r.to_json(self._encode))
        if "direction" not in d and r.event is not None:           # HTTP/2 records name no direction
            d["direction"] = "write" if r.event.direction == layout.DIR_WRITE else "read"
        return d

    def write(self, records) -> None:
        entries: list[dict] = []
        for r in records:
            if r.type in HTTP_TYPES:
                entries += self.builder.add(self._record_dict(r))
        self._append(entries)

    def _append(self, entries: list[dict]) -> None:
        if entries and self._file is not None:
            encode = self._encode
            self._file.append([encode(e) for e in entries])
            self.written += len(entries)

    def reopen(self) -> None:
        """Start over at `path` (after logrotate moved the file): the current file keeps its
        trailer and is closed; requests waiting for a response stay waiting and land in the new
        file. If the path cannot be opened, the current file stays in use and the error is raised."""
        new = _acquire(self.path)
        old, self._file = self._file, new
        if old is not None:
            _release(old)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._append(self.builder.drain())
        finally:
            har, self._file = self._file, None
            _release(har)
