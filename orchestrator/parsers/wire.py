"""What the two-direction connection parsers (HTTP/2, MySQL, PostgreSQL) share: the guarded
`feed`, the internal errors and small decoders.  `Message`, `ParseError` and `Fail` come from
`orchestrator.parsers.base` (one of each for all parsers, HTTP/1 included)."""
from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from orchestrator.parsers import base

OTHER = {"read": "write", "write": "read"}

Message = base.Message
ParseError = base.ParseError
Fail = base.Fail


class Bad(Exception):
    """Internal: a packet or message body does not parse (converted to Fail by the caller)."""


def text(b) -> str:
    return bytes(b).decode("utf-8", "replace")


def cstr(b: Any, i: int) -> tuple[Any, int]:
    j = b.find(b"\0", i)
    if j < 0:
        raise Bad("missing NUL terminator")
    return b[i:j], j + 1


@mypyc_attr(allow_interpreted_subclasses=True)
class Buffer:
    """The unparsed bytes of one direction: ``buf[pos:]``; ``base`` = stream offset of
    ``buf[0]`` (uncaptured bytes included).  A chunk that finds the buffer consumed replaces
    it (no copy); only leftovers are copied into a bytearray."""

    __slots__ = ("buf", "pos", "base")

    def __init__(self) -> None:
        self.buf: Any = b""                 # bytes | bytearray
        self.pos = 0
        self.base = 0

    def append(self, data: Any) -> None:
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


@mypyc_attr(allow_interpreted_subclasses=True)
class TwoWayParser(base.Parser):
    """Base of a connection parser fed both directions. A subclass sets PROTOCOL, STOP_PHASE
    (from it on, input is ignored: TLS, error) and ERROR_PHASE, sets `_phase` and `_dirs`
    (direction → a `Buffer` subclass), and implements `_pump`,
    `_missing` and `_release`.

    Compiled (scripts/build_fast.py), this class reads its subclasses' STOP_PHASE and
    ERROR_PHASE with getattr: a compiled read of a class attribute would see this class's own."""

    __slots__ = ("_phase", "_dirs")
    STOP_PHASE = 0
    ERROR_PHASE = 0
    _phase: int
    _dirs: Any

    def _pump(self, direction: str, d: Any, ts: int, out: list) -> None:
        raise NotImplementedError

    def _missing(self, direction: str, d: Any, missing: int, ts: int, out: list) -> None:
        raise NotImplementedError

    def feed(self, direction: Any, data: Any, ts: Any, missing: Any = 0) -> list[Message]:
        """Feed the next chunk of one direction ("read"/"write" of the captured process).

        `ts` is the capture time (ns); `missing` the number of bytes that
        followed `data` on the wire but were not captured.
        Returns the messages completed by this chunk ([] = need more data).
        No exception escapes: malformed input gives one parse_error, then [] for ever.
        """
        stop = getattr(self, "STOP_PHASE")
        if self._phase >= stop:
            return []
        out: list[Message] = []
        d: Any = None
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
            if missing and self._phase < stop:
                if not isinstance(missing, int):
                    raise Fail("missing is not an int: %r" % (missing,), d.base + len(d.buf))
                if missing > 0:
                    self._missing(direction, d, int(missing), ts, out)
        except Exception as e:  # Fail, or anything else: never let it escape
            self._guard(out, e, d.base + d.pos if d is not None else 0,
                        direction if d is not None else None)
        return out

    def _halt(self) -> None:
        self._phase = getattr(self, "ERROR_PHASE")
