"""Sans-IO MySQL / MariaDB client-server protocol parser.

This module owns turning the captured bytes of BOTH directions of ONE MySQL
connection into `Message` events (``mysql.query`` / ``mysql.result`` /
``parse_error``).  It never touches sockets, threads, clocks or bcc: bytes go
in through `MysqlParser.feed` together with the capture timestamp, messages
come out as a list.  "Need more data" is a value (an empty list), never an
exception.  `Message`, the parse error and the guarded `feed` are those of
every parser (`orchestrator.parsers.base`, `wire.TwoWayParser`).

Design notes
------------
* Directions are "read"/"write" as seen by the captured process, which may be
  the server or the client.  The client side is worked out from the traffic:
  the server sends the initial handshake (v10); without a handshake (capture
  started mid-connection) the first packet that looks like a command
  (``seq == 0`` and a known command byte) marks the client.  Until then every
  packet is dropped (there is no request to pair a response with).
* Framing: 3-byte length + sequence id; payloads of 0xffffff bytes continue in
  the next packet and are joined.  Sequence ids are not enforced (loose).
* Result sets are recognised without knowing CLIENT_DEPRECATE_EOF: a 0xfe
  packet of at most 5 bytes is an EOF packet, a longer one (< 16 MiB) an OK
  packet used as terminator.  The MariaDB metadata-cache / MySQL optional
  metadata byte after the column count is recognised from the packet length.
* CLIENT_SSL in the handshake response (the short SSLRequest packet): the
  connection switches to TLS; the parser stops quietly (`tls` becomes True).
* Malformed input puts the parser into an error state: exactly one
  ``parse_error`` message is emitted and every later call returns ``[]``.
  No exception escapes `feed` for any input.
* `missing` (bytes the kernel did not capture right after `data`): inside a
  packet of known length the bytes are skipped and the packet is handled as
  ``truncated``.  When they overrun the packet on the SERVER side the current
  result is emitted with ``truncated: true`` and server bytes are dropped
  until the client sends its next command (MySQL is strictly
  request/response, so the next response starts after it).  On the client
  side an overrun is a parse error.
* Performance: a `bytes` buffer when a chunk is consumed completely (no
  copy), `bytearray` + offset when bytes are left over; `struct.unpack_from`
  and slicing, rows past ``max_rows`` are counted, not decoded.
"""

from __future__ import annotations

import struct

from orchestrator.parsers import wire

__all__ = ["Message", "MysqlParser", "looks_like_mysql", "COMMANDS"]


Message = wire.Message
_Fail, _Bad, _text, _cstr = wire.Fail, wire.Bad, wire.text, wire.cstr


#: Command byte -> name.
COMMANDS = {
    0x00: "COM_SLEEP", 0x01: "COM_QUIT", 0x02: "COM_INIT_DB", 0x03: "COM_QUERY",
    0x04: "COM_FIELD_LIST", 0x05: "COM_CREATE_DB", 0x06: "COM_DROP_DB",
    0x07: "COM_REFRESH", 0x08: "COM_SHUTDOWN", 0x09: "COM_STATISTICS",
    0x0A: "COM_PROCESS_INFO", 0x0B: "COM_CONNECT", 0x0C: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG", 0x0E: "COM_PING", 0x0F: "COM_TIME", 0x10: "COM_DELAYED_INSERT",
    0x11: "COM_CHANGE_USER", 0x12: "COM_BINLOG_DUMP", 0x13: "COM_TABLE_DUMP",
    0x14: "COM_CONNECT_OUT", 0x15: "COM_REGISTER_SLAVE", 0x16: "COM_STMT_PREPARE",
    0x17: "COM_STMT_EXECUTE", 0x18: "COM_STMT_SEND_LONG_DATA", 0x19: "COM_STMT_CLOSE",
    0x1A: "COM_STMT_RESET", 0x1B: "COM_SET_OPTION", 0x1C: "COM_STMT_FETCH",
    0x1D: "COM_DAEMON", 0x1E: "COM_BINLOG_DUMP_GTID", 0x1F: "COM_RESET_CONNECTION",
    0xFA: "COM_STMT_BULK_EXECUTE",
}

# Capability flags.
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_CONNECT_ATTRS = 0x100000
CLIENT_PLUGIN_AUTH_LENENC = 0x200000
CLIENT_QUERY_ATTRIBUTES = 0x8000000
CLIENT_DEPRECATE_EOF = 0x1000000

SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040

_MAX_PAYLOAD = 0xFFFFFF

# Response kinds (what the server answers to a command).
_R_NONE = 0  # no response (COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA)
_R_OK = 1  # one OK / ERR / EOF packet
_R_QUERY = 2  # text result set or OK / ERR / LOCAL INFILE
_R_PREPARE = 3
_R_EXECUTE = 4  # binary result set or OK / ERR
_R_FETCH = 5  # binary rows + EOF
_R_STRING = 6  # COM_STATISTICS: one string packet
_R_FIELDS = 7  # COM_FIELD_LIST: column definitions + EOF
_R_AUTH = 8  # login / COM_CHANGE_USER: auth exchange until OK / ERR
_R_SKIP = 9  # unknown format: server packets are ignored until the next command

_RESPONSE_KIND = {
    0x01: _R_NONE, 0x18: _R_NONE, 0x19: _R_NONE,
    0x02: _R_OK, 0x05: _R_OK, 0x06: _R_OK, 0x07: _R_OK, 0x08: _R_OK, 0x0C: _R_OK,
    0x0D: _R_OK, 0x0E: _R_OK, 0x1A: _R_OK, 0x1B: _R_OK, 0x1F: _R_OK,
    0x03: _R_QUERY, 0x0A: _R_QUERY, 0x16: _R_PREPARE, 0x17: _R_EXECUTE, 0x1C: _R_FETCH,
    0x09: _R_STRING, 0x04: _R_FIELDS, 0x11: _R_AUTH,
}

# Result-set sub-states of a pending request.
_RS_FIRST = 0  # first response packet
_RS_COLS = 1  # column definitions
_RS_COLS_EOF = 2  # right after the column definitions (EOF packet or first row)
_RS_ROWS = 3  # rows until a terminator
_RS_PREP_PARAMS = 4  # COM_STMT_PREPARE response: parameter definitions
_RS_PREP_COLS = 5  # COM_STMT_PREPARE response: column definitions

# Phases of the connection.
_P_UNSYNCED = 0  # client side unknown, or known but no request boundary seen yet
_P_HANDSHAKE = 1  # server handshake seen, waiting for the client's response
_P_AUTH = 2  # auth exchange
_P_COMMAND = 3  # command phase
_P_TLS = 4  # switched to TLS: ignore everything
_P_ERROR = 5

_OTHER = wire.OTHER

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_I8 = struct.Struct("<b").unpack_from
_I16 = struct.Struct("<h").unpack_from
_I32 = struct.Struct("<i").unpack_from
_I64 = struct.Struct("<q").unpack_from
_F32 = struct.Struct("<f").unpack_from
_F64 = struct.Struct("<d").unpack_from


def _lenenc(b, i: int) -> tuple[int, int]:
    c = b[i]
    if c < 0xFB:
        return c, i + 1
    if c == 0xFC:
        if i + 3 > len(b):
            raise _Bad("short length-encoded integer")
        return _U16(b, i + 1)[0], i + 3
    if c == 0xFD:
        if i + 4 > len(b):
            raise _Bad("short length-encoded integer")
        return b[i + 1] | (b[i + 2] << 8) | (b[i + 3] << 16), i + 4
    if c == 0xFE:
        if i + 9 > len(b):
            raise _Bad("short length-encoded integer")
        return _U64(b, i + 1)[0], i + 9
    raise _Bad("invalid length-encoded integer 0x%02x" % c)


def _lenenc_str(b, i: int) -> tuple[bytes | None, int]:
    """Length-encoded string at i; None for the NULL marker 0xfb."""
    if b[i] == 0xFB:
        return None, i + 1
    n, i = _lenenc(b, i)
    j = i + n
    if j > len(b):
        raise _Bad("string runs past the end of the packet")
    return b[i:j], j


# ------------------------------------------------------------------ detection


def _looks_like_handshake(p) -> bool:
    """Payload of a handshake v10 packet? (version string printable, NUL-terminated)."""
    if len(p) < 2 or p[0] != 0x0A:
        return False
    j = p.find(b"\0", 1, 80)
    if j < 2:
        return False
    v = bytes(p[1:j])
    return v[:1].isdigit() and v.isascii() and v.decode("ascii").isprintable()


def looks_like_mysql(first: bytes, direction: str = "") -> bool:
    """Cheap detection from the first captured chunk of a connection.

    True for a server handshake v10 packet or a client command packet
    (``seq == 0``, known command byte, plausible length).  HTTP, TLS and text
    are rejected.  (`direction` is accepted for symmetry; both sides are tried.)
    """
    try:
        b = bytes(first[:512])
        if len(b) < 5 or b[:2] == b"\x16\x03":
            return False
        ln = b[0] | (b[1] << 8) | (b[2] << 16)
        if b[3] != 0 or ln == 0:
            return False
        payload = b[4:4 + ln]
        if payload[0] == 0x0A and 30 <= ln <= 1024:
            return _looks_like_handshake(payload)
        cmd = payload[0]
        if cmd not in COMMANDS or cmd == 0xFA:
            return False
        if len(first) > ln + 4:
            rest = bytes(first[ln + 4:ln + 8])
            if len(rest) < 4 or rest[3] != 0:
                return False  # a second packet in a command chunk must be a new command
        if cmd in (0x03, 0x16, 0x02):  # SQL / database name: must be text
            body = payload[1:200]
            if cmd == 0x03 and body[:2] == b"\x00\x01":
                body = body[2:]  # query attributes header
            if not body:
                return cmd != 0x16
            try:
                return body.decode("utf-8", "strict").isprintable() or b"\n" in body
            except UnicodeDecodeError:
                return len(payload) > 150  # may be cut inside a character
        if cmd in (0x01, 0x0E, 0x09, 0x0A, 0x1F, 0x0F):
            return ln == 1
        if cmd in (0x17, 0x19, 0x1A, 0x1C, 0x18):
            return ln >= 5
        return False
    except Exception:
        return False


# ---------------------------------------------------------------- framing


class _Dir(wire.Buffer):
    """Framing state of one direction."""

    __slots__ = ("rem", "full", "parts", "seq", "start", "trunc", "drop")

    def __init__(self) -> None:
        wire.Buffer.__init__(self)
        self.rem = -1  # payload bytes of the current physical packet still to come; -1: header next
        self.full = False  # current physical packet is 0xffffff bytes (a continuation follows)
        self.parts: list | None = None  # payload pieces of the logical packet being assembled
        self.seq = 0
        self.start = 0  # stream offset of the logical packet's header
        self.trunc = False
        self.drop = False  # discard everything (waiting for a request boundary)

    def discard(self) -> None:
        """Forget buffered bytes and any packet in progress."""
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        self.rem = -1
        self.parts = None

    def next_packet(self):
        """Next complete logical packet -> (payload, seq, start, truncated) or None."""
        buf = self.buf
        n = len(buf)
        pos = self.pos
        while True:
            rem = self.rem
            if rem < 0:
                if n - pos < 4:
                    self.pos = pos
                    return None
                ln = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
                if self.parts is None:
                    self.parts = []
                    self.seq = buf[pos + 3]
                    self.start = self.base + pos
                    self.trunc = False
                pos += 4
                rem = self.rem = ln
                self.full = ln == _MAX_PAYLOAD
            if n - pos < rem:
                self.pos = pos
                return None
            piece = buf[pos:pos + rem]
            pos += rem
            self.rem = -1
            parts = self.parts
            if self.full:
                parts.append(piece)
                continue
            self.pos = pos
            self.parts = None
            if parts:
                parts.append(piece)
                payload = b"".join(parts)
            else:
                payload = piece if type(piece) is bytes else bytes(piece)
            return payload, self.seq, self.start, self.trunc

    def skip(self, missing: int):
        """Apply `missing` uncaptured bytes.

        Returns (packet or None, bytes that overran the known packet).
        """
        if self.rem < 0:
            return None, missing
        buf = self.buf
        have = len(buf) - self.pos
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
        if self.full:
            return None, missing
        parts = self.parts
        self.parts = None
        return (b"".join(parts), self.seq, self.start, True), missing


# ------------------------------------------------------------- requests


class _Req:
    """A command waiting for (or receiving) its response."""

    __slots__ = ("cmd", "name", "sql", "ts", "kind", "rs", "left", "cols", "types", "rows",
                 "count", "trunc", "binary", "stmt", "extra", "ncols")

    def __init__(self, cmd: int, name: str, sql, ts: int, kind: int) -> None:
        self.cmd = cmd
        self.name = name
        self.sql = sql
        self.ts = ts
        self.kind = kind
        self.binary = kind == _R_EXECUTE or kind == _R_FETCH
        self.stmt = None  # statement id (prepared-statement commands)
        self.extra: dict | None = None
        self.ncols = 0  # COM_STMT_PREPARE: column definitions after the parameters
        self.reset()

    def reset(self) -> None:
        self.rs = _RS_FIRST
        self.left = 0
        self.cols: list = []
        self.types: list = []  # (type, flags) per column, for binary rows
        self.rows: list = []
        self.count = 0
        self.trunc = False


class MysqlParser(wire.TwoWayParser):
    """Incremental parser for both directions of one MySQL/MariaDB connection."""

    __slots__ = ("_max_rows", "_client", "_req", "_stmts", "_last_stmt",
                 "_server_caps", "_caps", "_conn_id", "_server_version", "_user", "_database",
                 "_plugin", "_swallow_eof", "_resync")

    PROTOCOL = "mysql"
    STOP_PHASE = _P_TLS
    ERROR_PHASE = _P_ERROR

    def __init__(self, max_rows: int = 5) -> None:
        self._max_rows = max(0, int(max_rows))
        self._dirs = {"read": _Dir(), "write": _Dir()}
        self._client: str | None = None  # direction carrying the client's packets
        self._phase = _P_UNSYNCED
        self._req: _Req | None = None
        self._stmts: dict[int, dict] = {}
        self._last_stmt = None
        self._server_caps = 0
        self._caps = 0
        self._conn_id = None
        self._server_version = None
        self._user = None
        self._database = None
        self._plugin = None
        self._swallow_eof = False
        self._resync = False

    # ------------------------------------------------------------------ API

    @property
    def failed(self) -> bool:
        """True once a parse_error message has been emitted (all input is then ignored)."""
        return self._phase == _P_ERROR

    @property
    def tls(self) -> bool:
        """True after the client asked for TLS (the rest is encrypted and ignored)."""
        return self._phase == _P_TLS

    @property
    def client_direction(self) -> str | None:
        """'read' or 'write': the direction carrying the client's packets, once known."""
        return self._client

    @property
    def connection_id(self) -> int | None:
        """Connection (thread) id from the server handshake, if seen."""
        return self._conn_id

    # ------------------------------------------------------------ internals

    def _release(self) -> None:
        for d in self._dirs.values():
            d.discard()
        self._req = None
        self._stmts = {}

    def _pump(self, direction: str, d: _Dir, ts: int, out: list) -> None:
        while self._phase < _P_TLS:
            if d.drop:
                d.discard()
                return
            pkt = d.next_packet()
            if pkt is None:
                return
            self._packet(direction, pkt, ts, out)
        if self._phase == _P_TLS:
            self._release()

    def _missing(self, direction: str, d: _Dir, missing: int, ts: int, out: list) -> None:
        if d.drop:
            d.base += missing
            return
        if d.rem < 0 and d.pos >= len(d.buf) and self._client is None:
            d.base += missing  # nothing known yet: resynchronise at the next chunk
            return
        pkt, over = d.skip(missing)
        if pkt is not None:
            self._packet(direction, pkt, ts, out)
        if not over or self._phase >= _P_TLS:
            return
        here = d.base + len(d.buf)
        if self._client is None or (direction != self._client and self._phase == _P_COMMAND):
            # Server side (or nothing known): emit what we have, wait for the next command.
            req = self._req
            if req is not None and req.kind != _R_SKIP and direction != self._client:
                req.trunc = True
                self._emit_result(req, ts, out, "rows" if req.cols else "unknown")
            self._req = None
            self._resync = self._client is not None
            d.discard()
            d.base += over
            d.drop = self._client is not None
            return
        raise _Fail("%d uncaptured bytes overrun the packet" % over, here)

    def _packet(self, direction: str, pkt, ts: int, out: list) -> None:
        payload, seq, start, trunc = pkt
        try:
            if self._client is None:
                self._detect(direction, payload, seq, trunc, ts, out)
            elif direction == self._client:
                self._on_client(payload, seq, trunc, ts, out)
            else:
                self._on_server(payload, seq, trunc, ts, out)
        except (_Bad, IndexError, struct.error, ValueError) as e:
            if trunc:  # a cut packet may not parse: not the peer's fault
                return
            reason = str(e) if isinstance(e, _Bad) else "short packet"
            raise _Fail("malformed %s packet: %s" % (
                "client" if direction == self._client else "server", reason), start) from None

    # ------------------------------------------------------- role detection

    def _detect(self, direction: str, p, seq: int, trunc: bool, ts: int, out: list) -> None:
        if seq == 0 and p and _looks_like_handshake(p):
            self._client = _OTHER[direction]
            self._dirs[self._client].discard()
            self._handshake(p)
            return
        if seq == 0 and p and p[0] in COMMANDS:
            self._client = direction
            self._phase = _P_COMMAND
            self._dirs[_OTHER[direction]].discard()
            self._on_client(p, seq, trunc, ts, out)
        # anything else: mid-connection noise before the first request; dropped

    def _handshake(self, p) -> None:
        self._phase = _P_HANDSHAKE
        ver, i = _cstr(p, 1)
        self._server_version = _text(ver)
        self._conn_id = _U32(p, i)[0]
        i += 4 + 8 + 1  # auth-plugin-data part 1 + filler
        caps = _U16(p, i)[0]
        i += 2
        if len(p) >= i + 5:
            caps |= _U16(p, i + 1)[0] << 16
            i += 5
            plen = p[i]
            i += 1 + 6
            caps |= _U32(p, i)[0] << 32  # MariaDB extended capabilities (0 on MySQL)
            i += 4
            if caps & CLIENT_SECURE_CONNECTION:
                i += max(13, plen - 8)
            if caps & CLIENT_PLUGIN_AUTH and i < len(p):
                self._plugin = _text(p[i:].partition(b"\0")[0])
        self._server_caps = caps

    # -------------------------------------------------------------- client

    def _on_client(self, p, seq: int, trunc: bool, ts: int, out: list) -> None:
        phase = self._phase
        if phase == _P_HANDSHAKE:
            self._handshake_response(p, trunc, ts, out)
            return
        if phase == _P_AUTH:
            if seq != 0 or not p or p[0] not in COMMANDS:
                return  # auth data (never reported)
            self._req = None
            self._phase = _P_COMMAND
        if seq != 0 or not p:
            return  # LOCAL INFILE data, auth switch responses, ... : not reported
        if self._resync:
            self._resync = False
            sd = self._dirs[_OTHER[self._client]]
            sd.discard()
            sd.drop = False
        self._swallow_eof = False
        self._command(p, trunc, ts, out)

    def _handshake_response(self, p, trunc: bool, ts: int, out: list) -> None:
        caps = _U16(p, 0)[0]
        if caps & CLIENT_PROTOCOL_41:
            caps = _U32(p, 0)[0]
            if caps & CLIENT_SSL and len(p) <= 36:
                self._phase = _P_TLS  # SSLRequest: the rest is TLS
                return
            caps |= _U32(p, 28)[0] << 32 if len(p) >= 32 else 0
            i = 32
        else:
            if caps & CLIENT_SSL and len(p) <= 5:
                self._phase = _P_TLS
                return
            i = 5
        self._caps = caps
        user, i = _cstr(p, i)
        if caps & CLIENT_PLUGIN_AUTH_LENENC:
            _, i = _lenenc_str(p, i)
        elif caps & CLIENT_SECURE_CONNECTION:
            i += 1 + p[i]
        else:
            _, i = _cstr(p, i)
        db = None
        if caps & CLIENT_CONNECT_WITH_DB and i < len(p):
            db, i = _cstr(p, i)
            db = _text(db)
        if caps & CLIENT_PLUGIN_AUTH and i < len(p):
            plugin, i = _cstr(p, i)
            self._plugin = _text(plugin)
        self._user = _text(user)
        self._database = db
        fields = {"command": "login", "sql": None, "user": self._user, "database": db,
                  "auth_plugin": self._plugin, "server_version": self._server_version,
                  "connection_id": self._conn_id}
        if trunc:
            fields["truncated"] = True
        out.append(Message("mysql.query", fields))
        self._req = _Req(-1, "login", None, ts, _R_AUTH)
        self._phase = _P_AUTH

    def _command(self, p, trunc: bool, ts: int, out: list) -> None:
        cmd = p[0]
        name = COMMANDS.get(cmd) or "COM_0x%02x" % cmd
        kind = _RESPONSE_KIND.get(cmd, _R_SKIP)
        fields: dict = {"command": name, "sql": None}
        req = _Req(cmd, name, None, ts, kind)
        if cmd == 0x03 or cmd == 0x16:  # COM_QUERY / COM_STMT_PREPARE
            i = 1
            if cmd == 0x03 and self._caps & self._server_caps & CLIENT_QUERY_ATTRIBUTES:
                n, i = _lenenc(p, 1)
                _, i = _lenenc(p, i)
                if n:
                    kind = req.kind = _R_QUERY
                    fields["query_attributes"] = n
                    i = len(p)  # attributes present: the SQL cannot be located cheaply
            fields["sql"] = req.sql = _text(p[i:])
        elif cmd == 0x02:  # COM_INIT_DB
            fields["database"] = _text(p[1:])
            req.extra = {"database": fields["database"]}
        elif cmd == 0x17:  # COM_STMT_EXECUTE
            self._execute(p, req, fields)
        elif cmd == 0x19 or cmd == 0x1A or cmd == 0x1C or cmd == 0x18:
            sid = _U32(p, 1)[0]
            st = self._stmts.get(sid)
            fields["statement_id"] = req.stmt = sid
            fields["sql"] = req.sql = st["sql"] if st else None
            if cmd == 0x19:
                self._stmts.pop(sid, None)
            elif cmd == 0x1C and st:
                req.types = list(st.get("col_types") or ())
                req.cols = list(st.get("columns") or ())
                req.rs = _RS_ROWS
        elif cmd == 0x11:  # COM_CHANGE_USER
            user, _ = _cstr(p, 1)
            fields["user"] = _text(user)
        elif cmd == 0x0C:
            fields["process_id"] = _U32(p, 1)[0] if len(p) >= 5 else None
        if trunc:
            fields["truncated"] = True
            req.trunc = True
        out.append(Message("mysql.query", fields))
        self._req = None if kind == _R_NONE else req
        if cmd == 0x01:
            self._phase = _P_COMMAND

    def _execute(self, p, req: _Req, fields: dict) -> None:
        sid = _U32(p, 1)[0]
        if sid == 0xFFFFFFFF and self._last_stmt is not None:
            sid = self._last_stmt  # MariaDB: "the statement prepared last"
        st = self._stmts.get(sid)
        fields["statement_id"] = req.stmt = sid
        fields["sql"] = req.sql = st["sql"] if st else None
        if st is None:
            return
        req.cols = list(st.get("columns") or ())
        req.types = list(st.get("col_types") or ())
        n = st["num_params"]
        if n <= 0:
            fields["params"] = []
            return
        i = 10
        nb = (n + 7) >> 3
        nulls = p[i:i + nb]
        i += nb
        if i >= len(p):
            raise _Bad("execute packet too short")
        bound = p[i]
        i += 1
        if bound:
            types = [(p[i + 2 * k], p[i + 2 * k + 1]) for k in range(n)]
            i += 2 * n
            st["param_types"] = types
        else:
            types = st.get("param_types")
        if not types or len(types) != n or len(nulls) != nb:
            fields["param_count"] = n
            return
        params = []
        for k in range(n):
            if nulls[k >> 3] & (1 << (k & 7)):
                params.append(None)
                continue
            t, fl = types[k]
            v, i = _binary_value(p, i, t, fl & 0x80)
            params.append(v)
        fields["params"] = params

    # -------------------------------------------------------------- server

    def _on_server(self, p, seq: int, trunc: bool, ts: int, out: list) -> None:
        phase = self._phase
        if phase == _P_AUTH or (self._req is not None and self._req.kind == _R_AUTH):
            self._auth_reply(p, ts, out)
            return
        req = self._req
        if req is None or phase != _P_COMMAND:
            if (self._swallow_eof and p[:1] == b"\xfe" and len(p) <= 5):
                self._swallow_eof = False
            return  # nothing to pair it with (mid-connection, after COM_QUIT, ...)
        if trunc:
            req.trunc = True
        kind = req.kind
        if kind == _R_SKIP:
            return
        b0 = p[0] if p else -1
        rs = req.rs
        if rs == _RS_FIRST:
            if b0 == 0xFF:
                self._error(req, p, ts, out)
                return
            if kind == _R_STRING:
                self._emit_result(req, ts, out, "ok", extra={"info": _text(p)})
                return
            if b0 == 0x00 and kind != _R_FIELDS and kind != _R_FETCH and len(p) >= 5:
                if kind == _R_PREPARE:
                    self._prepare_ok(req, p, ts, out)
                    return
                self._ok(req, p, ts, out)
                return
            if b0 == 0xFE and len(p) < 9 and kind in (_R_OK, _R_FIELDS, _R_FETCH):
                self._terminator(req, p, ts, out)
                return
            if kind == _R_OK:
                raise _Bad("unexpected response 0x%02x" % b0)
            if kind == _R_FIELDS:
                req.rs = rs = _RS_COLS
                req.left = -1  # until EOF
            elif kind == _R_FETCH:
                req.rs = rs = _RS_ROWS
            elif b0 == 0xFB and kind == _R_QUERY:
                req.extra = {"local_infile": _text(p[1:])}
                return  # the client sends the file; OK / ERR follows
            else:  # column count [+ metadata-follows byte]
                n, i = _lenenc(p, 0)
                if n == 0 or n > 65535:
                    raise _Bad("invalid column count %d" % n)
                if len(p) == i + 1 and p[i] == 0:
                    # metadata not resent: use what the prepare told us
                    if len(req.cols) != n:
                        req.cols = [None] * n
                        req.types = []
                    req.rs = _RS_COLS_EOF
                    return
                if len(p) > i + 1:
                    raise _Bad("junk after column count")
                req.cols = []
                req.types = []
                req.left = n
                req.rs = _RS_COLS
                return
        if rs == _RS_COLS:
            if req.left < 0 and b0 == 0xFE and len(p) < 9:
                self._terminator(req, p, ts, out)  # end of COM_FIELD_LIST
                return
            if b0 == 0xFF:
                self._error(req, p, ts, out)
                return
            name, t, fl = _column_def(p)
            req.cols.append(name)
            req.types.append((t, fl))
            if req.left > 0:
                req.left -= 1
                if req.left == 0:
                    req.rs = _RS_COLS_EOF
                    if req.cmd == 0x17 and req.stmt is not None:
                        st = self._stmts.get(req.stmt)
                        if st is not None:
                            st["columns"] = req.cols
                            st["col_types"] = req.types
            return
        if rs == _RS_COLS_EOF:
            req.rs = _RS_ROWS
            if b0 == 0xFE and len(p) <= 5:
                status = _U16(p, 3)[0] if len(p) >= 5 else 0
                if status & SERVER_STATUS_CURSOR_EXISTS:
                    req.extra = {"cursor": True}
                    self._emit_result(req, ts, out, "rows")
                return
            rs = _RS_ROWS
        if rs == _RS_ROWS:
            if b0 == 0xFE and len(p) < _MAX_PAYLOAD:
                self._terminator(req, p, ts, out)
                return
            if b0 == 0xFF:
                self._error(req, p, ts, out)
                return
            if req.count < self._max_rows:
                if req.binary:
                    req.rows.append(_binary_row(p, req.types, len(req.cols)))
                else:
                    req.rows.append(_text_row(p, len(req.cols), trunc))
            req.count += 1
            return
        if rs == _RS_PREP_PARAMS or rs == _RS_PREP_COLS:
            if b0 == 0xFE and len(p) <= 5:
                return  # EOF after a definition block (no CLIENT_DEPRECATE_EOF)
            name, t, fl = _column_def(p)
            if rs == _RS_PREP_PARAMS:
                req.left -= 1
            else:
                req.cols.append(name)
                req.types.append((t, fl))
                req.left -= 1
            if req.left <= 0:
                self._prepare_next(req, ts, out)

    def _auth_reply(self, p, ts: int, out: list) -> None:
        req = self._req
        b0 = p[0] if p else -1
        if b0 == 0x00 or b0 == 0xFF:
            self._phase = _P_COMMAND
            if req is not None:
                req.extra = {"auth_plugin": self._plugin}
                if b0 == 0x00:
                    self._ok(req, p, ts, out)
                else:
                    self._error(req, p, ts, out)
            self._req = None
        elif b0 == 0xFE and len(p) > 1:
            name, _ = _cstr(p, 1) if b"\0" in p[1:] else (p[1:], 0)
            self._plugin = _text(name)  # auth switch request
        # 0x01: more auth data; anything else ignored

    # ----------------------------------------------------------- responses

    def _result_fields(self, req: _Req, ts: int, status: str) -> dict:
        lat = None
        if req.ts is not None:
            lat = round((ts - req.ts) / 1e6, 3)
        f = {"command": req.name, "sql": req.sql, "status": status, "affected_rows": None,
             "last_insert_id": None, "warnings": None, "columns": list(req.cols),
             "rows": req.rows, "row_count": req.count, "error_code": None, "sql_state": None,
             "error_message": None, "latency_ms": lat}
        if req.stmt is not None:
            f["statement_id"] = req.stmt
        if req.trunc:
            f["truncated"] = True
        if req.extra:
            f.update(req.extra)
        return f

    def _emit_result(self, req: _Req, ts: int, out: list, status: str,
                     extra: dict | None = None) -> dict:
        f = self._result_fields(req, ts, status)
        if extra:
            f.update(extra)
        out.append(Message("mysql.result", f))
        self._req = None
        return f

    def _more(self, req: _Req, status: int) -> None:
        """After a result: keep the request pending when more results follow."""
        if status & SERVER_MORE_RESULTS_EXISTS and req.kind in (_R_QUERY, _R_EXECUTE):
            req.reset()
            req.extra = None
            if req.cmd == 0x17:
                req.cols = []
            self._req = req

    def _ok(self, req: _Req, p, ts: int, out: list) -> None:
        affected, i = _lenenc(p, 1)
        last_id, i = _lenenc(p, i)
        status = warnings = 0
        if i + 2 <= len(p):
            status = _U16(p, i)[0]
        if i + 4 <= len(p):
            warnings = _U16(p, i + 2)[0]
        f = self._emit_result(req, ts, out, "ok")
        f["affected_rows"] = affected
        f["last_insert_id"] = last_id
        f["warnings"] = warnings
        if req.cmd == 0x02 and req.extra:
            self._database = req.extra.get("database")
        self._more(req, status)

    def _terminator(self, req: _Req, p, ts: int, out: list) -> None:
        if len(p) <= 5:  # EOF packet
            warnings = _U16(p, 1)[0] if len(p) >= 3 else 0
            status = _U16(p, 3)[0] if len(p) >= 5 else 0
            affected = None
        else:  # OK packet with the 0xfe header (CLIENT_DEPRECATE_EOF)
            affected, i = _lenenc(p, 1)
            _, i = _lenenc(p, i)
            status = _U16(p, i)[0] if i + 2 <= len(p) else 0
            warnings = _U16(p, i + 2)[0] if i + 4 <= len(p) else 0
        f = self._emit_result(req, ts, out, "rows" if req.cols or req.kind != _R_OK else "ok")
        f["warnings"] = warnings
        if req.kind == _R_FIELDS:
            f["row_count"] = len(req.cols)
        self._more(req, status)

    def _error(self, req: _Req, p, ts: int, out: list) -> None:
        code = _U16(p, 1)[0]
        if code == 0xFFFF:
            return  # MariaDB progress report, not an error
        i = 3
        state = None
        if len(p) > 3 and p[3] == 0x23:  # '#'
            state = _text(p[4:9])
            i = 9
        f = self._emit_result(req, ts, out, "error")
        f["error_code"] = code
        f["sql_state"] = state
        f["error_message"] = _text(p[i:])

    def _prepare_ok(self, req: _Req, p, ts: int, out: list) -> None:
        sid = _U32(p, 1)[0]
        ncols = _U16(p, 5)[0]
        nparams = _U16(p, 7)[0]
        warnings = _U16(p, 10)[0] if len(p) >= 12 else 0
        req.stmt = sid
        req.extra = {"statement_id": sid, "param_count": nparams, "warnings": warnings}
        self._stmts[sid] = {"sql": req.sql, "num_params": nparams, "columns": None,
                            "col_types": None}
        self._last_stmt = sid
        if len(p) >= 13 and p[12] == 0:
            ncols = nparams = 0  # MariaDB: metadata not sent (cached)
        req.left = nparams
        req.rs = _RS_PREP_PARAMS
        req.cols = []
        req.types = []
        req.ncols = ncols
        if nparams == 0:
            self._prepare_next(req, ts, out)

    def _prepare_next(self, req: _Req, ts: int, out: list) -> None:
        if req.rs == _RS_PREP_PARAMS:
            ncols = req.ncols
            if ncols > 0:
                req.rs = _RS_PREP_COLS
                req.left = ncols
                return
        st = self._stmts.get(req.stmt)
        if st is not None:
            st["columns"] = list(req.cols)
            st["col_types"] = list(req.types)
        self._emit_result(req, ts, out, "ok")
        self._swallow_eof = not (self._caps & self._server_caps & CLIENT_DEPRECATE_EOF)


def _column_def(p) -> tuple[str | None, int, int]:
    """ColumnDefinition41 -> (name, type, flags)."""
    i = 0
    for _ in range(4):  # catalog, schema, table, org_table
        _, i = _lenenc_str(p, i)
    name, i = _lenenc_str(p, i)
    n = len(p)
    if n >= 13 and p[n - 13] == 0x0C:
        j = n - 12
    else:  # trailing default value (COM_FIELD_LIST) or extended metadata
        _, i = _lenenc_str(p, i)  # org_name
        if i < n and p[i] != 0x0C:
            _, i = _lenenc_str(p, i)  # MariaDB extended type info
        if i >= n or p[i] != 0x0C or i + 13 > n:
            raise _Bad("bad column definition")
        j = i + 1
    return (None if name is None else _text(name)), p[j + 6], _U16(p, j + 7)[0]


def _text_row(p, ncols: int, trunc: bool) -> list:
    row = []
    i = 0
    n = len(p)
    append = row.append
    for _ in range(ncols):
        if i >= n:
            if trunc:
                break
            raise _Bad("row has fewer values than columns")
        c = p[i]
        if c == 0xFB:
            append(None)
            i += 1
            continue
        if c < 0xFB:
            j = i + 1 + c
            i += 1
        else:
            ln, i = _lenenc(p, i)
            j = i + ln
        if j > n:
            if trunc:
                append(_text(p[i:]))
                break
            raise _Bad("row value runs past the end of the packet")
        append(p[i:j].decode("utf-8", "replace"))
        i = j
    return row


def _binary_value(p, i: int, t: int, unsigned: int):
    """Binary-protocol value of type `t` at i -> (JSON value, next i)."""
    if t == 1:
        return (p[i] if unsigned else _I8(p, i)[0]), i + 1
    if t == 2 or t == 13:
        return (_U16 if unsigned else _I16)(p, i)[0], i + 2
    if t == 3 or t == 9:
        return (_U32 if unsigned else _I32)(p, i)[0], i + 4
    if t == 8:
        return (_U64 if unsigned else _I64)(p, i)[0], i + 8
    if t == 4:
        return round(_F32(p, i)[0], 7), i + 4
    if t == 5:
        return _F64(p, i)[0], i + 8
    if t == 6:
        return None, i
    if t in (7, 10, 12):  # TIMESTAMP, DATE, DATETIME
        n = p[i]
        b = p[i + 1:i + 1 + n]
        if len(b) < n:
            raise _Bad("short date value")
        i += 1 + n
        if n == 0:
            return ("0000-00-00" if t == 10 else "0000-00-00 00:00:00"), i
        s = "%04d-%02d-%02d" % (_U16(b, 0)[0], b[2], b[3])
        if t != 10:
            s += " %02d:%02d:%02d" % ((b[4], b[5], b[6]) if n >= 7 else (0, 0, 0))
            if n >= 11:
                s += ".%06d" % _U32(b, 7)[0]
        return s, i
    if t == 11:  # TIME
        n = p[i]
        b = p[i + 1:i + 1 + n]
        if len(b) < n:
            raise _Bad("short time value")
        i += 1 + n
        if n == 0:
            return "00:00:00", i
        hours = _U32(b, 1)[0] * 24 + b[5]
        s = "%s%02d:%02d:%02d" % ("-" if b[0] else "", hours, b[6], b[7])
        if n >= 12:
            s += ".%06d" % _U32(b, 8)[0]
        return s, i
    v, i = _lenenc_str(p, i)
    return (None if v is None else _text(v)), i


def _binary_row(p, types: list, ncols: int) -> list:
    if not p or p[0] != 0:
        raise _Bad("binary row without 0x00 header")
    nb = (ncols + 9) >> 3
    nulls = p[1:1 + nb]
    i = 1 + nb
    row = []
    for k in range(ncols):
        bit = k + 2
        if nulls[bit >> 3] & (1 << (bit & 7)):
            row.append(None)
            continue
        if k < len(types):
            t, fl = types[k]
        else:
            t, fl = 253, 0  # unknown column type: cannot decode the rest
            row.append(None)
            break
        v, i = _binary_value(p, i, t, fl & 0x20)
        row.append(None if v is None else (v if isinstance(v, str) else str(v)))
    if i > len(p):
        raise _Bad("binary row runs past the end of the packet")
    return row
