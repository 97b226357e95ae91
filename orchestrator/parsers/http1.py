"""Sans-IO HTTP/1.x stream parser.

This module owns turning the captured bytes of ONE direction of ONE TCP
connection into HTTP/1.x message events (`Request`, `Response`, `ParseError`).
It never touches sockets, threads, clocks or bcc: bytes go in through
`Http1Parser.feed`, events come out as a list.  `Request` and `Response` are
`orchestrator.parsers.base.Message`s whose ``fields`` are the record's fields,
shaped by `orchestrator.parsers.http_shape` (the same shaper as HTTP/2);
`ParseError` is the one parse-error message of all parsers.  "Need more data" is a value
(an empty list), never an exception.

Design notes
------------
* A parser decides from the first bytes of its direction whether it carries
  requests (a known method token followed by a space) or responses
  (``HTTP/1.``), and keeps that role for the rest of the stream.
* Malformed input puts the parser into an error state: exactly one
  `ParseError` is emitted and every later call returns ``[]``.  No exception
  escapes `feed` / `finish` for any input (the guard of `base.Parser`).
* `feed(data, missing)` accepts the number of bytes the kernel did not
  capture right after `data`.  Inside a body (Content-Length, chunk data,
  read-until-close) they are skipped and the message is marked truncated;
  anywhere else the parser cannot resynchronise and fails.
* Bodies are kept up to ``max_body`` bytes; the rest is consumed and counted
  (`body_len`) and the message is marked ``truncated``.
* Trailer fields of a chunked body are appended to ``headers`` after the
  header fields.  `header_fields` (`http_shape.header_fields`) turns those
  pairs into the record's ``headers`` object, as for HTTP/2: a field sent more
  than once keeps every value, as a list, since joining with ", " mangles
  Set-Cookie; only Cookie is one string, joined with "; ".
* Responses without a body: 1xx, 204, 304 and responses to HEAD.  The
  response direction cannot see requests, so the caller calls
  `Http1Parser.expect_head_response` once per HEAD request it saw; each final
  (non-1xx) response consumes one pending expectation, in FIFO order.  (With
  pipelined mixed HEAD/GET requests the caller must call it only when the
  HEAD is the next request still awaiting its response.)
* A ``101 Switching Protocols`` response ends HTTP on that direction: the
  parser becomes `upgraded` and silently ignores the rest.  The request
  direction cannot know the upgrade succeeded; the caller may call
  `Http1Parser.upgrade` on it (also useful after a successful CONNECT).
* Performance: the buffer is a `bytes` object when a chunk is consumed
  completely (no copy) and a `bytearray` + offset only when bytes are left
  over; all scanning uses ``bytes.find``; no per-byte Python loops.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

from orchestrator.parsers import base, http_shape
from orchestrator.parsers.base import ParseError
from orchestrator.parsers.http_shape import header_fields

__all__ = [
    "Request",
    "Response",
    "ParseError",
    "Event",
    "Http1Parser",
    "header_fields",
    "looks_like_http1",
    "KNOWN_METHODS",
    "MAX_HEADER_BYTES",
]


class HttpMessage(base.Message):
    """Request and Response: the parsed parts; ``fields`` shapes them into the record's fields.

    A message whose header block the C accelerator took (see http1_accel.c) carries that block's
    record JSON in `head_json` and its raw bytes in `head`; `headers` is then made from `head`
    only when something asks for it."""

    version: str  # "HTTP/1.1"
    body: bytes
    body_len: int  # true body length on the wire (may be > len(body))
    truncated: bool  # body (or part of it) not captured / cut at max_body
    head: Any                   # bytes holding the header block at [head_start:head_end], or None
    head_start: int
    head_end: int
    head_json: bytes | None
    _headers: list[tuple[str, str]] | None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """In order, names as sent (trailers appended)."""
        pairs = self._headers
        if pairs is None:
            head = self.head
            pairs = self._headers = _head_pairs(head[self.head_start:self.head_end] if head is not None else b"")
        return pairs

    @headers.setter
    def headers(self, pairs: list[tuple[str, str]]) -> None:
        self._headers = pairs

    def _init(self, type_: str, version: str, headers: list[tuple[str, str]] | None, body: Any, body_len: int,
              truncated: bool) -> None:
        self.type = type_
        self.version = version
        self._headers = headers
        self.body = body
        self.body_len = body_len
        self.truncated = truncated
        self.head = None
        self.head_start = self.head_end = 0
        self.head_json = None

    def _set_head(self, head: Any, start: int, end: int, head_json: bytes) -> None:
        """The block the C accelerator took: its bytes (head[start:end]) and its record JSON."""
        self.head = head
        self.head_start = start
        self.head_end = end
        self.head_json = head_json

    def _start(self) -> tuple:
        """The start line's ((name, value), (name, value)): method and path, or status and reason."""
        raise NotImplementedError

    def _parts(self) -> tuple:
        return self._start() + (("version", self.version), ("headers", self.headers), ("body", self.body),
                                ("body_len", self.body_len), ("truncated", self.truncated))

    def _shaped(self) -> dict:
        """The record's fields (without the connection's: direction, request, ...). Each subclass
        has its own `fields` property: compiled, a property inherited from here would lose to
        Message's `fields` attribute."""
        fields = dict(self._start())
        fields["version"] = self.version
        fields["headers"] = header_fields(self.headers)
        return http_shape.body_fields(fields, self.body, self.body_len, self.truncated)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._parts() == other._parts()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % pair for pair in self._parts()))


class Request(HttpMessage):
    method: str
    path: str

    def __init__(self, method: str, path: str, version: str, headers: list[tuple[str, str]] | None, body: Any,
                 body_len: int, truncated: bool) -> None:
        self.method = method
        self.path = path
        self._init("http.request", version, headers, body, body_len, truncated)

    def _start(self) -> tuple:
        return (("method", self.method), ("path", self.path))

    @property  # type: ignore[misc]
    def fields(self) -> dict:  # type: ignore[override]
        return self._shaped()


class Response(HttpMessage):
    status: int
    reason: str

    def __init__(self, status: int, reason: str, version: str, headers: list[tuple[str, str]] | None, body: Any,
                 body_len: int, truncated: bool) -> None:
        self.status = status
        self.reason = reason
        self._init("http.response", version, headers, body, body_len, truncated)

    def _start(self) -> tuple:
        return (("status", self.status), ("reason", self.reason))

    @property  # type: ignore[misc]
    def fields(self) -> dict:  # type: ignore[override]
        return self._shaped()


def _head_pairs(head: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a header block the C accelerator took (CRLF lines, ASCII)."""
    text = head.decode("latin-1")
    if text.endswith("\r"):
        text = text[:-1]
    pairs = []
    for line in text.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        pairs.append((name, value.strip(" \t")))
    return pairs


try:
    # Only the compiled build has it (orchestrator/fastpath.py hides it from the Python one).
    from orchestrator.parsers.http1_accel import block as _fast_block  # type: ignore[import-not-found]
    from orchestrator.parsers.http1_accel import head as _fast_head  # type: ignore[import-not-found]
except ImportError:
    _fast_block = _fast_head = None


Event = Request | Response | ParseError

#: Header block (start line + fields + terminating empty line) size limit.
MAX_HEADER_BYTES = 65536
#: Trailer section size limit (same as the header block).
MAX_TRAILER_BYTES = 65536
#: Chunk-size line (size + extensions + line ending) size limit.
MAX_CHUNK_LINE = 4096
#: Longest method token accepted after the role is known.
_MAX_METHOD: Final = 32

#: Method tokens that identify a request stream from its first bytes.
#: ("PRI" is deliberately absent: ``PRI * HTTP/2.0`` is the HTTP/2 preface.)
KNOWN_METHODS = frozenset(
    {
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
        "PATCH", "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK",
        "UNLOCK", "SEARCH", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE",
        "MKCALENDAR", "PURGE", "LINK", "UNLINK", "BIND", "UNBIND", "REBIND",
        "ACL", "MSEARCH", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
        "QUERY",
    }
)
_KNOWN_METHODS_B = frozenset(m.encode("ascii") for m in KNOWN_METHODS)

_RESP_MAGIC = b"HTTP/1."
# Every proper prefix of a valid stream start: "need more bytes to decide".
_START_PREFIXES = frozenset(
    s[:i]
    for s in [m + b" " for m in _KNOWN_METHODS_B] + [_RESP_MAGIC]
    for i in range(1, len(s))
)
_START_WINDOW = max(len(m) + 1 for m in _KNOWN_METHODS_B)

_TOKEN_B = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_S = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_S = re.compile(r"HTTP/1\.[0-9]")
_HEX_B = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Parser states.  Everything >= _S_UPGRADED ignores input.
_S_START: Final = 0  # between messages (or before the first one)
_S_HEADERS: Final = 1  # start line recognised, waiting for the end of the header block
_S_BODY: Final = 2  # Content-Length body, self._remaining bytes left
_S_CHUNK_SIZE: Final = 3  # waiting for a chunk-size line
_S_CHUNK_DATA: Final = 4  # inside chunk data, self._remaining bytes left
_S_CHUNK_END: Final = 5  # waiting for the CRLF after chunk data
_S_TRAILERS: Final = 6  # after the last chunk: trailer fields + empty line
_S_EOF_BODY: Final = 7  # response body delimited by connection close
_S_UPGRADED: Final = 8  # 101 / upgrade(): no longer HTTP, ignore everything
_S_CLOSED: Final = 9  # finish() was called
_S_ERROR: Final = 10  # a ParseError was emitted

_ROLE_UNKNOWN: Final = 0
_ROLE_REQUEST: Final = 1
_ROLE_RESPONSE: Final = 2


_Fail = base.Fail


def _classify_start(head: Any) -> int:
    """First bytes of a stream -> role; 0 = need more, -1 = not HTTP/1.x."""
    if head.startswith(_RESP_MAGIC):
        return _ROLE_RESPONSE
    sp = head.find(b" ")
    if sp > 0:
        return _ROLE_REQUEST if head[:sp] in _KNOWN_METHODS_B else -1
    if sp < 0 and head in _START_PREFIXES:
        return 0
    return -1


def looks_like_http1(data: Any) -> bool:
    """Cheap detection from the first bytes of a stream.

    True iff `data` starts with a known method token followed by a space, or
    with ``HTTP/1.``.  Data too short to decide yields False.
    """
    try:
        return _classify_start(bytes(data[:_START_WINDOW])) > 0
    except Exception:
        return False


def _split_lines(text: str) -> list[str]:
    """Split a header/trailer block (without its final line ending) into lines.

    CRLF and bare LF line endings are both accepted.
    """
    lines = text.split("\r\n")
    if text.count("\n") == len(lines) - 1:
        return lines  # pure CRLF (the common case)
    lines = text.split("\n")
    return [ln[:-1] if ln[-1:] == "\r" else ln for ln in lines]


def _line_offset(text: str, index: int) -> int:
    """Offset inside `text` of line `index` (error path only)."""
    off = 0
    for _ in range(index):
        off = text.index("\n", off) + 1
    return off


def _parse_content_length(values: list[str], offset: int) -> int:
    result = -1
    for v in values:
        for item in v.split(","):
            item = item.strip(" \t")
            if not item or not item.isdigit() or not item.isascii() or len(item) > 18:
                raise _Fail("invalid Content-Length: %r" % v[:40], offset)
            x = int(item)
            if result < 0:
                result = x
            elif x != result:
                raise _Fail("conflicting Content-Length values", offset)
    return result


class Http1Parser(base.Parser):
    """Incremental parser for one direction of one HTTP/1.x connection."""

    __slots__ = (
        "_max_body", "_buf", "_pos", "_base", "_state", "_role", "_scan",
        "_msg", "_msg_start", "_remaining", "_parts", "_kept", "_body_len",
        "_trunc", "_head_pending",
    )

    PROTOCOL = "http1"

    def __init__(self, max_body: int = 16384) -> None:
        self._max_body = max(0, int(max_body))
        self._buf: Any = b""                 # bytes | bytearray
        self._pos = 0  # read offset into _buf
        self._base = 0  # stream offset of _buf[0]
        self._state = _S_START
        self._role = _ROLE_UNKNOWN
        self._scan = 0  # stream offset where the pending line/block search resumes
        self._msg: Any = None                # Request | Response | None
        self._msg_start = 0
        self._remaining = 0
        self._parts: list[bytes] | None = None
        self._kept = 0
        self._body_len = 0
        self._trunc = False
        self._head_pending = 0

    # ------------------------------------------------------------------ API

    @property
    def failed(self) -> bool:
        """True once a ParseError has been emitted (all input is then ignored)."""
        return self._state == _S_ERROR

    @property
    def upgraded(self) -> bool:
        """True after a 101 response (or `upgrade()`): the rest is not HTTP."""
        return self._state == _S_UPGRADED

    @property
    def role(self) -> str | None:
        """'request' or 'response' once decided from the first bytes, else None."""
        return {_ROLE_REQUEST: "request", _ROLE_RESPONSE: "response"}.get(self._role)

    def expect_head_response(self) -> None:
        """Register that a HEAD request was sent; the next final response has no body."""
        self._head_pending += 1

    def upgrade(self) -> None:
        """Stop parsing: everything after what was already fed is opaque (not HTTP)."""
        if self._state < _S_UPGRADED:
            self._state = _S_UPGRADED
            self._release()

    def feed(self, data: Any, missing: Any = 0) -> list[Request | Response | ParseError]:
        """Feed the next chunk of ONE direction of a connection.

        `missing` = number of bytes that followed `data` on the wire but were
        not captured (the kernel truncated the event at max_bytes).  Those
        bytes are known to come right after `data`.
        Returns the messages completed by this chunk ([] = need more data).
        """
        if self._state >= _S_UPGRADED:
            return []
        events: list[Request | Response | ParseError] = []
        try:
            if data:
                if type(data) is not bytes:
                    data = bytes(data)
                buf = self._buf
                pos = self._pos
                if pos >= len(buf):
                    self._base += len(buf)
                    self._buf = data
                else:
                    if type(buf) is bytes:
                        buf = bytearray(memoryview(buf)[pos:])
                        self._buf = buf
                    else:
                        del buf[:pos]
                    self._base += pos
                    buf += data
                self._pos = 0
                self._run(events)
            if missing and self._state < _S_UPGRADED:
                if missing > 0:
                    self._skip_missing(int(missing), events)
            if self._state == _S_UPGRADED and self._buf:
                self._release()
        except Exception as e:  # Fail, or anything else: never let it escape
            self._guard(events, e, self._base + self._pos)
        return events

    def finish(self) -> list[Request | Response | ParseError]:
        """End of stream: emit the message in progress (read-until-close body).

        A message cut inside its body is emitted with ``truncated=True``; a
        stream ending inside a message head yields a ParseError.  Afterwards
        the parser ignores all input.
        """
        events: list[Request | Response | ParseError] = []
        st = self._state
        if st >= _S_UPGRADED:
            if st == _S_UPGRADED:
                self._state = _S_CLOSED
            return events
        try:
            if st == _S_EOF_BODY:
                self._emit(events)
            elif st == _S_START:
                rest = self._buf[self._pos:]
                if rest.strip(b"\r\n"):
                    raise _Fail("end of stream inside a message head", self._base + self._pos)
            elif st == _S_HEADERS:
                raise _Fail("end of stream inside a message head", self._msg_start)
            else:  # inside a Content-Length or chunked body
                self._trunc = True
                self._emit(events)
            self._state = _S_CLOSED
            self._release()
        except Exception as e:  # Fail, or anything else: never let it escape
            self._guard(events, e, self._base + self._pos)
        return events

    # ------------------------------------------------------------ internals

    def _release(self) -> None:
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        self._msg = None
        self._parts = None

    def _halt(self) -> None:
        self._state = _S_ERROR

    def _emit(self, events: list) -> None:
        msg: HttpMessage = self._msg        # typed: compiled, the attribute writes below are native
        parts = self._parts
        if parts:
            msg.body = parts[0] if len(parts) == 1 else b"".join(parts)
        msg.body_len = self._body_len
        msg.truncated = self._trunc
        events.append(msg)
        self._msg = None
        self._parts = None
        if isinstance(msg, Response) and msg.status == 101:
            self._state = _S_UPGRADED  # the caller of _emit drops the buffer
        else:
            self._state = _S_START

    def _keep(self, buf, a: int, b: int) -> None:
        """Account body bytes buf[a:b]; keep what fits under max_body."""
        ln = b - a
        self._body_len += ln
        room = self._max_body - self._kept
        if ln > room:
            self._trunc = True
            if room <= 0:
                return
            b = a + room
            ln = room
        piece = buf[a:b] if type(buf) is bytes else bytes(buf[a:b])
        if self._parts is None:
            self._parts = [piece]
        else:
            self._parts.append(piece)
        self._kept += ln

    def _skip_missing(self, missing: int, events: list) -> None:
        # Every body state consumes all buffered bytes, so when the buffer
        # still holds something we are in a state that cannot skip.
        while missing > 0:
            st = self._state
            if st >= _S_UPGRADED:
                return
            here = self._base + len(self._buf)
            if self._pos < len(self._buf) or st not in (_S_BODY, _S_CHUNK_DATA, _S_EOF_BODY):
                raise _Fail("%d uncaptured bytes outside a message body" % missing, here)
            self._release_buffer_only()
            if st == _S_EOF_BODY:
                self._body_len += missing
                self._trunc = True
                self._base += missing
                return
            step = missing if missing < self._remaining else self._remaining
            self._remaining -= step
            self._body_len += step
            self._trunc = True
            self._base += step
            missing -= step
            if self._remaining == 0:
                if st == _S_BODY:
                    self._emit(events)
                else:
                    self._state = _S_CHUNK_END

    def _release_buffer_only(self) -> None:
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0

    def _find_block(self, buf, pos: int, n: int, limit: int, what: str):
        """Locate the end of a header/trailer block starting at `pos`.

        Returns (end_of_last_line, next_pos) or None when more data is needed.
        """
        base = self._base
        s = self._scan - base
        if s < pos:
            s = pos
        lim = pos + limit
        e = n if n < lim else lim
        i = buf.find(b"\n\r\n", s, e)
        j = buf.find(b"\n\n", s, i + 1 if i >= 0 else e)
        if j >= 0:
            return j, j + 2
        if i >= 0:
            return i, i + 3
        if n - pos >= limit:
            raise _Fail("%s larger than %d bytes" % (what, limit), base + pos)
        s = n - 2
        self._scan = base + (s if s > pos else pos)
        return None

    def _parse_fields(self, lines: list[str], first: int, text: str, start_off: int,
                      headers: list, cl: list, te: list) -> None:
        append = headers.append
        for line in (lines[first:] if first else lines):
            name, sep, value = line.partition(":")
            if not sep or not name or " " in name or "\t" in name:
                off = start_off + _line_offset(text, lines.index(line, first))
                if line[:1] in (" ", "\t"):
                    raise _Fail("obsolete line folding in header block", off)
                raise _Fail("invalid header line %r" % line[:60], off)
            value = value.strip(" \t")
            append((name, value))
            ln = len(name)
            if ln == 14:
                if name.lower() == "content-length":
                    cl.append(value)
            elif ln == 17:
                if name.lower() == "transfer-encoding":
                    te.append(value)

    def _on_head(self, buf, pos: int, line_end: int, events: list) -> None:
        """Header block buf[pos:line_end] complete: build the message, pick the body mode."""
        if _fast_head is not None:
            parts = _fast_head(buf, pos, line_end, self._role == _ROLE_REQUEST)
            if parts is not None:
                self._on_fast_head((line_end, line_end) + parts, bytes(buf[pos:line_end]), 0, line_end - pos, events)
                return
        if buf[line_end - 1] == 13:
            line_end -= 1
        text = buf[pos:line_end].decode("latin-1")
        lines = _split_lines(text)
        start = lines[0]
        start_off = self._base + pos
        headers: list[tuple[str, str]] = []
        cl: list[str] = []
        te: list[str] = []
        if self._role == _ROLE_REQUEST:
            parts = start.split(" ")
            if len(parts) != 3:
                raise _Fail("malformed request line %r" % start[:80], start_off)
            method, target, version = parts
            if method not in KNOWN_METHODS and not _TOKEN_S.fullmatch(method):
                raise _Fail("invalid request method %r" % method[:40], start_off)
            if not target:
                raise _Fail("empty request target", start_off)
            if version != "HTTP/1.1" and version != "HTTP/1.0" and not _VERSION_S.fullmatch(version):
                raise _Fail("invalid HTTP version %r" % version[:20], start_off)
            self._parse_fields(lines, 1, text, start_off, headers, cl, te)
            msg: Any = Request(method, target, version, headers, b"", 0, False)
            self._msg = msg
            if te:
                codings = ",".join(te).split(",")
                if codings[-1].strip(" \t").lower() != "chunked":
                    raise _Fail("request Transfer-Encoding does not end in chunked", start_off)
                self._state = _S_CHUNK_SIZE
                return
            if cl:
                length = _parse_content_length(cl, start_off)
                if length > 0:
                    self._remaining = length
                    self._state = _S_BODY
                    return
            self._emit(events)
            return

        # response
        version, _, rest = start.partition(" ")
        if version != "HTTP/1.1" and version != "HTTP/1.0" and not _VERSION_S.fullmatch(version):
            raise _Fail("invalid status line %r" % start[:80], start_off)
        code = rest[:3]
        if (len(code) != 3 or not code.isdigit() or not code.isascii()
                or (len(rest) > 3 and rest[3] != " ")):
            raise _Fail("invalid status line %r" % start[:80], start_off)
        status = int(code)
        if status < 100:
            raise _Fail("invalid status code %d" % status, start_off)
        self._parse_fields(lines, 1, text, start_off, headers, cl, te)
        msg = Response(status, rest[4:], version, headers, b"", 0, False)
        self._msg = msg
        if status < 200:
            self._emit(events)  # 1xx: no body (101 switches to upgraded)
            return
        if self._head_pending:
            self._head_pending -= 1
            self._emit(events)
            return
        if status == 204 or status == 304:
            self._emit(events)
            return
        if te:
            codings = ",".join(te).split(",")
            if codings[-1].strip(" \t").lower() == "chunked":
                self._state = _S_CHUNK_SIZE
            else:
                self._state = _S_EOF_BODY
            return
        if cl:
            length = _parse_content_length(cl, start_off)
            if length > 0:
                self._remaining = length
                self._state = _S_BODY
            else:
                self._emit(events)
            return
        self._state = _S_EOF_BODY

    def _on_fast_head(self, found: tuple, head: bytes, head_start: int, head_end: int, events: list) -> None:
        """_on_head for a block the C accelerator took (`found`: http1_accel.block's answer): it is
        well formed, its Content-Length is one number (-1: none) and its Transfer-Encoding, if any,
        is chunked."""
        _end, _next, first, second, version, head_json, length_, chunked_ = found
        length: int = length_           # typed: compiled, the tests below are C comparisons
        chunked: int = chunked_         # 0 or 1
        msg: HttpMessage
        status = 0
        if self._role == _ROLE_REQUEST:
            msg = Request(first, second, version, None, b"", 0, False)
        else:
            status = first
            msg = Response(status, second, version, None, b"", 0, False)
        msg._set_head(head, head_start, head_end, head_json)
        self._msg = msg
        if self._role == _ROLE_RESPONSE:
            if status < 200:
                self._emit(events)
                return
            if self._head_pending:
                self._head_pending -= 1
                self._emit(events)
                return
            if status == 204 or status == 304:
                self._emit(events)
                return
        if chunked:
            self._state = _S_CHUNK_SIZE
        elif length > 0:
            self._remaining = length
            self._state = _S_BODY
        elif length == 0 or self._role == _ROLE_REQUEST:
            self._emit(events)
        else:
            self._state = _S_EOF_BODY

    def _begin(self, buf, pos: int, n: int) -> bool:
        """At a message start: True = looks right, False = need more; raises on garbage."""
        role = self._role
        if role == _ROLE_RESPONSE:
            if buf.startswith(_RESP_MAGIC, pos):
                return True
            if n - pos < 7 and buf[pos:n] == _RESP_MAGIC[: n - pos]:
                return False
            raise _Fail("expected a status line", self._base + pos)
        if role == _ROLE_REQUEST:
            sp = buf.find(b" ", pos, pos + _MAX_METHOD + 1)
            if sp > pos:
                m = buf[pos:sp]
                if type(m) is not bytes:
                    m = bytes(m)
                if m in _KNOWN_METHODS_B or _TOKEN_B.fullmatch(buf, pos, sp):
                    return True
            elif sp < 0 and n - pos <= _MAX_METHOD and _TOKEN_B.fullmatch(buf, pos, n):
                return False
            raise _Fail("invalid request method", self._base + pos)
        r = _classify_start(bytes(buf[pos:pos + _START_WINDOW]))
        if r > 0:
            self._role = r
            return True
        if r == 0:
            return False
        raise _Fail("not an HTTP/1.x message start", self._base + pos)

    def _run(self, events: list) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        try:
            while pos < n:
                st = self._state
                if st == _S_START:
                    c = buf[pos]
                    if c == 10:  # empty lines between messages are tolerated
                        pos += 1
                        continue
                    if c == 13:
                        if pos + 1 >= n:
                            break
                        if buf[pos + 1] == 10:
                            pos += 2
                            continue
                        raise _Fail("bare CR before message start", self._base + pos)
                    if _fast_block is not None and self._role != _ROLE_UNKNOWN:
                        found = _fast_block(buf, pos, n, self._role == _ROLE_REQUEST)
                        if found is not None:        # _begin, _find_block and _on_head in one step
                            self._msg_start = self._base + pos
                            self._parts = None
                            self._kept = 0
                            self._body_len = 0
                            self._trunc = False
                            # The block is kept by reference while buf is immutable: headers are
                            # made from it only if something asks for them.
                            if type(buf) is bytes:
                                self._on_fast_head(found, buf, pos, found[0], events)
                            else:
                                self._on_fast_head(found, bytes(buf[pos:found[0]]), 0, found[0] - pos, events)
                            pos = found[1]
                            if self._state >= _S_UPGRADED:
                                pos = n
                                break
                            self._scan = self._base + pos
                            continue
                    if not self._begin(buf, pos, n):
                        break
                    self._state = _S_HEADERS
                    self._msg_start = self._scan = self._base + pos
                    self._parts = None
                    self._kept = 0
                    self._body_len = 0
                    self._trunc = False
                    st = _S_HEADERS
                if st == _S_HEADERS:
                    r = self._find_block(buf, pos, n, MAX_HEADER_BYTES, "header block")
                    if r is None:
                        break
                    self._on_head(buf, pos, r[0], events)
                    pos = r[1]
                    if self._state >= _S_UPGRADED:
                        pos = n
                        break
                    self._scan = self._base + pos
                    continue
                if st == _S_BODY or st == _S_CHUNK_DATA:
                    rem = self._remaining
                    avail = n - pos
                    if avail >= rem:
                        self._keep(buf, pos, pos + rem)
                        pos += rem
                        self._remaining = 0
                        if st == _S_BODY:
                            self._emit(events)
                        else:
                            self._state = _S_CHUNK_END
                    else:
                        self._keep(buf, pos, n)
                        self._remaining = rem - avail
                        pos = n
                    continue
                if st == _S_CHUNK_SIZE:
                    base = self._base
                    s = self._scan - base
                    if s < pos:
                        s = pos
                    lim = pos + MAX_CHUNK_LINE
                    i = buf.find(b"\n", s, n if n < lim else lim)
                    if i < 0:
                        if n - pos >= MAX_CHUNK_LINE:
                            raise _Fail("chunk-size line too long", base + pos)
                        self._scan = base + n
                        break
                    line = buf[pos:i]
                    if line[-1:] == b"\r":
                        line = line[:-1]
                    semi = line.find(b";")
                    size_b = (line if semi < 0 else line[:semi]).strip(b" \t")
                    if not _HEX_B.fullmatch(size_b):
                        raise _Fail("invalid chunk size %r" % bytes(line[:40]), base + pos)
                    size = int(size_b, 16)
                    pos = i + 1
                    self._scan = base + pos
                    if size:
                        self._remaining = size
                        self._state = _S_CHUNK_DATA
                    else:
                        self._state = _S_TRAILERS
                    continue
                if st == _S_CHUNK_END:
                    c = buf[pos]
                    if c == 10:
                        pos += 1
                    elif c == 13:
                        if pos + 1 >= n:
                            break
                        if buf[pos + 1] != 10:
                            raise _Fail("missing CRLF after chunk data", self._base + pos)
                        pos += 2
                    else:
                        raise _Fail("missing CRLF after chunk data", self._base + pos)
                    self._state = _S_CHUNK_SIZE
                    self._scan = self._base + pos
                    continue
                if st == _S_TRAILERS:
                    c = buf[pos]
                    if c == 10 or c == 13:
                        if c == 13:
                            if pos + 1 >= n:
                                break
                            if buf[pos + 1] != 10:
                                raise _Fail("bare CR in trailer section", self._base + pos)
                            pos += 2
                        else:
                            pos += 1
                        self._emit(events)
                        continue
                    r = self._find_block(buf, pos, n, MAX_TRAILER_BYTES, "trailer section")
                    if r is None:
                        break
                    end = r[0] - 1 if buf[r[0] - 1] == 13 else r[0]
                    text = buf[pos:end].decode("latin-1")
                    self._parse_fields(_split_lines(text), 0, text, self._base + pos,
                                       self._msg.headers, [], [])
                    self._msg.head_json = None      # the trailers are fields too
                    pos = r[1]
                    self._emit(events)
                    continue
                if st == _S_EOF_BODY:
                    self._keep(buf, pos, n)
                    pos = n
                    break
                break  # upgraded / closed / error: ignore the rest
        finally:
            self._pos = pos
