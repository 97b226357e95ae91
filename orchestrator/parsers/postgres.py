"""Sans-IO PostgreSQL frontend/backend protocol (v3) parser.

This module owns turning the captured bytes of BOTH directions of ONE
PostgreSQL connection into `Message` events (``pg.query`` / ``pg.result`` /
``parse_error``; `Message`, the parse error and the guarded `feed` are those of
every parser: `orchestrator.parsers.base`, `wire.TwoWayParser`).  It
never touches sockets, threads, clocks or bcc.  "Need more data" is a value
(an empty list), never an exception.

Design notes
------------
* Directions are "read"/"write" as seen by the captured process (server or
  client).  The frontend (client) side is the one that sends the untyped
  StartupMessage / SSLRequest / GSSENCRequest / CancelRequest.  When capture
  starts mid-connection the first complete message decides: frontend-only
  types (Q P B F X p f, Sync, Execute, Describe, Close, Flush) or backend-only
  types (R K Z T N 1 2 3 n s t I ...); ambiguous letters (D C E S H) are told
  apart by their bodies.  Backend bytes seen before the first frontend message
  are dropped: there is no request to pair them with.
* SSLRequest / GSSENCRequest: the single-byte answer 'N' continues in clear
  text, 'S' / 'G' switch to an encrypted stream: the parser stops quietly
  (`tls` becomes True).
* Requests are paired with responses through a FIFO of pending items
  (pipelining-safe): Parse/Bind/Describe/Close/Sync expect their completion
  messages; one ``pg.query`` is emitted per simple query and per Execute, and
  one ``pg.result`` per CommandComplete / EmptyQueryResponse / ErrorResponse
  / PortalSuspended (so a simple query with several statements yields several
  results).  After an ErrorResponse in the extended protocol the backend skips
  to the next Sync: the skipped items are dropped and the error is reported
  for the first Execute among them (or the failed item itself).
* Passwords and SASL payloads are never reported; only the auth method.
* Copy data (both directions) is counted and skipped.
* Malformed input puts the parser into an error state: exactly one
  ``parse_error`` message and every later call returns ``[]``; no exception
  escapes `feed`.
* `missing`: inside a message of known length the bytes are skipped and the
  message is handled as ``truncated``.  Overrunning a BACKEND message emits
  the pending results as truncated and drops backend bytes until the
  frontend's next message; overrunning a frontend message is a parse error.
* Performance: `bytes` buffer without copy when a chunk is consumed whole,
  `struct.unpack_from`, ``bytes.find`` for NUL-terminated strings; data rows
  past ``max_rows`` are counted, not decoded.
"""

from __future__ import annotations

import re
import struct
from collections import deque

from orchestrator.parsers import wire

__all__ = ["Message", "PostgresParser", "looks_like_postgres"]

#: The event type (shared with the MySQL parser).
Message = wire.Message
_Fail, _Bad, _text, _cstr = wire.Fail, wire.Bad, wire.text, wire.cstr

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

#: Largest message accepted (PostgreSQL itself caps most messages at 1 GB).
MAX_MESSAGE = 1 << 30

_FRONTEND = frozenset(b"QPBDESCHFXpdcf")
_BACKEND = frozenset(b"RSKZTDCEINnst123AGHWdcVv")
_FE_ONLY = frozenset(b"QPBFXpf")
_BE_ONLY = frozenset(b"RKZTINnst123AGWVv")

_AUTH_METHODS = {3: "password", 5: "md5", 7: "gss", 9: "sspi", 2: "kerberos5", 6: "scm",
                 10: "sasl"}

_TAG_RE = re.compile(rb"[A-Z]+( [A-Z]+)*( [0-9]+)*\0")

_OTHER = wire.OTHER

_I16 = struct.Struct(">h").unpack_from
_I32 = struct.Struct(">i").unpack_from

# Phases.
_P_UNSYNCED = 0
_P_STARTUP = 1  # startup packet seen, until the first ReadyForQuery
_P_READY = 2
_P_TLS = 3
_P_ERROR = 4

# Pending item kinds.
_K_SIMPLE = 0
_K_PARSE = 1
_K_BIND = 2
_K_DESCRIBE = 3
_K_EXECUTE = 4
_K_SYNC = 5
_K_CLOSE = 6
_K_STARTUP = 7
_K_FCALL = 8


# ------------------------------------------------------------------ detection


def _startup_code(b) -> int:
    """Code of an untyped startup-phase packet at the start of `b`, else 0."""
    if len(b) < 8:
        return 0
    ln, code = struct.unpack_from(">II", b, 0)
    if code == SSL_REQUEST or code == GSSENC_REQUEST:
        return code if ln == 8 else 0
    if code == CANCEL_REQUEST:
        return code if ln == 16 else 0
    if code >> 16 == 3 and 8 <= ln <= 10000:
        return code
    return 0


def _classify(t: int, body) -> int:
    """Side of a typed message: 1 frontend, 2 backend, 0 cannot tell, -1 invalid."""
    if t in _FE_ONLY:
        return 1
    if t in _BE_ONLY:
        return 2
    n = len(body)
    if t == 0x53:  # S: Sync / ParameterStatus
        return 1 if n == 0 else 2
    if t == 0x48:  # H: Flush / CopyOutResponse
        return 1 if n == 0 else 2
    if t == 0x45:  # E: Execute / ErrorResponse
        return 1 if n >= 5 and body.find(b"\0") == n - 5 else 2
    if t == 0x44 or t == 0x43:  # D: Describe / DataRow, C: Close / CommandComplete
        if t == 0x43 and _TAG_RE.fullmatch(body):
            return 2
        if n >= 2 and body[0] in b"SP" and body.find(b"\0") == n - 1:
            return 1
        return 2
    if t == 0x64 or t == 0x63:
        return 0
    return -1


def looks_like_postgres(first: bytes, direction: str = "") -> bool:
    """Cheap detection from the first captured chunk of a connection.

    True for a StartupMessage / SSLRequest / GSSENCRequest / CancelRequest, or
    for a chunk made of well-formed typed messages (length < 16 MiB for the
    check, known type letters, the messages that fit in the chunk valid).
    HTTP, TLS and text are rejected.
    """
    try:
        b = bytes(first[:4096])
        if _startup_code(b):
            return True
        i = 0
        n = len(b)
        seen = 0
        while i + 5 <= n:
            t = b[i]
            ln = _I32(b, i + 1)[0]
            if t not in _FRONTEND and t not in _BACKEND or ln < 4 or ln > 1 << 24:
                return False
            end = i + 1 + ln
            if end > n:
                return seen > 0 or ln > 64  # first message cut by the capture
            body = b[i + 5:end]
            side = _classify(t, body)
            if side < 0:
                return False
            if t == 0x51 and (not body or body[-1] != 0):
                return False
            if t == 0x5A and (ln != 5 or body not in (b"I", b"T", b"E")):
                return False
            if t == 0x52 and (ln < 8 or _I32(body, 0)[0] not in (0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12)):
                return False
            seen += 1
            i = end
        return seen > 0 and i == n
    except Exception:
        return False


# ---------------------------------------------------------------- framing


class _Dir(wire.Buffer):
    """Framing state of one direction."""

    __slots__ = ("typed", "rem", "mtype", "parts", "start", "trunc", "drop")

    def __init__(self) -> None:
        wire.Buffer.__init__(self)
        self.typed = True  # False while the frontend still sends untyped startup packets
        self.rem = -1  # body bytes still to come; -1: header next
        self.mtype = 0
        self.parts: list | None = None
        self.start = 0
        self.trunc = False
        self.drop = False

    def discard(self) -> None:
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        self.rem = -1
        self.parts = None

    def next_message(self):
        """Next complete message -> (type, body, start, truncated) or None.

        Untyped startup packets have type 0 and the body includes the code.
        """
        buf = self.buf
        pos = self.pos
        n = len(buf)
        rem = self.rem
        if rem < 0:
            if self.typed:
                if n - pos < 5:
                    return None
                t = buf[pos]
                ln = _I32(buf, pos + 1)[0]
                hl = 5
            else:
                if n - pos < 4:
                    return None
                t = 0
                ln = _I32(buf, pos)[0]
                hl = 4
            if ln < 4 or ln > MAX_MESSAGE or (t == 0 and ln < 8):
                raise _Fail("invalid message length %d" % ln, self.base + pos)
            self.mtype = t
            self.start = self.base + pos
            self.trunc = False
            pos += hl
            self.pos = pos
            rem = self.rem = ln - 4
        if n - pos < rem:
            return None
        body = buf[pos:pos + rem]
        if type(body) is not bytes:
            body = bytes(body)
        self.pos = pos + rem
        self.rem = -1
        parts = self.parts
        if parts:
            parts.append(body)
            body = b"".join(parts)
            self.parts = None
        return self.mtype, body, self.start, self.trunc

    def skip(self, missing: int):
        """Apply uncaptured bytes -> (message or None, bytes overrunning the message)."""
        if self.rem < 0:
            return None, missing
        buf = self.buf
        have = len(buf) - self.pos
        if self.parts is None:
            self.parts = []
        if have:
            self.parts.append(bytes(buf[self.pos:]))
        self.base += len(buf)
        self.buf = b""
        self.pos = 0
        self.rem -= have
        k = missing if missing < self.rem else self.rem
        self.rem -= k
        self.base += k
        missing -= k
        self.trunc = True
        if self.rem:
            return None, 0
        self.rem = -1
        body = b"".join(self.parts)
        self.parts = None
        return (self.mtype, body, self.start, True), missing


# ------------------------------------------------------------- pending items


class _Item:
    __slots__ = ("kind", "sql", "ts", "stmt", "portal", "params", "cols", "fmts", "rows",
                 "count", "trunc", "copy", "notices", "target", "answered")

    def __init__(self, kind: int, sql=None, ts=None) -> None:
        self.kind = kind
        self.sql = sql
        self.ts = ts
        self.stmt = None
        self.portal = None
        self.params = None
        self.target = None
        self.answered = False
        self.reset()

    def reset(self) -> None:
        self.cols: list = []
        self.fmts: list = []
        self.rows: list = []
        self.count = 0
        self.trunc = False
        self.copy = None
        self.notices: list | None = None


class PostgresParser(wire.TwoWayParser):
    """Incremental parser for both directions of one PostgreSQL connection."""

    __slots__ = ("_max_rows", "_client", "_pending", "_stmts", "_portals",
                 "_ssl_wait", "_auth", "_sasl_pending", "_user", "_database", "_server_version",
                 "_backend_pid", "_resync", "_stmt_cols")

    PROTOCOL = "postgres"
    STOP_PHASE = _P_TLS
    ERROR_PHASE = _P_ERROR

    def __init__(self, max_rows: int = 5) -> None:
        self._max_rows = max(0, int(max_rows))
        self._dirs = {"read": _Dir(), "write": _Dir()}
        self._client: str | None = None
        self._phase = _P_UNSYNCED
        self._pending: deque[_Item] = deque()
        self._stmts: dict[bytes, str] = {}
        self._portals: dict[bytes, dict] = {}
        self._stmt_cols: dict[bytes, tuple] = {}  # statement -> (columns, formats) from Describe
        self._ssl_wait = 0  # SSL_REQUEST / GSSENC_REQUEST awaiting its one-byte answer
        self._auth = None
        self._sasl_pending = False
        self._user = None
        self._database = None
        self._server_version = None
        self._backend_pid = None
        self._resync = False

    # ------------------------------------------------------------------ API

    @property
    def failed(self) -> bool:
        """True once a parse_error message has been emitted (all input is then ignored)."""
        return self._phase == _P_ERROR

    @property
    def tls(self) -> bool:
        """True after SSL/GSS encryption was accepted (the rest is ignored)."""
        return self._phase == _P_TLS

    @property
    def client_direction(self) -> str | None:
        """'read' or 'write': the direction carrying the frontend's messages, once known."""
        return self._client

    # ------------------------------------------------------------ internals

    def _release(self) -> None:
        for d in self._dirs.values():
            d.discard()
        self._pending.clear()
        self._stmts = {}
        self._portals = {}
        self._stmt_cols = {}

    def _pump(self, direction: str, d: _Dir, ts: int, out: list) -> None:
        while self._phase < _P_TLS:
            if d.drop:
                d.discard()
                return
            if self._client is None and d.rem < 0:
                # typed messages never start with 0: an untyped startup packet?
                avail = len(d.buf) - d.pos
                if avail and d.buf[d.pos] == 0:
                    if avail < 8:
                        return
                    if _startup_code(d.buf[d.pos:d.pos + 8]):
                        self._client = direction
                        d.typed = False
                        self._dirs[_OTHER[direction]].discard()
            if self._ssl_wait and direction != self._client:
                if d.rem < 0 and d.pos < len(d.buf):
                    if self._ssl_answer(d):
                        continue
                    if self._phase >= _P_TLS:
                        break
            msg = d.next_message()
            if msg is None:
                return
            self._message(direction, msg, ts, out)
        if self._phase == _P_TLS:
            self._release()

    def _ssl_answer(self, d: _Dir) -> bool:
        """One-byte answer to SSLRequest/GSSENCRequest. True = consumed, go on."""
        c = d.buf[d.pos]
        if c == 0x4E:  # 'N': stay in clear text
            d.pos += 1
            self._ssl_wait = 0
            return True
        if c == 0x53 and self._ssl_wait == SSL_REQUEST or c == 0x47 and self._ssl_wait == GSSENC_REQUEST:
            self._phase = _P_TLS
            return False
        self._ssl_wait = 0  # e.g. an ErrorResponse from a server without SSL support
        return True

    def _missing(self, direction: str, d: _Dir, missing: int, ts: int, out: list) -> None:
        if d.drop or (self._client is None and d.rem < 0 and d.pos >= len(d.buf)):
            d.base += missing
            return
        msg, over = d.skip(missing)
        if msg is not None:
            self._message(direction, msg, ts, out)
        if not over or self._phase >= _P_TLS:
            return
        if self._client is not None and direction != self._client:
            for it in self._pending:
                if it.kind == _K_SIMPLE or it.kind == _K_EXECUTE:
                    it.trunc = True
                    self._emit(it, ts, out, "unknown" if not it.cols else "ok", None)
            self._pending.clear()
            d.discard()
            d.base += over
            d.drop = True
            self._resync = True
            return
        raise _Fail("%d uncaptured bytes overrun the message" % over, d.base + len(d.buf))

    def _message(self, direction: str, msg, ts: int, out: list) -> None:
        t, body, start, trunc = msg
        try:
            if self._client is None:
                side = _classify(t, body)
                if side < 0:
                    raise _Fail("not a PostgreSQL message (type 0x%02x)" % t, start)
                if side == 0:
                    return
                self._client = direction if side == 1 else _OTHER[direction]
                self._phase = _P_READY
                if side == 2:
                    self._dirs[direction].drop = True
                    self._resync = True
                    return
                self._dirs[_OTHER[direction]].discard()
            if direction == self._client:
                self._frontend(t, body, trunc, ts, out)
            else:
                self._backend(t, body, trunc, ts, out)
        except (_Bad, IndexError, struct.error, ValueError) as e:
            if trunc:
                return
            reason = str(e) if isinstance(e, _Bad) else "short message"
            raise _Fail("malformed %s message %r: %s" % (
                "frontend" if direction == self._client else "backend",
                chr(t) if t else "startup", reason), start) from None

    # ------------------------------------------------------------ frontend

    def _frontend(self, t: int, b: bytes, trunc: bool, ts: int, out: list) -> None:
        if self._resync:
            self._resync = False
            sd = self._dirs[_OTHER[self._client]]
            sd.discard()
            sd.drop = False
        if t == 0:
            self._startup(b, trunc, ts, out)
            return
        if t == 0x51:  # Q
            sql = _text(b[:-1] if b[-1:] == b"\0" else b)
            f = {"kind": "simple", "sql": sql}
            if trunc:
                f["truncated"] = True
            out.append(Message("pg.query", f))
            it = _Item(_K_SIMPLE, sql, ts)
            it.trunc = trunc
            self._pending.append(it)
        elif t == 0x50:  # P
            name, i = _cstr(b, 0)
            q, i = _cstr(b, i) if not trunc else (b[i:].rstrip(b"\0"), 0)
            sql = _text(q)
            self._stmts[name] = sql
            it = _Item(_K_PARSE, sql, ts)
            it.stmt = name
            self._pending.append(it)
        elif t == 0x42:  # B
            self._bind(b, trunc)
        elif t == 0x45:  # E
            portal, i = _cstr(b, 0)
            p = self._portals.get(portal)
            it = _Item(_K_EXECUTE, None, ts)
            f = {"kind": "extended", "sql": None}
            if p is not None:
                it.stmt = p["stmt"]
                it.sql = f["sql"] = self._stmts.get(p["stmt"])
                f["statement"] = _text(p["stmt"])
                f["params"] = it.params = p["params"]
                cols = p["cols"] or self._stmt_cols.get(p["stmt"])
                if cols is not None:
                    it.cols, it.fmts = cols
            if portal:
                f["portal"] = _text(portal)
            it.portal = portal
            out.append(Message("pg.query", f))
            self._pending.append(it)
        elif t == 0x44:  # D
            it = _Item(_K_DESCRIBE)
            it.target = (b[0], b[1:-1])
            self._pending.append(it)
        elif t == 0x53:  # S
            self._pending.append(_Item(_K_SYNC))
        elif t == 0x43:  # C
            kind, name = b[0], b[1:-1]
            if kind == 0x53:
                self._stmts.pop(name, None)
                self._stmt_cols.pop(name, None)
            else:
                self._portals.pop(name, None)
            self._pending.append(_Item(_K_CLOSE))
        elif t == 0x70:  # p: password / SASL / GSS response: never reported
            if self._sasl_pending:
                self._sasl_pending = False
                mech, _ = _cstr(b, 0)
                self._auth = "sasl/" + _text(mech)
        elif t == 0x46:  # F
            self._pending.append(_Item(_K_FCALL))
        elif t in (0x64, 0x63, 0x66):  # copy data / done / fail
            for it in self._pending:
                if it.copy is not None:
                    if t == 0x64:
                        it.copy["bytes"] += len(b)
                    break
        elif t in (0x48, 0x58):  # Flush, Terminate
            pass
        else:
            raise _Bad("unknown frontend message type")

    def _startup(self, b: bytes, trunc: bool, ts: int, out: list) -> None:
        code = _I32(b, 0)[0]
        if code == SSL_REQUEST or code == GSSENC_REQUEST:
            self._ssl_wait = code
            return
        if code == CANCEL_REQUEST:
            out.append(Message("pg.query", {"kind": "cancel", "sql": None,
                                            "backend_pid": _I32(b, 4)[0]}))
            return
        if code >> 16 != 3:
            raise _Bad("unsupported protocol version %d.%d" % (code >> 16, code & 0xFFFF))
        parts = b[4:].split(b"\0")
        params = {}
        for k in range(0, len(parts) - 1, 2):
            if not parts[k]:
                break
            params[_text(parts[k])] = _text(parts[k + 1])
        self._user = params.get("user")
        self._database = params.get("database", self._user)
        self._dirs[self._client].typed = True
        self._phase = _P_STARTUP
        f = {"kind": "startup", "sql": None, "user": self._user, "database": self._database}
        if "application_name" in params:
            f["application_name"] = params["application_name"]
        if code != PROTOCOL_V3:
            f["protocol"] = "%d.%d" % (code >> 16, code & 0xFFFF)
        out.append(Message("pg.query", f))
        self._pending.append(_Item(_K_STARTUP, None, ts))

    def _bind(self, b: bytes, trunc: bool) -> None:
        portal, i = _cstr(b, 0)
        stmt, i = _cstr(b, i)
        nf = _I16(b, i)[0]
        i += 2
        fmts = struct.unpack_from(">%dh" % nf, b, i) if nf > 0 else ()
        i += 2 * nf
        n = _I16(b, i)[0]
        i += 2
        params = []
        for k in range(n):
            if trunc and i + 4 > len(b):
                break
            ln = _I32(b, i)[0]
            i += 4
            if ln < 0:
                params.append(None)
                continue
            fmt = fmts[0] if nf == 1 else (fmts[k] if k < nf else 0)
            if i + ln > len(b) and not trunc:
                raise _Bad("parameter runs past the end of the message")
            params.append(_text(b[i:i + ln]) if fmt == 0 else {"binary_length": ln})
            i += ln
        self._portals[portal] = {"stmt": stmt, "params": params, "cols": None}
        it = _Item(_K_BIND)
        it.portal = portal
        it.stmt = stmt
        self._pending.append(it)

    # ------------------------------------------------------------- backend

    def _backend(self, t: int, b: bytes, trunc: bool, ts: int, out: list) -> None:
        pend = self._pending
        it = pend[0] if pend else None
        if t == 0x44:  # D DataRow
            if it is not None and (it.kind == _K_SIMPLE or it.kind == _K_EXECUTE):
                if it.count < self._max_rows:
                    it.rows.append(self._row(b, it, trunc))
                it.count += 1
                if trunc:
                    it.trunc = True
            return
        if t == 0x43 or t == 0x49:  # C CommandComplete, I EmptyQueryResponse
            tag = _text(b[:-1] if b[-1:] == b"\0" else b) if t == 0x43 else None
            if it is not None and (it.kind == _K_SIMPLE or it.kind == _K_EXECUTE):
                self._emit(it, ts, out, "ok", tag)
                if it.kind == _K_EXECUTE:
                    pend.popleft()
                else:
                    it.reset()
            return
        if t == 0x54:  # T RowDescription
            cols, fmts = _row_description(b)
            if it is None:
                return
            if it.kind == _K_SIMPLE or it.kind == _K_EXECUTE:
                it.cols, it.fmts = cols, fmts
            elif it.kind == _K_DESCRIBE:
                pend.popleft()
                kind, name = it.target
                if kind == 0x50:
                    if name in self._portals:
                        self._portals[name]["cols"] = (cols, fmts)
                    for x in pend:  # an Execute already queued behind the Describe
                        if x.kind == _K_EXECUTE and x.portal == name:
                            if not x.cols:
                                x.cols, x.fmts = cols, fmts
                            break
                elif kind == 0x53:
                    self._stmt_cols[name] = (cols, fmts)
            return
        if t == 0x5A:  # Z ReadyForQuery
            while pend:
                x = pend.popleft()
                if x.kind == _K_STARTUP:
                    self._phase = _P_READY
                    self._emit_login(x, ts, out, None)
                    break
                if x.kind == _K_SIMPLE or x.kind == _K_SYNC:
                    break
            if self._phase == _P_STARTUP:
                self._phase = _P_READY
            return
        if t == 0x45:  # E ErrorResponse
            self._error(_error_fields(b), it, ts, out)
            return
        if t in (0x31, 0x32, 0x33, 0x6E, 0x56):  # 1 2 3 n V
            want = {0x31: _K_PARSE, 0x32: _K_BIND, 0x33: _K_CLOSE, 0x6E: _K_DESCRIBE,
                    0x56: _K_FCALL}[t]
            if it is not None and it.kind == want:
                pend.popleft()
            return
        if t == 0x74:  # t ParameterDescription (a T or n follows)
            return
        if t == 0x73:  # s PortalSuspended
            if it is not None and it.kind == _K_EXECUTE:
                self._emit(it, ts, out, "ok", None, {"suspended": True})
                pend.popleft()
            return
        if t == 0x4E:  # N NoticeResponse
            if it is not None and (it.kind == _K_SIMPLE or it.kind == _K_EXECUTE):
                e = _error_fields(b)
                if it.notices is None:
                    it.notices = []
                it.notices.append(e.get("message"))
            return
        if t in (0x47, 0x48, 0x57):  # G H W Copy{In,Out,Both}Response
            if it is not None and (it.kind == _K_SIMPLE or it.kind == _K_EXECUTE):
                it.copy = {"direction": {0x47: "in", 0x48: "out", 0x57: "both"}[t], "bytes": 0}
            return
        if t == 0x64:  # d CopyData
            if it is not None and it.copy is not None:
                it.copy["bytes"] += len(b)
            return
        if t == 0x52:  # R Authentication
            code = _I32(b, 0)[0]
            if code == 0:
                if self._auth is None:
                    self._auth = "trust"
            elif code in _AUTH_METHODS:
                self._auth = _AUTH_METHODS[code]
                self._sasl_pending = code == 10
            elif code not in (8, 11, 12):
                raise _Bad("unknown authentication request %d" % code)
            return
        if t == 0x53:  # S ParameterStatus
            name, i = _cstr(b, 0)
            if name == b"server_version":
                self._server_version = _text(_cstr(b, i)[0])
            return
        if t == 0x4B:  # K BackendKeyData (the secret is never reported)
            self._backend_pid = _I32(b, 0)[0]
            return
        if t in (0x63, 0x41, 0x76):  # CopyDone, NotificationResponse, NegotiateProtocolVersion
            return
        raise _Bad("unknown backend message type")

    def _row(self, b: bytes, it: _Item, trunc: bool) -> list:
        n = _I16(b, 0)[0]
        i = 2
        row = []
        append = row.append
        end = len(b)
        fmts = it.fmts
        for k in range(n):
            if i + 4 > end:
                if trunc:
                    break
                raise _Bad("data row shorter than its column count")
            ln = _I32(b, i)[0]
            i += 4
            if ln < 0:
                append(None)
                continue
            j = i + ln
            if j > end and not trunc:
                raise _Bad("value runs past the end of the data row")
            if k < len(fmts) and fmts[k] == 1:
                append("\\x" + b[i:min(j, i + 64)].hex())
            else:
                append(b[i:j].decode("utf-8", "replace"))
            i = j
        return row

    def _error(self, e: dict, it, ts: int, out: list) -> None:
        pend = self._pending
        if it is None:
            self._emit(_Item(_K_SIMPLE), ts, out, "error", None, error=e)
            return
        if it.kind == _K_STARTUP:
            pend.popleft()
            self._emit_login(it, ts, out, e)
            return
        if it.kind == _K_SIMPLE:
            self._emit(it, ts, out, "error", None, error=e)
            it.reset()
            return
        # extended protocol: the backend skips to the next Sync
        target = None
        while pend and pend[0].kind != _K_SYNC:
            x = pend.popleft()
            if target is None and x.kind == _K_EXECUTE:
                target = x
            elif target is None and x is it and x.sql is None and x.stmt is not None:
                x.sql = self._stmts.get(x.stmt)
        if target is None:
            target = it
            if target.kind == _K_SYNC:
                target = _Item(_K_SIMPLE)
        self._emit(target, ts, out, "error", None, error=e)

    def _emit(self, it: _Item, ts: int, out: list, status: str, tag, extra=None, error=None) -> None:
        count = it.count
        if not it.cols and not count and tag:
            last = tag.rpartition(" ")[2]
            if last.isdigit():
                count = int(last)
        f = {"sql": it.sql, "status": status, "tag": tag, "columns": list(it.cols),
             "rows": it.rows, "row_count": count,
             "latency_ms": round((ts - it.ts) / 1e6, 3) if it.ts is not None else None}
        if it.kind == _K_EXECUTE and it.stmt is not None:
            f["statement"] = _text(it.stmt)
        if error is not None:
            f["error"] = error
        if it.trunc:
            f["truncated"] = True
        if it.notices:
            f["notices"] = it.notices
        if it.copy is not None:
            f["copy"] = it.copy
        if extra:
            f.update(extra)
        out.append(Message("pg.result", f))

    def _emit_login(self, it: _Item, ts: int, out: list, error) -> None:
        f = {"sql": None, "status": "error" if error else "ok", "tag": None, "columns": [],
             "rows": [], "row_count": 0,
             "latency_ms": round((ts - it.ts) / 1e6, 3) if it.ts is not None else None,
             "auth": self._auth, "user": self._user, "database": self._database,
             "server_version": self._server_version, "backend_pid": self._backend_pid}
        if error:
            f["error"] = error
        out.append(Message("pg.result", f))


def _row_description(b: bytes) -> tuple[list, list]:
    n = _I16(b, 0)[0]
    i = 2
    cols = []
    fmts = []
    for _ in range(n):
        j = b.find(b"\0", i)
        if j < 0 or j + 19 > len(b):
            raise _Bad("short row description")
        cols.append(b[i:j].decode("utf-8", "replace"))
        fmts.append(_I16(b, j + 17)[0])
        i = j + 19
    return cols, fmts


_ERR_KEYS = {"S": "severity", "V": "severity", "C": "code", "M": "message", "D": "detail",
             "H": "hint", "P": "position"}


def _error_fields(b: bytes) -> dict:
    e: dict = {"severity": None, "code": None, "message": None}
    for part in b.split(b"\0"):
        if not part:
            continue
        key = _ERR_KEYS.get(chr(part[0]))
        if key is not None and (key != "severity" or part[0] == 0x56 or e["severity"] is None):
            e[key] = _text(part[1:])
    return e
