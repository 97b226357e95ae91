"""Sans-IO HTTP/2 connection parser (passive observer of both directions).

This module owns turning the captured plaintext bytes of ONE HTTP/2
connection (both directions, as seen by the captured process) into
``http.request`` / ``http.response`` / ``parse_error`` messages.  It never
touches sockets, threads, clocks or bcc: bytes go in through
`Http2Parser.feed`, messages come out as a list.  "Need more data" is a value
(an empty list), never an exception.

Design notes
------------
* Roles: the direction whose bytes start with the client connection preface
  (``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``) is the client, the other one the
  server -- whichever of "read"/"write" that is.  A direction that starts
  with anything else is taken for the server (its first frame must be
  SETTINGS); then the other direction must start with the preface.  Both
  directions must begin with a SETTINGS frame (RFC 9113 section 3.4).
* Framing is done here (9-byte header via `struct`); no `h2.connection`
  state machine is driven, since it enforces one endpoint's rules.  Header
  blocks (HEADERS/PUSH_PROMISE + CONTINUATION) are decoded with one
  `hpack.Decoder` per direction, so dynamic-table state follows each
  encoder; table size updates inside blocks are honoured, and
  SETTINGS_HEADER_TABLE_SIZE / SETTINGS_MAX_FRAME_SIZE sent by one side
  raise the limits applied to the other side's frames (never lowered: the
  observer cannot see when a SETTINGS frame is acknowledged).
* Every header block is decoded, even for streams already closed or reset,
  so the HPACK state never drifts.
* One stream gives one ``http.request`` (when the client's END_STREAM is
  seen; a PUSH_PROMISE gives a pushed request at once) and one
  ``http.response`` (server's END_STREAM, or RST_STREAM / GOAWAY for
  either half still open, flagged ``"reset": True`` with ``error_code``).
  1xx informational header blocks are skipped.  Trailers are appended to
  ``headers``.  Headers and bodies are shaped by `http_shape`, the same
  shaper as HTTP/1's: a repeated field becomes a list of its values; only
  ``cookie`` crumbs are joined with "; " (RFC 9113 section 8.2.3: one
  cookie header split for compression).  Field names and values are decoded
  as latin-1, like the HTTP/1 parser.
* Bodies are kept up to ``max_body`` bytes (the rest is counted in
  ``body_len``; ``"truncated": True``); UTF-8 bodies are given as text,
  others as base64 with ``"body_encoding": "base64"`` (`http_shape.body_fields`).
* DATA payloads are streamed (never buffered whole); other frames are
  buffered, bounded by the receiver's SETTINGS_MAX_FRAME_SIZE.
* `feed(..., missing=n)`: uncaptured bytes inside a DATA payload (or its
  padding) are skipped and the message is marked truncated; anywhere else
  (frame header, HEADERS/CONTINUATION -- HPACK state lost --, the preface,
  other frames) the parser cannot resynchronise and fails.
* Malformed input puts the parser into an error state: exactly one
  ``parse_error`` {"protocol": "http2", "reason", "offset", "direction"}
  (offset = byte offset in that direction's stream, uncaptured bytes
  included) and every later call returns ``[]``.  No exception escapes
  `feed` for any input: it is `wire.TwoWayParser.feed`, the guarded feed of
  every connection parser.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import hpack

from orchestrator.parsers import wire
from orchestrator.parsers.http_shape import body_fields, header_fields, join_body

__all__ = [
    "Message",
    "Http2Parser",
    "looks_like_http2",
    "PREFACE",
    "MAX_HEADER_BLOCK",
    "MAX_STREAMS",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: Accumulated HEADERS/PUSH_PROMISE + CONTINUATION fragment limit.
MAX_HEADER_BLOCK = 262144
#: Decoded header list limit handed to hpack.
MAX_HEADER_LIST = 262144
#: Streams tracked at once (open requests/responses) before giving up.
MAX_STREAMS = 4096

_DEFAULT_MAX_FRAME: Final = 16384
_LARGEST_FRAME = (1 << 24) - 1
_SID_MASK: Final = 0x7FFFFFFF
_MIN_DETECT: Final = 8

# frame types
_DATA: Final = 0x0
_HEADERS: Final = 0x1
_PRIORITY: Final = 0x2
_RST_STREAM: Final = 0x3
_SETTINGS: Final = 0x4
_PUSH_PROMISE: Final = 0x5
_PING: Final = 0x6
_GOAWAY: Final = 0x7
_WINDOW_UPDATE: Final = 0x8
_CONTINUATION: Final = 0x9

# flags
_F_END_STREAM: Final = 0x1
_F_ACK: Final = 0x1
_F_END_HEADERS: Final = 0x4
_F_PADDED: Final = 0x8
_F_PRIORITY: Final = 0x20

# SETTINGS identifiers
_S_HEADER_TABLE_SIZE: Final = 0x1
_S_MAX_FRAME_SIZE: Final = 0x5

_FRAME_HEADER = struct.Struct(">HBBBL")  # length (16+8 bits), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY_HEAD = struct.Struct(">LL")

# direction states
_ST_PREFACE: Final = 0  # role/preface not settled yet
_ST_HEAD: Final = 1  # waiting for a 9-byte frame header
_ST_PAYLOAD: Final = 2  # buffering a non-DATA frame payload
_ST_DATA_PADLEN: Final = 3  # DATA frame with PADDED flag: waiting for the pad-length byte
_ST_DATA: Final = 4  # streaming a DATA payload (data_left, then pad_left)

_UNKNOWN: Final = 0
_CLIENT: Final = 1
_SERVER: Final = 2


Message = wire.Message  # type "http.request" | "http.response" | "parse_error"
_Fail = wire.Fail


class _Half:
    """One side of a stream: the request or the response."""

    __slots__ = ("seen", "done", "pseudo", "headers", "parts", "kept", "body_len", "trunc")

    def __init__(self) -> None:
        self.seen = False  # (final) header block received
        self.done = False  # message emitted
        self.pseudo: dict[str, str] = {}
        self.headers: list[tuple[str, str]] = []
        self.parts: list[Any] | None = None
        self.kept = 0
        self.body_len = 0
        self.trunc = False


class _Stream:
    __slots__ = ("sid", "req", "resp", "req_ts", "parent")

    def __init__(self, sid: int, parent: int = 0) -> None:
        self.sid = sid
        self.req = _Half()
        self.resp = _Half()
        self.req_ts: int | None = None  # capture time the request completed
        self.parent = parent  # stream the PUSH_PROMISE came on (pushed streams)


class _Dir(wire.Buffer):
    """Framing + HPACK state of the bytes one endpoint sends."""

    __slots__ = (
        "name", "role", "st", "first", "ftype", "flags", "sid",
        "flen", "fstart", "data_left", "pad_left", "data_half", "decoder", "max_frame",
        "block", "block_frags", "block_size",
    )

    def __init__(self, name: str) -> None:
        wire.Buffer.__init__(self)
        self.name = name
        self.role = _UNKNOWN
        self.st = _ST_PREFACE
        self.first = True  # the next frame is the first one (must be SETTINGS)
        self.ftype = 0
        self.flags = 0
        self.sid = 0
        self.flen = 0
        self.fstart = 0  # stream offset of the current frame header
        self.data_left = 0
        self.pad_left = 0
        self.data_half: _Half | None = None
        self.decoder: Any = new_decoder()
        self.max_frame = _DEFAULT_MAX_FRAME  # limit on frames THIS side sends
        # pending header block: (kind, stream id, flags, promised id, offset)
        self.block: tuple[int, int, int, int, int] | None = None
        self.block_frags: list[Any] = []
        self.block_size = 0


try:
    # Only the compiled build has it (orchestrator/fastpath.py hides it from the Python one).
    from orchestrator.parsers import hpack_accel  # type: ignore[attr-defined]
except ImportError:
    hpack_accel = None
else:
    import hpack.huffman_constants
    import hpack.table

    hpack_accel.setup(tuple(hpack.table.HeaderTable.STATIC_TABLE), hpack.huffman_constants.REQUEST_CODES,
                      hpack.huffman_constants.REQUEST_CODES_LENGTH)


def new_decoder():
    """One direction's HPACK decoder: hpack's, or the C one of the compiled build."""
    if hpack_accel is not None:
        return hpack_accel.Decoder(max_header_list_size=MAX_HEADER_LIST)
    return hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)


def decode_block(decoder: Any, data: Any) -> list:
    """hpack.Decoder.decode(data, raw=True), whichever decoder `decoder` is. A block the C
    decoder declines (a table size update, an error, ...) is decoded by hpack from the C
    decoder's table, and hpack's table then becomes the C decoder's."""
    if hpack_accel is None or type(decoder) is not hpack_accel.Decoder:
        return decoder.decode(data, raw=True)
    headers = decoder.decode(data)
    if headers is not None:
        return headers
    py = hpack.Decoder(max_header_list_size=decoder.max_header_list_size)
    table = py.header_table
    table._maxsize = decoder.maxsize
    table.dynamic_entries.extend(decoder.table)
    table._current_size = decoder.size
    py.max_allowed_table_size = decoder.max_allowed_table_size
    try:
        return py.decode(data, raw=True)  # type: ignore[return-value]
    finally:
        decoder.load([(bytes(n), bytes(v)) for n, v in table.dynamic_entries], table._current_size,
                     table.maxsize, py.max_allowed_table_size)


def looks_like_http2(first: Any, direction: Any) -> bool:
    """True iff `first` starts with the HTTP/2 client preface (a prefix of >= 8 bytes counts).

    Pass the first bytes of the client's direction ("read" or "write" as
    seen by the captured process).  A capture that starts mid-connection has
    lost the HPACK state and yields False.
    """
    try:
        if direction != "read" and direction != "write":
            return False
        head = bytes(first[: len(PREFACE)])
        return len(head) >= _MIN_DETECT and PREFACE.startswith(head)
    except Exception:
        return False


def _text(b: Any) -> str:
    return b.decode("latin-1")


class Http2Parser(wire.TwoWayParser):
    """Incremental parser for both directions of one HTTP/2 connection."""

    __slots__ = ("_max_body", "_read", "_write", "_streams", "_max_client_sid", "_max_push_sid")

    PROTOCOL = "http2"
    STOP_PHASE = 1  # _phase: 0 parsing, 1 failed
    ERROR_PHASE = 1

    def __init__(self, max_body: int = 16384) -> None:
        self._max_body = max(0, int(max_body))
        self._read = _Dir("read")
        self._write = _Dir("write")
        self._dirs = {"read": self._read, "write": self._write}
        self._streams: dict[int, _Stream] = {}
        self._max_client_sid = 0
        self._max_push_sid = 0
        self._phase = 0

    # ------------------------------------------------------------------ API

    @property
    def failed(self) -> bool:
        """True once a parse_error has been emitted (all input is then ignored)."""
        return self._phase == self.ERROR_PHASE

    @property
    def client_direction(self) -> str | None:
        """"read" or "write": the direction carrying the client's bytes, once known."""
        for d in (self._read, self._write):
            if d.role == _CLIENT:
                return d.name
        return None

    # feed(direction, data, ts, missing=0) -> list[Message]: wire.TwoWayParser.feed
    # (`ts` = capture time in ns, only used as a value).

    # ------------------------------------------------------------ internals

    def _release(self) -> None:
        self._streams = {}
        for d in (self._read, self._write):
            d.buf = b""
            d.block_frags = []
            d.data_half = None
            d.decoder = None

    def _pump(self, direction: str, d: _Dir, ts: int, out: list) -> None:
        self._run(d, ts, out)

    def _missing(self, direction: str, d: _Dir, missing: int, ts: int, out: list) -> None:
        self._skip_missing(d, missing, ts, out)

    def _other(self, d: _Dir) -> _Dir:
        return self._write if d is self._read else self._read

    def _run(self, d: _Dir, ts: int, out: list) -> None:
        buf = d.buf
        n = len(buf)
        pos = d.pos
        try:
            while True:
                st = d.st
                if st == _ST_HEAD:
                    if n - pos < 9:
                        break
                    hi, lo, ftype, flags, sid = _FRAME_HEADER.unpack_from(buf, pos)
                    flen = (hi << 8) | lo
                    sid &= _SID_MASK
                    d.fstart = fstart = d.base + pos
                    pos += 9
                    if d.first:
                        if ftype != _SETTINGS or flags & _F_ACK:
                            raise _Fail("connection preface: first frame is not SETTINGS",
                                        fstart)
                        d.first = False
                    if flen > d.max_frame:
                        raise _Fail("frame of %d bytes exceeds SETTINGS_MAX_FRAME_SIZE %d"
                                    % (flen, d.max_frame), fstart)
                    if d.block is not None and ftype != _CONTINUATION:
                        raise _Fail("expected CONTINUATION, got frame type %d" % ftype, fstart)
                    d.ftype = ftype
                    d.flags = flags
                    d.sid = sid
                    d.flen = flen
                    if ftype == _DATA:
                        if sid == 0:
                            raise _Fail("DATA frame on stream 0", fstart)
                        d.data_half = self._data_half(d, sid)
                        if flags & _F_PADDED:
                            if flen < 1:
                                raise _Fail("padded DATA frame without pad length", fstart)
                            d.st = _ST_DATA_PADLEN
                        else:
                            d.data_left = flen
                            d.pad_left = 0
                            d.st = _ST_DATA
                    else:
                        d.st = _ST_PAYLOAD
                    continue
                if st == _ST_DATA:
                    left = d.data_left
                    if left:
                        avail = n - pos
                        if avail <= 0:
                            break
                        take = left if left < avail else avail
                        half = d.data_half
                        if half is not None:
                            self._keep(half, buf, pos, pos + take)
                        pos += take
                        d.data_left = left = left - take
                        if left:
                            break
                    pad = d.pad_left
                    if pad:
                        avail = n - pos
                        take = pad if pad < avail else avail
                        pos += take
                        d.pad_left = pad = pad - take
                        if pad:
                            break
                    d.st = _ST_HEAD
                    self._data_end(d, ts, out)
                    continue
                if st == _ST_PAYLOAD:
                    flen = d.flen
                    if n - pos < flen:
                        break
                    payload = bytes(buf[pos:pos + flen])
                    pos += flen
                    d.st = _ST_HEAD
                    self._on_frame(d, payload, ts, out)
                    continue
                if st == _ST_DATA_PADLEN:
                    if n - pos < 1:
                        break
                    padlen = buf[pos]
                    pos += 1
                    if padlen > d.flen - 1:
                        raise _Fail("DATA padding longer than the frame", d.fstart)
                    d.data_left = d.flen - 1 - padlen
                    d.pad_left = padlen
                    d.st = _ST_DATA
                    continue
                # _ST_PREFACE
                if not self._preface(d, buf, pos, n):
                    break
                if d.role == _CLIENT:
                    pos += len(PREFACE)
                d.st = _ST_HEAD
        finally:
            d.pos = pos

    def _preface(self, d: _Dir, buf, pos: int, n: int) -> bool:
        """Settle the roles from the first bytes; False = need more data."""
        if d.role == _SERVER:
            return True
        k = n - pos
        if k > len(PREFACE):
            k = len(PREFACE)
        if buf[pos:pos + k] == PREFACE[:k]:
            if k < len(PREFACE):
                return False
            d.role = _CLIENT
            self._other(d).role = _SERVER
            return True
        if d.role == _CLIENT:
            raise _Fail("missing client connection preface", d.base + pos)
        d.role = _SERVER  # roles are always settled in pairs: the other one is unknown
        self._other(d).role = _CLIENT
        return True

    def _keep(self, half: _Half, buf, a: int, b: int) -> None:
        """Account body bytes buf[a:b]; keep what fits under max_body."""
        ln = b - a
        half.body_len += ln
        room = self._max_body - half.kept
        if ln > room:
            half.trunc = True
            if room <= 0:
                return
            b = a + room
            ln = room
        piece = bytes(buf[a:b])
        if half.parts is None:
            half.parts = [piece]
        else:
            half.parts.append(piece)
        half.kept += ln

    def _data_half(self, d: _Dir, sid: int) -> _Half | None:
        st = self._streams.get(sid)
        if st is None:
            return None  # closed/reset stream (frames in flight) or never opened
        half = st.req if d.role == _CLIENT else st.resp
        if half.done or not half.seen:
            return None
        return half

    def _data_end(self, d: _Dir, ts: int, out: list) -> None:
        half = d.data_half
        d.data_half = None
        if half is not None and not half.done and d.flags & _F_END_STREAM:
            self._complete(d, d.sid, ts, out)

    def _skip_missing(self, d: _Dir, missing: int, ts: int, out: list) -> None:
        # _run consumes every buffered byte in _ST_DATA, so leftovers mean a
        # state that cannot skip.
        here = d.base + len(d.buf)
        if d.pos < len(d.buf) or d.st != _ST_DATA:
            raise _Fail("%d uncaptured bytes outside a DATA payload" % missing, here)
        d.base = here
        d.buf = b""
        d.pos = 0
        step = missing if missing < d.data_left else d.data_left
        if step:
            d.data_left -= step
            half = d.data_half
            if half is not None:
                half.body_len += step
                half.trunc = True
        pad = missing - step
        if pad > d.pad_left:
            pad = d.pad_left
        d.pad_left -= pad
        d.base += step + pad
        missing -= step + pad
        if d.data_left == 0 and d.pad_left == 0:
            d.st = _ST_HEAD
            self._data_end(d, ts, out)
        if missing:
            raise _Fail("%d uncaptured bytes outside a DATA payload" % missing, d.base)

    # ------------------------------------------------------------- frames

    def _on_frame(self, d: _Dir, p: Any, ts: int, out: list) -> None:
        ftype = d.ftype
        flags = d.flags
        sid = d.sid
        fstart = d.fstart
        ln = len(p)
        if ftype == _HEADERS or ftype == _PUSH_PROMISE:
            if sid == 0:
                raise _Fail("header block on stream 0", fstart)
            off = 0
            padlen = 0
            if flags & _F_PADDED:
                if ln < 1:
                    raise _Fail("padded frame without pad length", fstart)
                padlen = p[0]
                off = 1
            promised = 0
            if ftype == _HEADERS:
                if flags & _F_PRIORITY:
                    off += 5
            else:
                if d.role != _SERVER:
                    raise _Fail("PUSH_PROMISE sent by the client", fstart)
                if ln >= off + 4:
                    promised = _U32.unpack_from(p, off)[0] & _SID_MASK
                off += 4
            if off + padlen > ln:
                raise _Fail("frame padding/priority longer than the frame", fstart)
            frag = p[off:ln - padlen] if (off or padlen) else p
            d.block = (ftype, sid, flags, promised, fstart)
            d.block_frags = [frag]
            d.block_size = len(frag)
            if flags & _F_END_HEADERS:
                self._end_block(d, ts, out)
            return
        if ftype == _CONTINUATION:
            blk = d.block
            if blk is None or blk[1] != sid:
                raise _Fail("unexpected CONTINUATION frame", fstart)
            d.block_size += ln
            if d.block_size > MAX_HEADER_BLOCK:
                raise _Fail("header block larger than %d bytes" % MAX_HEADER_BLOCK, blk[4])
            d.block_frags.append(p)
            if flags & _F_END_HEADERS:
                self._end_block(d, ts, out)
            return
        if ftype == _SETTINGS:
            if sid != 0:
                raise _Fail("SETTINGS frame on stream %d" % sid, fstart)
            if flags & _F_ACK:
                if ln:
                    raise _Fail("SETTINGS ACK with a payload", fstart)
                return
            if ln % 6:
                raise _Fail("SETTINGS payload length %d not a multiple of 6" % ln, fstart)
            peer = self._other(d)
            for i in range(0, ln, 6):
                ident, value = _SETTING.unpack_from(p, i)
                if ident == _S_HEADER_TABLE_SIZE:
                    dec = peer.decoder
                    if value > dec.max_allowed_table_size:
                        dec.max_allowed_table_size = value
                elif ident == _S_MAX_FRAME_SIZE:
                    if _DEFAULT_MAX_FRAME <= value <= _LARGEST_FRAME and value > peer.max_frame:
                        peer.max_frame = value
            return
        if ftype == _RST_STREAM:
            if sid == 0 or ln != 4:
                raise _Fail("malformed RST_STREAM frame", fstart)
            self._reset(sid, _U32.unpack(p)[0], ts, out)
            return
        if ftype == _GOAWAY:
            if sid != 0 or ln < 8:
                raise _Fail("malformed GOAWAY frame", fstart)
            last, code = _GOAWAY_HEAD.unpack_from(p)
            last &= _SID_MASK
            # streams initiated by the receiver above `last` will not be processed
            odd = 1 if d.role == _SERVER else 0
            for s in [s for s in self._streams if s > last and s & 1 == odd]:
                self._reset(s, code, ts, out)
            return
        if ftype == _PING:
            if sid != 0 or ln != 8:
                raise _Fail("malformed PING frame", fstart)
            return
        if ftype == _WINDOW_UPDATE:
            if ln != 4:
                raise _Fail("malformed WINDOW_UPDATE frame", fstart)
            return
        if ftype == _PRIORITY:
            if sid == 0 or ln != 5:
                raise _Fail("malformed PRIORITY frame", fstart)
            return
        # unknown / extension frame types are ignored (RFC 9113 section 5.5)

    def _end_block(self, d: _Dir, ts: int, out: list) -> None:
        kind, sid, flags, promised, fstart = d.block  # type: ignore[misc]
        frags = d.block_frags
        d.block = None
        d.block_frags = []
        data = frags[0] if len(frags) == 1 else b"".join(frags)
        try:
            raw = decode_block(d.decoder, data)
        except Exception as e:
            raise _Fail("HPACK decoding failed: %s" % (e,), fstart) from None
        if kind == _PUSH_PROMISE:
            if promised <= self._max_push_sid or promised & 1:
                return  # not a new server-initiated stream: decoded, ignored
            self._max_push_sid = promised
            pushed = self._new_stream(promised, sid, fstart)
            self._set_headers(pushed.req, raw)
            self._emit_request(pushed, ts, out, None)
            return
        st: Any = self._streams.get(sid)
        if d.role == _CLIENT:
            if st is None:
                if sid <= self._max_client_sid:
                    return  # closed/reset stream
                self._max_client_sid = sid
                st = self._new_stream(sid, 0, fstart)
            half = st.req
        else:
            if st is None:
                return
            half = st.resp
        if half.done:
            return
        if half.seen:
            for name, value in raw:
                if name[:1] != b":":
                    half.headers.append((_text(name), _text(value)))
        else:
            self._set_headers(half, raw)
            if d.role == _SERVER and not flags & _F_END_STREAM:
                status = half.pseudo.get(":status", "")
                if len(status) == 3 and status[0] == "1":
                    half.seen = False  # 1xx informational response: skip it
                    half.pseudo = {}
                    half.headers = []
                    return
        if flags & _F_END_STREAM:
            self._complete(d, sid, ts, out)

    def _new_stream(self, sid: int, parent: int, fstart: int) -> _Stream:
        if len(self._streams) >= MAX_STREAMS:
            raise _Fail("more than %d concurrent streams" % MAX_STREAMS, fstart)
        st = _Stream(sid, parent)
        self._streams[sid] = st
        return st

    @staticmethod
    def _set_headers(half: _Half, raw) -> None:
        half.seen = True
        pseudo = half.pseudo
        headers = half.headers
        for name, value in raw:
            if name[:1] == b":":
                pseudo[_text(name)] = _text(value)
            else:
                headers.append((_text(name), _text(value)))

    # ----------------------------------------------------------- messages

    def _complete(self, d: _Dir, sid: int, ts: int, out: list) -> None:
        st = self._streams.get(sid)
        if st is None:
            return
        if d.role == _CLIENT:
            self._emit_request(st, ts, out, None)
        else:
            self._emit_response(st, ts, out, None)

    def _emit_request(self, st: _Stream, ts: int, out: list, reset) -> None:
        half = st.req
        p = half.pseudo
        headers: dict[str, Any] = header_fields(half.headers)
        authority: Any = p.get(":authority")
        if authority is None:
            authority = headers.get("host")
        fields: dict[str, Any] = {
            "stream_id": st.sid,
            "method": p.get(":method"),
            "path": p.get(":path"),
            "authority": authority,
            "scheme": p.get(":scheme"),
            "version": "HTTP/2",
            "headers": headers,
        }
        body_fields(fields, join_body(half.parts), half.body_len, half.trunc)
        if st.parent:
            fields["pushed"] = True
            fields["promised_on_stream"] = st.parent
        if reset is not None:
            fields["reset"] = True
            fields["error_code"] = reset
        half.done = True
        st.req_ts = ts
        out.append(Message("http.request", fields))
        if st.resp.done:
            self._streams.pop(st.sid, None)

    def _emit_response(self, st: _Stream, ts: int, out: list, reset) -> None:
        half = st.resp
        status = half.pseudo.get(":status")
        req = st.req
        fields: dict[str, Any] = {
            "stream_id": st.sid,
            "status": int(status) if status and status.isdigit() and status.isascii() else None,
            "version": "HTTP/2",
            "headers": header_fields(half.headers),
        }
        body_fields(fields, join_body(half.parts), half.body_len, half.trunc)
        fields["request"] = {"method": req.pseudo.get(":method"), "path": req.pseudo.get(":path")}
        fields["latency_ms"] = (round((ts - st.req_ts) / 1e6, 3) if st.req_ts is not None
                                else None)
        if reset is not None:
            fields["reset"] = True
            fields["error_code"] = reset
        half.done = True
        out.append(Message("http.response", fields))
        if req.done:
            self._streams.pop(st.sid, None)

    def _reset(self, sid: int, code: int, ts: int, out: list) -> None:
        st = self._streams.pop(sid, None)
        if st is None:
            return
        if not st.req.done:
            self._emit_request(st, ts, out, code)
        if not st.resp.done:
            self._emit_response(st, ts, out, code)
