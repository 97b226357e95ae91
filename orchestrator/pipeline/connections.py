"""Per-connection ordered workers: each holds one connection's parser state.

A worker sees its connection's events in ring-buffer order and turns them into
records: parsed protocol messages where a parser applies, raw `data` otherwise.
"""
from __future__ import annotations

from base64 import b64encode
from collections import deque
from typing import Any, Final

import msgspec

from orchestrator.bpf import layout
from orchestrator.parsers import http1, http2, mysql, postgres
from orchestrator.pipeline import events, sockets

DIRECTIONS = {layout.DIR_READ: "read", layout.DIR_WRITE: "write"}
_DIR_READ: Final = layout.DIR_READ
_DIR_WRITE: Final = layout.DIR_WRITE
_DIRECTION_JSON = {d: b'"direction":"%s",' % name.encode() for d, name in DIRECTIONS.items()}
_encode = msgspec.json.Encoder().encode
_request_json: dict = {}        # (method, path) → ',"request":{...}' of the responses that answer it
try:
    # Only the compiled build has it, and only the compiled build makes messages with head_json.
    from orchestrator.parsers import http1_accel  # type: ignore[attr-defined]
    _body_tail: Any = http1_accel.body_tail
except ImportError:
    _body_tail = None

# Parsers that see both directions of a connection, tried in this order on its first bytes
# (HTTP/1.x, one parser per direction, comes last).
CONNECTION_PARSERS = (
    ("http2", http2.looks_like_http2, http2.Http2Parser),
    ("mysql", mysql.looks_like_mysql, mysql.MysqlParser),
    ("postgres", postgres.looks_like_postgres, postgres.PostgresParser),
)


class _PrefixMemo:
    """One (tid, hook, fd, uid, comm, cgroup) → record prefix of ConnectionWorker._prefix."""
    __slots__ = ("tid", "hook", "fd", "uid", "comm", "cgroup", "prefix")

    def __init__(self, ev: events.Event, prefix: bytes) -> None:
        self.tid = ev.tid
        self.hook = ev.hook
        self.fd = ev.fd
        self.uid = ev.uid
        self.comm = ev.comm
        self.cgroup = ev.cgroup
        self.prefix = prefix

    def matches(self, ev: events.Event) -> bool:
        return ev.tid == self.tid and ev.hook == self.hook and ev.fd == self.fd and ev.uid == self.uid \
            and ev.comm == self.comm and ev.cgroup == self.cgroup


class ConnectionWorker:
    """State of one connection (one TLS session or socket of one process)."""
    __slots__ = ("key", "parsers_allowed", "fd", "conn", "conn_resolved", "streams", "pending", "last_seen",
                 "excluded", "ports", "last_event", "ident", "whole", "held", "prefixes", "prefix_source",
                 "prefix_conn", "memo_a", "memo_b")

    def __init__(self, key: Any, parsers_allowed: Any, ports: Any = ()) -> None:
        self.key: Any = key
        self.parsers_allowed: Any = parsers_allowed   # None: auto-detect; () raw only
        self.fd: int | None = None
        self.conn: Any = None
        self.conn_resolved = False
        self.streams: dict[int, Any] = {}          # direction → Http1Parser | "raw"
        self.pending: deque = deque()               # (ts, method, path) of requests awaiting a response
        self.last_seen = 0
        self.excluded = False                       # a userspace port filter rejected it
        self.ports: Any = ports
        self.last_event: Any = None
        self.ident: Any = None
        self.whole: Any = None                       # a connection-level parser, once chosen
        self.held: Any = None                        # a first chunk waiting for the other side
        self.prefixes: dict = {}                     # (tid, hook, fd, uid, comm, cgroup) → events.record_prefix
        self.prefix_source: Any = None               # ... for events of this source
        self.prefix_conn: Any = None                 # ... on this conn
        # The last two (key..., prefix) looked up, compared field by field: a connection's events
        # alternate between two hooks (its reads and its writes), and this makes no key tuple.
        self.memo_a: _PrefixMemo | None = None
        self.memo_b: _PrefixMemo | None = None

    def _reset(self):
        self.whole = None
        self.held = None
        self.streams.clear()
        self.pending.clear()
        self.conn = None
        self.conn_resolved = False
        self.excluded = False
        self.ident = None

    def _resolve_conn(self, ev: events.Event):
        conn = ev.conn_tuple()
        if conn is None or conn[0][1] == 0:
            # Not seen by the kernel (predates capture, or accept() without an address).
            found = sockets.lookup(ev.pid, ev.fd) if ev.fd >= 0 else None
            conn = found or conn
        self.conn = conn
        self.conn_resolved = True
        if self.ports and conn is not None and conn[0][1] not in self.ports and conn[1][1] not in self.ports:
            self.excluded = True

    def handle(self, ev: events.Event, out: list) -> None:
        self.last_event = ev
        ident = None
        if ev.family:
            ident = self.ident
            # The connection's identity, made anew only when it differs (nearly never).
            if ident is None or ident[0] != ev.fd or ident[1] != ev.lport or ident[2] != ev.rport \
                    or ident[3] != ev.laddr or ident[4] != ev.raddr:
                ident = (ev.fd, ev.lport, ev.rport, ev.laddr, ev.raddr)
        if self.fd is not None and ((ev.fd >= 0 and ev.fd != self.fd) or
                                    (ident is not None and self.ident is not None and ident is not self.ident)):
            # The session object (or fd) now serves another connection: a reused pointer or fd.
            self.finish(out)
            self._reset()
        if ev.fd >= 0:
            self.fd = ev.fd
        if ident is not None:
            self.ident = ident
        if not self.conn_resolved or (self.conn is None and ev.family):
            self._resolve_conn(ev)
        if self.excluded:
            return
        if self.whole is None and not self.streams:
            if not self._decide(ev, out):
                return
        self._feed(ev, out)

    def _decide(self, ev: events.Event, out: list) -> bool:
        """Pick the parser from the connection's first bytes. A first chunk that fits nothing is
        held until the other side speaks (an HTTP/2 server sends SETTINGS before it reads the
        client preface), then both are parsed in order. False: `ev` is held."""
        choice = self._choose_whole(ev)
        held, self.held = self.held, None
        if choice is None and held is None and not self._http1_start(ev.payload):
            self.held = ev
            return False
        if held is not None and choice is None:
            choice = self._choose_whole(held)
        self.whole = choice
        if held is not None:
            self._feed(held, out)
        return True

    def _http1_start(self, first: Any) -> bool:
        allowed = self.parsers_allowed
        return (allowed is None or "http1" in allowed) and http1.looks_like_http1(first)

    def _feed(self, ev: events.Event, out: list) -> None:
        missing = ev.len - len(ev.payload) if ev.truncated else 0
        whole = self.whole
        if whole == "raw":
            out.append(self._data_record(ev))
            return
        if whole is not None:
            for msg in whole.feed(DIRECTIONS.get(ev.direction, "read"), ev.payload, ev.ts, missing):
                if msg.type == "parse_error":
                    self.whole = "raw"
                out.append(events.Record(msg.type, ev, msg.fields, self.conn, None, self._prefix(ev)))
            return
        stream = self.streams.get(ev.direction)
        if stream is None:
            stream = self._choose(ev.payload)
            self.streams[ev.direction] = stream
        if not isinstance(stream, http1.Http1Parser):     # "raw" (isinstance: a native call below, compiled)
            out.append(self._data_record(ev))
            return
        for msg in stream.feed(ev.payload, missing):
            out.append(self._message_record(msg, ev))
        if stream.failed:
            self.streams[ev.direction] = "raw"

    def _choose_whole(self, ev: events.Event):
        """A connection-level parser if the first bytes look like its protocol, else None."""
        allowed = self.parsers_allowed
        direction = DIRECTIONS.get(ev.direction, "read")
        for name, looks_like, parser in CONNECTION_PARSERS:
            if (allowed is None or name in allowed) and looks_like(ev.payload, direction):
                return parser()
        return None

    def _choose(self, first: Any) -> Any:
        return http1.Http1Parser() if self._http1_start(first) else "raw"

    def _data_record(self, ev: events.Event) -> events.Record:
        text, enc = events.text_or_base64(ev.payload)
        fields = {"direction": DIRECTIONS.get(ev.direction, "?"), "len": ev.len, "data": text,
                  "truncated": ev.truncated}
        if enc:
            fields["encoding"] = enc
        return events.Record("data", ev, fields, self.conn)

    def _message_record(self, msg, ev: events.Event) -> events.Record:
        """An HTTP/1 message's record: its own fields (headers and body shaped by
        parsers.http_shape, as for HTTP/2) after the direction, plus the request a response
        answers and the latency. A message with `head_json` (the compiled path) gets the same
        fields as JSON text (`_message_tail`)."""
        if isinstance(msg, http1.Request):
            self.pending.append((ev.ts, msg.method, msg.path))
            if msg.method == "HEAD":
                other = self.streams.get(_DIR_READ if ev.direction == _DIR_WRITE else _DIR_WRITE)
                if isinstance(other, http1.Http1Parser):
                    other.expect_head_response()
            if msg.head_json is not None:
                return events.Record(msg.type, ev, None, self.conn, self._message_tail(msg, ev), self._prefix(ev))
            fields: dict[str, Any] = {"direction": DIRECTIONS.get(ev.direction, "?")}
            fields.update(msg.fields)
            return events.Record(msg.type, ev, fields, self.conn)
        if isinstance(msg, http1.Response):
            if msg.head_json is not None:
                return events.Record(msg.type, ev, None, self.conn, self._message_tail(msg, ev), self._prefix(ev))
            fields = {"direction": DIRECTIONS.get(ev.direction, "?")}
            fields.update(msg.fields)
            if self.pending and msg.status >= 200:
                req_ts, method, path = self.pending.popleft()
                fields.update(request={"method": method, "path": path},
                              latency_ms=events.latency_ms(ev.ts - req_ts))
            return events.Record(msg.type, ev, fields, self.conn)
        return events.Record(msg.type, ev, msg.fields, self.conn)   # the parse_error

    def _prefix(self, ev: events.Event) -> bytes:
        """events.record_prefix for `ev`, made once per connection and thread, hook, fd, ..."""
        if ev.source is not self.prefix_source or self.conn is not self.prefix_conn or len(self.prefixes) > 64:
            self.prefixes = {}
            self.prefix_source = ev.source
            self.prefix_conn = self.conn
            self.memo_a = self.memo_b = None
        memo = self.memo_a
        if memo is not None and memo.matches(ev):
            return memo.prefix
        memo = self.memo_b
        if memo is not None and memo.matches(ev):
            self.memo_b, self.memo_a = self.memo_a, memo
            return memo.prefix
        key = (ev.tid, ev.hook, ev.fd, ev.uid, ev.comm, ev.cgroup)     # a thread may move to another cgroup
        prefix = self.prefixes.get(key)
        if prefix is None:
            prefix = self.prefixes[key] = events.record_prefix(ev, self.conn, _encode)
        self.memo_b = self.memo_a
        self.memo_a = _PrefixMemo(ev, prefix)
        return prefix

    def _message_tail(self, msg: http1.HttpMessage, ev: events.Event) -> bytes:
        """`_message_record`'s fields as JSON text without braces, as msgspec would encode them."""
        direction = _DIRECTION_JSON.get(ev.direction, b'"direction":"?",')
        body = msg.body
        body_json = _body_tail(body, msg.body_len, msg.truncated)
        if body_json is None:       # not UTF-8
            body_json = b',"body":"%s","body_len":%d,"body_encoding":"base64"' % (b64encode(body), msg.body_len)
            if msg.truncated:
                body_json += b',"truncated":true'
        head_json: Any = msg.head_json      # set: the caller checked
        if isinstance(msg, http1.Response) and self.pending and msg.status >= 200:
            req_ts, method, path = self.pending.popleft()
            request = _request_json.get((method, path))
            if request is None:
                request = b',"request":' + _encode({"method": method, "path": path})
                if len(_request_json) > 1024:
                    _request_json.clear()
                _request_json[(method, path)] = request
            return b"".join((direction, head_json, body_json, request, b',"latency_ms":',
                             _encode(events.latency_ms(ev.ts - req_ts))))
        return b"".join((direction, head_json, body_json))

    def finish(self, out: list) -> None:
        """End of connection (or eviction): flush messages delimited by close."""
        if self.held is not None:
            held, self.held = self.held, None
            self.whole = self._choose_whole(held) or "raw"
            self._feed(held, out)
        for stream in self.streams.values():
            if isinstance(stream, http1.Http1Parser) and self.last_event is not None:
                for msg in stream.finish():
                    out.append(self._message_record(msg, self.last_event))
