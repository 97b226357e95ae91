"""What the two-direction wire-protocol parsers (MySQL, PostgreSQL) share: the message type,
the internal errors, small decoders, and the guarded `feed` that lets no exception escape."""
from __future__ import annotations

from dataclasses import dataclass

OTHER = {"read": "write", "write": "read"}


@dataclass(slots=True)
class Message:
    type: str  # "mysql.query" | "mysql.result" | "pg.query" | "pg.result" | "parse_error"
    fields: dict  # JSON-ready values only


class Fail(Exception):
    """Internal: malformed input.  Never escapes the public methods."""

    __slots__ = ("reason", "offset")

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset


class Bad(Exception):
    """Internal: a packet or message body does not parse (converted to Fail by the caller)."""


def text(b) -> str:
    return bytes(b).decode("utf-8", "replace")


def cstr(b, i: int) -> tuple[bytes, int]:
    j = b.find(b"\0", i)
    if j < 0:
        raise Bad("missing NUL terminator")
    return b[i:j], j + 1


class TwoWayParser:
    """Base of a connection parser fed both directions. A subclass sets PROTOCOL, TLS_PHASE and
    ERROR_PHASE, keeps `_phase` and `_dirs` (direction → buffer with `base` and `pos`), and
    implements `_pump`, `_missing` and `_release`."""

    __slots__ = ()
    PROTOCOL = ""
    TLS_PHASE = 0
    ERROR_PHASE = 0

    def feed(self, direction: str, data: bytes, ts: int, missing: int = 0) -> list[Message]:
        """Feed the next chunk of one direction ("read"/"write" of the captured process).

        `ts` is the capture time (ns); `missing` the number of bytes that
        followed `data` on the wire but were not captured.
        Returns the messages completed by this chunk ([] = need more data).
        """
        if self._phase >= self.TLS_PHASE:
            return []
        out: list[Message] = []
        d = None
        try:
            d = self._dirs[direction]
            if data:
                if type(data) is not bytes:
                    data = bytes(data)
                d.append(data)
                self._pump(direction, d, ts, out)
            if missing and self._phase < self.TLS_PHASE and missing > 0:
                self._missing(direction, d, int(missing), ts, out)
        except Fail as f:
            self._fail(out, f.reason, f.offset, direction)
        except Exception as e:  # defensive: never let anything escape
            self._fail(out, "internal parser error: %s: %s" % (type(e).__name__, e),
                       d.base + d.pos if d is not None else 0, direction)
        return out

    def _fail(self, out: list, reason: str, offset: int, direction) -> None:
        self._phase = self.ERROR_PHASE
        out.append(Message("parse_error", {"protocol": self.PROTOCOL, "reason": reason, "offset": offset,
                                           "direction": direction if direction in OTHER else None}))
        self._release()
