"""What every protocol parser shares: the message type, the one error type, and the guard.

* `Message` -- every parsed message has ``type`` (the record type: "http.request",
  "mysql.result", "parse_error", ...) and ``fields`` (the record's JSON-ready fields).  The
  connection-level parsers (HTTP/2, MySQL, PostgreSQL) build plain `Message`s; HTTP/1's
  `Request` / `Response` subclass it and shape their ``fields`` on demand.
* `ParseError` -- the one parse-error message of all parsers: ``type`` "parse_error",
  ``fields`` {"protocol", "reason", "offset"} (+ "direction" from the two-direction parsers).
* `Fail` -- the one internal exception a parser raises on malformed input.  It never escapes
  a public method: `Parser._guard` turns it (or any other exception, as an "internal parser
  error") into one `ParseError`, puts the parser into its error state and drops its buffers.
  After that the parser ignores all input, so malformed traffic stops one connection's
  parser and never the worker that feeds it.

Sans-IO: nothing here (or in any parser) touches sockets, bcc, threads or clocks.
"""
from __future__ import annotations

from mypy_extensions import mypyc_attr

__all__ = ["Message", "ParseError", "Fail", "Parser"]

_ABSENT = object()


# Compiled by mypyc (scripts/build_fast.sh); the parsers that stay Python subclass these.
@mypyc_attr(allow_interpreted_subclasses=True)
class Message:
    """A parsed message: ``type`` = record type, ``fields`` = its JSON-ready fields."""

    __slots__ = ("type", "fields")

    def __init__(self, type: str, fields: dict) -> None:  # noqa: A002 - the record's word
        self.type = type
        self.fields = fields

    def __eq__(self, other):
        if not isinstance(other, Message):
            return NotImplemented
        return self.type == other.type and self.fields == other.fields

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "%s(%r, %r)" % (type(self).__name__, self.type, self.fields)


@mypyc_attr(allow_interpreted_subclasses=True)
class ParseError(Message):
    """The parse_error message: the parser stopped at `offset` (bytes of that direction's
    stream, uncaptured bytes included) for `reason`; it ignores all later input."""

    __slots__ = ()

    def __init__(self, protocol: str, reason: str, offset: int, direction=_ABSENT) -> None:
        fields = {"protocol": protocol, "reason": reason, "offset": offset}
        if direction is not _ABSENT:
            fields["direction"] = direction
        Message.__init__(self, "parse_error", fields)

    @property
    def protocol(self) -> str:
        return self.fields["protocol"]

    @property
    def reason(self) -> str:
        return self.fields["reason"]

    @property
    def offset(self) -> int:
        return self.fields["offset"]


class Fail(Exception):
    """Internal: malformed input at stream `offset`.  Never escapes a parser's public methods."""

    __slots__ = ("reason", "offset")

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset


@mypyc_attr(allow_interpreted_subclasses=True)
class Parser:
    """Base of every parser: the guard that turns any exception into one `ParseError`.

    A subclass sets PROTOCOL and implements `_halt` (enter the error state, in which `feed`
    returns []) and `_release` (drop buffers).  Its public methods run their work inside
    ``try: ... except Exception as e: self._guard(out, e, offset)``.
    """

    __slots__ = ()
    PROTOCOL = ""

    def _halt(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _fail(self, out: list, reason: str, offset: int, direction=_ABSENT) -> None:
        self._halt()
        # getattr: compiled, `self.PROTOCOL` would read this class's own "" for a Python subclass
        out.append(ParseError(getattr(self, "PROTOCOL"), reason, offset, direction))
        self._release()

    def _guard(self, out: list, exc: BaseException, offset: int, direction=_ABSENT) -> None:
        """The except clause of every public method: `exc` -> one ParseError + error state.
        `offset` is where an unexpected (non-`Fail`) exception is reported."""
        if type(exc) is Fail:
            self._fail(out, exc.reason, exc.offset, direction)
        else:  # defensive: a parser bug on odd input stops this parser, not the worker
            self._fail(out, "internal parser error: %s: %s" % (type(exc).__name__, exc), offset,
                       direction)
