"""What all parsers share: the HTTP header/body shaper, `Message`, `ParseError` and the guard."""
from __future__ import annotations

import struct

import hpack
import pytest

from orchestrator import fastpath

from orchestrator.parsers import base, http1, http2, http_shape, mysql, postgres, wire


# ---- header shaping (one rule for HTTP/1 and HTTP/2)

def test_headers_once_a_value_repeated_a_list_names_as_first_sent():
    assert http_shape.header_fields([("Host", "x"), ("A", "1"), ("a", "2"), ("A", "3, 4")]) == \
        {"Host": "x", "A": ["1", "2", "3, 4"]}
    assert http_shape.header_fields([]) == {}


def test_set_cookie_stays_a_list_cookie_is_one_string_joined_with_semicolons():
    sc = ["a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT", "b=2; Path=/"]
    assert http_shape.header_fields([("set-cookie", sc[0]), ("set-cookie", sc[1])]) == {"set-cookie": sc}
    assert http_shape.header_fields([("cookie", "a=1"), ("x", "1"), ("cookie", "b=2"), ("cookie", "c=3")]) == \
        {"cookie": "a=1; b=2; c=3", "x": "1"}
    assert http_shape.header_fields([("Cookie", "a=1"), ("COOKIE", "b=2")]) == {"Cookie": "a=1; b=2"}
    assert http_shape.header_fields([("Cookie", "a=1")]) == {"Cookie": "a=1"}
    # a 6-letter name that is not cookie is not joined
    assert http_shape.header_fields([("Accept", "a"), ("accept", "b")]) == {"Accept": ["a", "b"]}


def test_the_http1_module_exports_the_one_shaper():
    assert http1.header_fields is http_shape.header_fields


# ---- body shaping

@pytest.mark.parametrize("body, body_len, truncated, expected", [
    (b"hello", 5, False, {"body": "hello", "body_len": 5}),
    ("héllo".encode(), 6, False, {"body": "héllo", "body_len": 6}),
    (b"\xff\x00", 2, False, {"body": "/wA=", "body_len": 2, "body_encoding": "base64"}),
    (b"abc", 10, True, {"body": "abc", "body_len": 10, "truncated": True}),
    (b"", 0, False, {"body": "", "body_len": 0}),
])
def test_body_fields(body, body_len, truncated, expected):
    f = {"x": 1}
    assert http_shape.body_fields(f, body, body_len, truncated) is f
    assert f == {"x": 1, **expected}


def test_join_body():
    assert http_shape.join_body(None) == b"" and http_shape.join_body([]) == b""
    assert http_shape.join_body([b"ab"]) == b"ab" and http_shape.join_body([b"a", b"b"]) == b"ab"


# ---- the same request over HTTP/1 and HTTP/2 gives the same headers and body fields

def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, sid) + payload


BODY = b"\xff\x00\x01binary"
HEADERS = [("cookie", "a=1"), ("accept", "a"), ("cookie", "b=2"), ("accept", "b"),
           ("content-type", "application/octet-stream")]


def _h1_request(max_body: int) -> dict:
    raw = ("POST /p HTTP/1.1\r\n" + "".join("%s: %s\r\n" % h for h in HEADERS)
           + "content-length: %d\r\n\r\n" % len(BODY)).encode() + BODY
    msgs = http1.Http1Parser(max_body=max_body).feed(raw)
    assert len(msgs) == 1 and msgs[0].type == "http.request"
    return msgs[0].fields


def _h2_request(max_body: int) -> dict:
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/p"), (":scheme", "http"),
                                    (":authority", "x"), *HEADERS,
                                    ("content-length", str(len(BODY)))])
    data = (http2.PREFACE + _frame(4, 0, 0, b"") + _frame(1, 4, 1, block) + _frame(0, 1, 1, BODY))
    msgs = http2.Http2Parser(max_body=max_body).feed("write", data, 0)
    assert len(msgs) == 1 and msgs[0].type == "http.request"
    return msgs[0].fields


@pytest.mark.parametrize("max_body", [16384, 4])
def test_http1_and_http2_records_are_shaped_alike(max_body):
    h1, h2 = _h1_request(max_body), _h2_request(max_body)
    shaped = ("headers", "body", "body_len", "body_encoding", "truncated")
    assert {k: h1.get(k) for k in shaped} == {k: h2.get(k) for k in shaped}
    assert h1["headers"]["cookie"] == "a=1; b=2" and h1["headers"]["accept"] == ["a", "b"]
    assert h1["body_encoding"] == "base64" and h1["body_len"] == len(BODY)
    assert h1.get("truncated", False) == (max_body < len(BODY))


# ---- one Message, one ParseError, one guard for all parsers

def _parsers():
    return [
        ("http1", http1.Http1Parser(), lambda p, d: p.feed(d), "_run"),
        ("http2", http2.Http2Parser(), lambda p, d: p.feed("write", d, 0), "_pump"),
        ("mysql", mysql.MysqlParser(), lambda p, d: p.feed("write", d, 0), "_pump"),
        ("postgres", postgres.PostgresParser(), lambda p, d: p.feed("write", d, 0), "_pump"),
    ]


@pytest.mark.parametrize("exc", [ValueError("boom"), base.Fail("bad bytes", 7), RecursionError()])
@pytest.mark.parametrize("idx", range(4))
def test_any_exception_becomes_one_parse_error_and_an_error_state(idx, exc, monkeypatch):
    name, p, feed, method = _parsers()[idx]
    if fastpath.mode == "compiled" and type(p).__module__ in fastpath.MODULES:
        pytest.skip("compiled: its methods are bound at build time (test_fastpath runs this file as Python)")

    def explode(*_a, **_k):
        raise exc

    monkeypatch.setattr(type(p), method, explode)
    out = feed(p, b"GET / HTTP/1.1\r\n\r\n")
    assert len(out) == 1 and type(out[0]) is base.ParseError and isinstance(out[0], base.Message)
    err = out[0]
    assert err.type == "parse_error" and err.protocol == name == err.fields["protocol"]
    if type(exc) is base.Fail:
        assert (err.reason, err.offset) == ("bad bytes", 7)
    else:
        assert err.reason.startswith("internal parser error: %s" % type(exc).__name__)
    assert p.failed
    monkeypatch.undo()
    assert feed(p, b"GET / HTTP/1.1\r\n\r\n") == []


def test_shared_types():
    for mod in (wire, http2, mysql, postgres):
        assert mod.Message is base.Message
    assert http1.ParseError is wire.ParseError is base.ParseError
    assert issubclass(http1.Request, base.Message) and issubclass(http1.Response, base.Message)
    for cls in (http2.Http2Parser, mysql.MysqlParser, postgres.PostgresParser):
        assert cls.feed is wire.TwoWayParser.feed
    assert issubclass(http1.Http1Parser, base.Parser)


def test_parse_error_equality_and_fields():
    a = base.ParseError("http1", "r", 3)
    assert a == base.ParseError("http1", "r", 3) != base.ParseError("http1", "r", 4)
    assert a.fields == {"protocol": "http1", "reason": "r", "offset": 3}
    assert base.ParseError("mysql", "r", 3, None).fields["direction"] is None
    assert a == base.Message("parse_error", dict(a.fields))


@pytest.mark.parametrize("bad", [("sideways", b"x", 0), ("write", 12, 0), ("write", b"x", 0, "3")])
def test_bad_arguments_are_a_parse_error_for_every_two_way_parser(bad):
    for cls in (http2.Http2Parser, mysql.MysqlParser, postgres.PostgresParser):
        p = cls()
        out = p.feed(*bad)
        assert [m.type for m in out] == ["parse_error"] and p.failed, (cls, bad, out)
