"""The one header and body shaper of ``http.request`` / ``http.response`` records, HTTP/1
and HTTP/2 alike.

Headers (`header_fields`): (name, value) pairs in wire order, trailers appended, become the
record's ``headers`` object.  A field sent once maps its name to its value; a field sent more
than once maps to the list of its values in order (``Set-Cookie`` values hold commas, so
they are never joined).  Names are matched case-insensitively and kept as first sent (HTTP/2
names are lower case on the wire).  One exception: ``cookie`` is always one string, its
pieces joined with "; ":

* HTTP/2 (RFC 9113 section 8.2.3) lets a client split its Cookie header into crumbs for
  better compression; they are one header, to be joined with "; " before any HTTP/1-style
  use.
* HTTP/1 (RFC 6265 section 5.4): a client sends at most one Cookie header.  Repeated Cookie
  headers do occur (proxies, non-browser clients); servers read them as one cookie string
  (as Node.js does, joining with "; "), and a ", "-join or a list would be read differently
  depending on the protocol the same request came over.  So the rule is the same for both:
  a consumer always finds ``headers.cookie`` (``Cookie`` in HTTP/1 spelling) as a string.

Bodies (`body_fields`): the kept body (at most the parser's ``max_body`` bytes) as UTF-8
text, or base64 with ``body_encoding: "base64"``; ``body_len`` = its true length on the
wire; ``truncated: true`` when bytes were cut or not captured.
"""
from __future__ import annotations

from base64 import b64encode
from typing import Any

__all__ = ["header_fields", "body_fields", "join_body"]


def header_fields(pairs: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """The ``headers`` object of an http.request / http.response record (see the module doc)."""
    out: dict[str, Any] = {}
    spelling: dict[str, str] = {}
    for name, value in pairs:
        key = spelling.setdefault(name.lower(), name)
        prev: Any = out.get(key)
        if prev is None:
            out[key] = value
        elif type(prev) is list:
            prev.append(value)
        elif len(key) == 6 and key.lower() == "cookie":
            out[key] = prev + "; " + value
        else:
            out[key] = [prev, value]
    return out


def join_body(parts: list[bytes] | None) -> bytes:
    """The body kept as pieces (None: none kept) as one bytes object."""
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


def body_fields(fields: dict, body: Any, body_len: int, truncated: bool) -> dict:
    """Add ``body``, ``body_len`` and, when they apply, ``body_encoding`` and ``truncated``
    to `fields` (returned)."""
    try:
        fields["body"] = body.decode("utf-8")
        fields["body_len"] = body_len
    except UnicodeDecodeError:
        fields["body"] = b64encode(body).decode("ascii")
        fields["body_len"] = body_len
        fields["body_encoding"] = "base64"
    if truncated:
        fields["truncated"] = True
    return fields
