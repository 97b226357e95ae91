"""What the two-direction connection parsers (HTTP/2, MySQL, PostgreSQL) share: the guarded
`feed`, the internal errors and small decoders.  `Message`, `ParseError` and `Fail` come from
`orchestrator.parsers.base` (one of each for all parsers, HTTP/1 included)."""
from __future__ import annotations

from orchestrator.parsers import base

OTHER = {"read": "write", "write": "read"}

Message = base.Message
ParseError = base.ParseError
Fail = base.Fail


class Bad(Exception):
    """Internal: a packet or message body does not parse (converted to Fail by the caller)."""


def text(b) -> str:
    return bytes(b).decode("utf-8", "replace")


def cstr(b, i: int) -> tuple[bytes, int]:
    j = b.find(b"\0", i)
    if j < 0:
        raise Bad("missing NUL terminator")
    return b[i:j], j + 1


class Buffer:
    """The unparsed bytes of one direction: ``buf[pos:]``; ``base`` = stream offset of
    ``buf[0]`` (uncaptured bytes included).  A chunk that finds the buffer consumed replaces
    it (no copy); only leftovers are copied into a bytearray."""

    __slots__ = ("buf", "pos", "base")

    def __init__(self) -> None:
        self.buf: bytes | bytearray = b""
        self.pos = 0
        self.base = 0

    def append(self, data: bytes) -> None:
        buf = self.buf
        pos = self.pos
        if pos >= len(buf):
            self.base += len(buf)
            self.buf = data
        else:
            if type(buf) is bytes:
                buf = bytearray(memoryview(buf)[pos:])
                self.buf = buf
            else:
                del buf[:pos]
            self.base += pos
            buf += data
        self.pos = 0


class TwoWayParser(base.Parser):
    """Base of a connection parser fed both directions. A subclass sets PROTOCOL, STOP_PHASE
    (from it on, input is ignored: TLS, error) and ERROR_PHASE, keeps `_phase` and `_dirs`
    (direction → a `Buffer` subclass), and implements `_pump`,
    `_missing` and `_release`."""

    __slots__ = ()
    STOP_PHASE = 0
    ERROR_PHASE = 0

    def feed(self, direction: str, data: bytes, ts: int, missing: int = 0) -> list[Message]:
        """Feed the next chunk of one direction ("read"/"write" of the captured process).

        `ts` is the capture time (ns); `missing` the number of bytes that
        followed `data` on the wire but were not captured.
        Returns the messages completed by this chunk ([] = need more data).
        No exception escapes: malformed input gives one parse_error, then [] for ever.
        """
        if self._phase >= self.STOP_PHASE:
            return []
        out: list[Message] = []
        d = None
        try:
            try:
                d = self._dirs[direction]
            except (KeyError, TypeError):
                raise Fail("unknown direction %r" % (direction,), 0) from None
            if data:
                if type(data) is not bytes:
                    if not isinstance(data, (bytearray, memoryview)):
                        raise Fail("data is not bytes-like: %s" % type(data).__name__,
                                   d.base + len(d.buf))
                    data = bytes(data)
                d.append(data)
                self._pump(direction, d, ts, out)
            if missing and self._phase < self.STOP_PHASE:
                if not isinstance(missing, int):
                    raise Fail("missing is not an int: %r" % (missing,), d.base + len(d.buf))
                if missing > 0:
                    self._missing(direction, d, int(missing), ts, out)
        except Exception as e:  # Fail, or anything else: never let it escape
            self._guard(out, e, d.base + d.pos if d is not None else 0,
                        direction if d is not None else None)
        return out

    def _halt(self) -> None:
        self._phase = self.ERROR_PHASE
