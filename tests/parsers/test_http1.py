"""Tests for orchestrator.parsers.http1 (sans-IO HTTP/1.x stream parser).

Fixtures are byte files under fixtures/http1/ (regenerate with
fixtures/http1/generate.py).  Every fixture is fed whole, split in two at
every byte offset, and one byte at a time; all three must give the same events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.parsers.http1 import (
    MAX_HEADER_BYTES,
    Http1Parser,
    ParseError,
    Request,
    Response,
    header_fields,
    looks_like_http1,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "http1"


def Req(method, path, headers, body=b"", body_len=None, truncated=False, version="HTTP/1.1"):
    return Request(method, path, version, list(headers), body,
                   len(body) if body_len is None else body_len, truncated)


def Resp(status, reason, headers, body=b"", body_len=None, truncated=False, version="HTTP/1.1"):
    return Response(status, reason, version, list(headers), body,
                    len(body) if body_len is None else body_len, truncated)


@dataclass
class Err:
    """Expected ParseError: `reason_part` must occur in the reason."""

    reason_part: str
    offset: int


@dataclass
class Case:
    file: str
    events: list
    max_body: int = 16384
    head_responses: int = 0
    finish: bool = False
    finish_events: list = field(default_factory=list)
    upgraded: bool = False

    @property
    def data(self) -> bytes:
        return (FIXTURES / self.file).read_bytes()


H = [("Host", "h")]

CASES = [
    # ------------------------------------------------------------ requests
    Case("get_simple.bin", [
        Req("GET", "/index.html?q=1",
            [("Host", "example.com"), ("User-Agent", "curl/8.0.1"), ("Accept", "*/*")]),
    ]),
    Case("get_keepalive_x3.bin", [
        Req("GET", "/a", [("Host", "example.com"), ("Connection", "keep-alive")]),
        Req("GET", "/b", [("Host", "example.com"), ("Connection", "keep-alive")]),
        Req("GET", "/c", [("Host", "example.com"), ("Connection", "close")]),
    ]),
    Case("pipelined_requests.bin", [
        Req("GET", "/1", H),
        Req("HEAD", "/2", H),
        Req("POST", "/3", H + [("Content-Length", "5")], b"hello"),
        Req("DELETE", "/4", [], version="HTTP/1.0"),
    ]),
    Case("post_content_length.bin", [
        Req("POST", "/api/v1/items",
            [("Host", "api.example.com"), ("Content-Type", "application/json"),
             ("Content-Length", "27")],
            b'{"name":"widget","qty":42}\n'),
    ]),
    Case("chunked_request.bin", [
        Req("POST", "/upload",
            [("Host", "example.com"), ("Transfer-Encoding", "chunked"),
             ("Trailer", "Checksum"), ("Checksum", "abc123")],
            b"hello, world"),
        Req("GET", "/after", [("Host", "example.com")]),
    ]),
    Case("leading_crlf_between_requests.bin", [Req("GET", "/x", H), Req("GET", "/y", H)]),
    Case("bare_lf_requests.bin", [
        Req("GET", "/lf", H + [("X-Mixed", "yes")]),
        Req("POST", "/lf2", [("Content-Length", "3")], b"abc"),
        Req("GET", "/lf3", H),
    ]),
    Case("req_body_over_max.bin", max_body=16, events=[
        Req("PUT", "/big", H + [("Content-Length", "100")], bytes(range(16)),
            body_len=100, truncated=True),
        Req("GET", "/next", H),
    ]),
    Case("custom_method_after_first.bin", [Req("GET", "/", H), Req("FOO-BAR", "/x", H)]),
    Case("header_ows_and_empty_value.bin", [
        Req("GET", "/", [("Host", "example.com"), ("X-Spaces", "padded value"),
                         ("X-Empty", ""), ("x-lower-Case", "v:with:colons")]),
    ]),
    Case("latin1_header.bin", [
        Req("GET", "/caf\xc3\xa9", H + [("X-Latin", "caf\xe9")]),
    ]),
    # ----------------------------------------------------------- responses
    Case("resp_200_content_length.bin", [
        Resp(200, "OK", [("Content-Type", "text/plain"), ("Content-Length", "13")],
             b"Hello, world!"),
        Resp(404, "Not Found", [("Content-Length", "0")]),
    ]),
    Case("resp_chunked.bin", [
        Resp(200, "OK", [("Transfer-Encoding", "chunked")], b"Wikipedia in \r\n\r\nchunks."),
        Resp(200, "OK", [("Content-Length", "2")], b"ok"),
    ]),
    Case("resp_chunked_trailers.bin", [
        Resp(200, "OK", [("Transfer-Encoding", "gzip, chunked"), ("Trailer", "Expires"),
                         ("Expires", "Wed, 21 Oct 2015 07:28:00 GMT"), ("X-Trail", "1")],
             b"abc"),
    ]),
    Case("resp_204_then_200.bin", [
        Resp(204, "No Content", [("Server", "x")]),
        Resp(200, "OK", [("Content-Length", "3")], b"abc"),
    ]),
    Case("resp_304_then_200.bin", [
        Resp(304, "Not Modified", [("Content-Length", "1234"), ("ETag", '"v1"')]),
        Resp(200, "OK", [("Content-Length", "3")], b"xyz"),
    ]),
    Case("resp_100_continue_then_200.bin", [
        Resp(100, "Continue", []),
        Resp(201, "Created", [("Content-Length", "4")], b"done"),
    ]),
    Case("resp_101_upgrade.bin", upgraded=True, events=[
        Resp(101, "Switching Protocols",
             [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]),
    ]),
    Case("resp_head.bin", head_responses=1, events=[
        Resp(200, "OK", [("Content-Length", "5000"), ("Content-Type", "text/html")]),
        Resp(200, "OK", [("Content-Length", "2")], b"hi"),
    ]),
    Case("resp_until_close.bin", events=[], finish=True, finish_events=[
        Resp(200, "OK", [("Content-Type", "text/plain")],
             b"this body ends when the connection closes\r\n"
             b"HTTP/1.1 200 OK\r\n\r\n(not a message)", version="HTTP/1.0"),
    ]),
    Case("resp_chunked_over_max.bin", max_body=10, events=[
        Resp(200, "OK", [("Transfer-Encoding", "chunked")], b"0123456789",
             body_len=16, truncated=True),
        Resp(200, "OK", [("Content-Length", "4")], b"WXYZ"),
    ]),
    Case("resp_bare_lf_chunked.bin", [
        Resp(200, "OK", [("Transfer-Encoding", "chunked")], b"abc"),
        Resp(500, "", [("Content-Length", "1")], b"x"),
    ]),
    # ----------------------------------------------------------- malformed
    Case("bad_request_line.bin", [Err("malformed request line", 0)]),
    Case("bad_version.bin", [Err("invalid HTTP version", 0)]),
    Case("not_http_tls.bin", [Err("not an HTTP/1.x message start", 0)]),
    Case("garbage_after_request.bin", [Req("GET", "/", H), Err("invalid request method", 27)]),
    Case("bad_content_length.bin", [Err("invalid Content-Length", 0)]),
    Case("conflicting_content_length.bin", [Err("conflicting Content-Length", 0)]),
    Case("bad_chunk_size.bin", [Err("invalid chunk size", 55)]),
    Case("bad_chunk_terminator.bin", [Err("missing CRLF after chunk data", 53)]),
    Case("header_too_big.bin", [Err("header block larger than", 0)]),
    Case("obs_fold.bin", [Err("obsolete line folding", 36)]),
    Case("header_no_colon.bin", [Err("invalid header line", 17)]),
    Case("bad_status_line.bin", [Err("invalid status line", 0)]),
    Case("resp_garbage_after_body.bin", [
        Resp(200, "OK", [("Content-Length", "2")], b"hi"),
        Err("expected a status line", 40),
    ]),
    Case("request_te_not_chunked.bin", [Err("Transfer-Encoding", 0)]),
]

CASE_IDS = [c.file.removesuffix(".bin") for c in CASES]


def run(case: Case, chunks) -> tuple[list, Http1Parser]:
    """Feed `chunks`; check the error-state contract on the way."""
    p = Http1Parser(max_body=case.max_body)
    for _ in range(case.head_responses):
        p.expect_head_response()
    events: list = []
    for chunk in chunks:
        out = p.feed(chunk)
        if events and isinstance(events[-1], ParseError):
            assert out == [], "parser produced events after a ParseError"
        events += out
    if case.finish:
        events += p.finish()
    return events, p


def assert_matches(got: list, expected: list) -> None:
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        if isinstance(e, Err):
            assert isinstance(g, ParseError), g
            assert e.reason_part in g.reason, g
            assert g.offset == e.offset, g
        else:
            assert g == e


def test_all_fixture_files_are_covered():
    files = {p.name for p in FIXTURES.glob("*.bin")}
    assert files == {c.file for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_whole(case: Case):
    events, p = run(case, [case.data])
    assert_matches(events, case.events + case.finish_events)
    errors = [e for e in events if isinstance(e, ParseError)]
    assert len(errors) <= 1
    assert p.failed == bool(errors)
    if errors:
        assert events[-1] is errors[0]
        assert p.feed(b"GET / HTTP/1.1\r\n\r\n") == []
        assert p.feed(b"HTTP/1.1 200 OK\r\n\r\n") == []
        assert p.finish() == []
    assert p.upgraded == case.upgraded
    if case.upgraded:
        assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == []


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_split_everywhere(case: Case):
    data = case.data
    expected, _ = run(case, [data])
    offsets = range(len(data) + 1)
    if len(data) > 20000:
        # The 66 KB header-limit fixture: every offset takes ~6 s, so cover the
        # first/last 1000 bytes and around the limit densely, the rest sparsely.
        offsets = sorted(
            set(range(0, len(data) + 1, 61)) | set(range(0, 1000))
            | set(range(MAX_HEADER_BYTES - 1000, MAX_HEADER_BYTES + 1000))
            | set(range(len(data) - 1000, len(data) + 1)))
    for k in offsets:
        events, _ = run(case, [data[:k], data[k:]])
        assert events == expected, "split at %d" % k


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_byte_at_a_time(case: Case):
    data = case.data
    expected, _ = run(case, [data])
    events, _ = run(case, [data[i:i + 1] for i in range(len(data))])
    assert events == expected


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_random_chunking(case: Case):
    data = case.data
    expected, _ = run(case, [data])
    rng = random.Random(hash(case.file) & 0xFFFF)
    for _ in range(20):
        chunks, i = [], 0
        while i < len(data):
            n = rng.choice((1, 2, 3, 7, 16, 100, 4096))
            chunks.append(data[i:i + n])
            i += n
        events, _ = run(case, chunks)
        assert events == expected


# --------------------------------------------------------------- behaviour


def test_keepalive_one_event_per_feed():
    p = Http1Parser()
    for path in ("/a", "/b", "/c"):
        out = p.feed(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
        assert out == [Req("GET", path, H)]
    assert p.role == "request"


def test_pipelined_requests_in_one_feed():
    p = Http1Parser()
    out = p.feed(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
    assert [e.path for e in out] == ["/1", "/2", "/3"]


def test_need_more_data_is_empty_list():
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n") == []
    assert p.feed(b"") == []
    assert not p.failed
    assert p.feed(b"\r\n") == [Req("GET", "/", H)]


def test_head_responses_fifo_and_1xx_does_not_consume():
    p = Http1Parser()
    p.expect_head_response()
    p.expect_head_response()
    out = p.feed(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert [(e.status, e.body) for e in out] == [(100, b""), (200, b""), (404, b""), (200, b"abc")]


def test_until_close_streamed_and_finish():
    p = Http1Parser(max_body=8)
    assert p.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc") == []
    assert p.feed(b"defghijk") == []
    out = p.finish()
    assert out == [Resp(200, "OK", [("Connection", "close")], b"abcdefgh",
                        body_len=11, truncated=True)]
    assert p.finish() == []
    assert p.feed(b"more") == []
    assert not p.failed


def test_finish_inside_content_length_body_is_truncated_message():
    p = Http1Parser()
    assert p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123") == []
    assert p.finish() == [Resp(200, "OK", [("Content-Length", "10")], b"0123",
                               body_len=4, truncated=True)]


def test_finish_inside_headers_is_error():
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\nHost: h\r\n") == []
    out = p.finish()
    assert len(out) == 1 and isinstance(out[0], ParseError) and out[0].offset == 0
    assert p.failed


def test_finish_idle_is_empty():
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\n\r\n\r\n") == [Req("GET", "/", [])]
    assert p.finish() == []
    assert not p.failed
    assert Http1Parser().finish() == []


def test_large_body_streamed_in_many_feeds():
    body = bytes(random.Random(1).randbytes(1_000_000))
    msg = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    p = Http1Parser(max_body=1000)
    events = []
    for i in range(0, len(msg), 65536):
        events += p.feed(msg[i:i + 65536])
    assert len(events) == 1
    ev = events[0]
    assert ev.body == body[:1000] and ev.body_len == len(body) and ev.truncated


def test_body_exactly_max_body_not_truncated():
    p = Http1Parser(max_body=5)
    out = p.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    assert out[0].body == b"hello" and not out[0].truncated
    p = Http1Parser(max_body=0)
    out = p.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
    assert out[0].body == b"" and out[0].body_len == 5 and out[0].truncated


def test_header_block_limit_boundary():
    def msg(total: int) -> bytes:
        head = b"GET / HTTP/1.1\r\nX: "
        tail = b"\r\n\r\n"
        return head + b"a" * (total - len(head) - len(tail)) + tail

    ok = msg(MAX_HEADER_BYTES)
    assert len(ok) == MAX_HEADER_BYTES
    out = Http1Parser().feed(ok)
    assert len(out) == 1 and isinstance(out[0], Request)
    out = Http1Parser().feed(msg(MAX_HEADER_BYTES + 1))
    assert len(out) == 1 and isinstance(out[0], ParseError)
    # without a terminator the error comes as soon as the limit is passed
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 60000) == []
    out = p.feed(b"a" * 6000)
    assert len(out) == 1 and isinstance(out[0], ParseError)


def test_content_length_variants():
    ok = Http1Parser().feed(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc")
    assert ok[0].body == b"abc"
    for bad in (b"-1", b"+3", b"0x3", b"3 3", b"", b"\xb2", b"1_0", b"99999999999999999999999"):
        out = Http1Parser().feed(b"POST / HTTP/1.1\r\nContent-Length: " + bad + b"\r\n\r\nabc")
        assert len(out) == 1 and isinstance(out[0], ParseError), bad


def test_chunk_size_variants():
    for bad in (b"0x3", b"-3", b"+3", b"1_0", b"", b"g", b"11111111111111111"):
        out = Http1Parser().feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + bad + b"\r\nabc\r\n0\r\n\r\n")
        assert len(out) == 1 and isinstance(out[0], ParseError), bad
    out = Http1Parser().feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00a \r\n0123456789\r\n0\r\n\r\n")
    assert out[0].body == b"0123456789"


def test_transfer_encoding_overrides_content_length():
    out = Http1Parser().feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n")
    assert out[0].body == b"ok"


def test_response_non_chunked_transfer_encoding_reads_until_close():
    p = Http1Parser()
    assert p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b") == []
    assert p.finish()[0].body == b"\x1f\x8b"


def test_upgrade_on_request_side():
    p = Http1Parser()
    assert p.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")[0].path == "/ws"
    p.upgrade()
    assert p.upgraded
    assert p.feed(b"\x81\x85abcdefghi") == []
    assert not p.failed


def test_feed_accepts_bytearray_and_memoryview():
    p = Http1Parser()
    assert p.feed(bytearray(b"GET /a HTTP/1.1\r\n\r\n"))[0].path == "/a"
    assert p.feed(memoryview(b"GET /b HTTP/1.1\r\n\r\n"))[0].path == "/b"


def test_offsets_count_across_feeds():
    p = Http1Parser()
    p.feed(b"GET / HTTP/1.1\r\n\r\n")  # 18 bytes
    out = p.feed(b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
    assert out == [ParseError("http1", out[0].reason, 18 + 16)]


# ------------------------------------------------------------ missing bytes


def test_missing_inside_content_length_body_then_next_message():
    p = Http1Parser()
    head = b"POST /up HTTP/1.1\r\nContent-Length: 100\r\n\r\n"
    assert p.feed(head + b"x" * 40, missing=60) == [
        Req("POST", "/up", [("Content-Length", "100")], b"x" * 40, body_len=100, truncated=True)
    ]
    assert p.feed(b"GET /next HTTP/1.1\r\n\r\n") == [Req("GET", "/next", [])]


def test_missing_partly_inside_body():
    p = Http1Parser()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    assert p.feed(head + b"y" * 10, missing=30) == []
    out = p.feed(b"z" * 60 + b"HTTP/1.1 204 No Content\r\n\r\n")
    assert out[0].body == b"y" * 10 + b"z" * 60 and out[0].body_len == 100 and out[0].truncated
    assert out[1].status == 204


def test_missing_inside_chunk_data_then_next_message():
    p = Http1Parser()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert p.feed(head + b"64\r\n" + b"a" * 50, missing=50) == []
    out = p.feed(b"\r\n3\r\nbcd\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n!")
    assert out[0].body == b"a" * 50 + b"bcd" and out[0].body_len == 103 and out[0].truncated
    assert out[1].body == b"!"


def test_missing_beyond_body_end_emits_message_then_error():
    p = Http1Parser()
    out = p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", missing=20)
    assert out[0].body == b"01234" and out[0].body_len == 10 and out[0].truncated
    assert isinstance(out[1], ParseError) and out[1].offset == 39 + 10
    assert p.failed and p.feed(b"HTTP/1.1 200 OK\r\n\r\n") == []


def test_missing_in_headers_is_error():
    p = Http1Parser()
    out = p.feed(b"GET / HTTP/1.1\r\nHost: ex", missing=100)
    assert len(out) == 1 and isinstance(out[0], ParseError) and out[0].offset == 24
    assert p.failed
    assert p.feed(b"GET / HTTP/1.1\r\n\r\n") == []


def test_missing_in_chunk_size_line_is_error():
    p = Http1Parser()
    out = p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", missing=5)
    assert len(out) == 1 and isinstance(out[0], ParseError)


def test_missing_between_messages_is_error():
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\n\r\n", missing=10)[1:] == [
        ParseError("http1", "10 uncaptured bytes outside a message body", 18)]
    p = Http1Parser()
    out = p.feed(b"", missing=3)
    assert len(out) == 1 and isinstance(out[0], ParseError) and out[0].offset == 0


def test_missing_in_until_close_body_is_counted():
    p = Http1Parser()
    assert p.feed(b"HTTP/1.0 200 OK\r\n\r\nabc", missing=1000) == []
    assert p.feed(b"def") == []
    out = p.finish()
    assert out[0].body == b"abcdef" and out[0].body_len == 1006 and out[0].truncated


def test_missing_zero_or_negative_is_ignored():
    p = Http1Parser()
    assert p.feed(b"GET / HTTP/1.1\r\n", missing=0) == []
    assert p.feed(b"\r\n", missing=-5) == [Req("GET", "/", [])]


# ------------------------------------------------------------- robustness


def _check_contract(p: Http1Parser, chunks, missing_rng=None) -> list:
    events: list = []
    failed = False
    for c in chunks:
        miss = 0
        if missing_rng is not None and missing_rng.random() < 0.1:
            miss = missing_rng.randrange(0, 200)
        out = p.feed(c, miss)
        assert isinstance(out, list)
        if failed:
            assert out == []
        for e in out:
            assert isinstance(e, (Request, Response, ParseError))
        errs = [e for e in out if isinstance(e, ParseError)]
        assert len(errs) <= 1
        if errs:
            assert out[-1] is errs[0]
            assert not errs[0].reason.startswith("internal"), errs[0]
            failed = True
        assert p.failed == failed
        events += out
    fin = p.finish()
    if failed:
        assert fin == []
    events += fin
    assert sum(isinstance(e, ParseError) for e in events) <= 1
    return events


def _random_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randrange(1, 40)
        chunks.append(data[i:i + n])
        i += n
    return chunks


PREFIXES = [b"", b"GET ", b"HTTP/1.1 ", b"POST / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"]
ALPHABET = b"GETPOST HTP/1.0123456789abcdefxX:;\r\n\r\n\n \t-,\x00\xff"


def test_random_bytes_never_raise():
    rng = random.Random(12345)
    for _ in range(3000):
        n = rng.randrange(0, 200)
        if rng.random() < 0.5:
            body = bytes(rng.choice(ALPHABET) for _ in range(n))
        else:
            body = rng.randbytes(n)
        data = rng.choice(PREFIXES) + body
        p = Http1Parser(max_body=rng.choice((0, 8, 16384)))
        if rng.random() < 0.3:
            p.expect_head_response()
        _check_contract(p, _random_chunks(rng, data), missing_rng=rng)
        # without missing bytes, chunking must not change the result
        whole = _check_contract(Http1Parser(), [data])
        again = _check_contract(Http1Parser(), _random_chunks(rng, data))
        assert whole == again
        assert isinstance(looks_like_http1(data), bool)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a byte
            i = min(i, len(b) - 1)
            b[i] = rng.randrange(256)
        elif op == 1:  # insert interesting bytes
            b[i:i] = rng.choice((b"\r", b"\n", b"\r\n", b":", b" ", b";", b"0", b"f", b"\x00"))
        elif op == 2 and b:  # delete a run
            del b[i:i + rng.randrange(1, 8)]
        elif op == 3:  # truncate
            del b[i:]
        else:  # duplicate a slice
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j):max(i, j)][:64]
    return bytes(b)


@pytest.mark.parametrize("case", [c for c in CASES if len(c.data) < 5000],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if len(c.data) < 5000])
def test_mutated_fixtures_never_raise(case: Case):
    rng = random.Random(len(case.file) * 7919 + len(case.data))
    for _ in range(300):
        data = _mutate(rng, case.data)
        p = Http1Parser(max_body=case.max_body)
        for _ in range(case.head_responses):
            p.expect_head_response()
        _check_contract(p, _random_chunks(rng, data), missing_rng=rng)
        whole = _check_contract(Http1Parser(max_body=case.max_body), [data])
        split = _check_contract(Http1Parser(max_body=case.max_body), _random_chunks(rng, data))
        assert whole == split


def test_bad_argument_types_do_not_raise():
    p = Http1Parser()
    out = p.feed("GET / HTTP/1.1\r\n\r\n")  # str instead of bytes
    assert len(out) == 1 and isinstance(out[0], ParseError)
    p = Http1Parser()
    out = p.feed(b"GET / HTTP/1.1\r\n", missing="x")
    assert len(out) == 1 and isinstance(out[0], ParseError)


# ----------------------------------------------------------- detection


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"POST ", b"HEAD /x HTTP/1.0", b"OPTIONS * HTTP/1.1",
    b"CONNECT host:443 HTTP/1.1", b"PATCH /", b"PUT /", b"DELETE /", b"TRACE /",
    b"PROPFIND /dav HTTP/1.1", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 404", b"HTTP/1.",
    bytearray(b"GET /"), memoryview(b"HTTP/1.1 200"),
])
def test_looks_like_http1_true(data):
    assert looks_like_http1(data) is True


@pytest.mark.parametrize("data", [
    b"", b"G", b"GET", b"GET/ HTTP/1.1", b"get / HTTP/1.1", b"HTTP/2 200", b"HTTP/1",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x00", b" GET / HTTP/1.1",
    b"FOO / HTTP/1.1", b"SSH-2.0-OpenSSH", b"\x00" * 20, b"\r\nGET / HTTP/1.1",
])
def test_looks_like_http1_false(data):
    assert looks_like_http1(data) is False


def test_role_detection_and_locking():
    p = Http1Parser()
    assert p.role is None
    assert p.feed(b"HTT") == []
    assert p.role is None
    assert p.feed(b"P/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")[0].status == 200
    assert p.role == "response"
    out = p.feed(b"GET / HTTP/1.1\r\n\r\n")  # a request on a response stream
    assert len(out) == 1 and isinstance(out[0], ParseError)


# ------------------------------------------------------------ repeated header fields

COOKIES = ("a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/",
           "b=2; Expires=Thu, 22 Oct 2026 07:28:00 GMT; Secure")


def test_repeated_set_cookie_stays_a_list_of_values_in_order():
    raw = ("HTTP/1.1 200 OK\r\nSet-Cookie: %s\r\nServer: x\r\nset-cookie: %s\r\n"
           "Content-Length: 0\r\n\r\n" % COOKIES).encode()
    (msg,) = Http1Parser().feed(raw)
    assert header_fields(msg.headers) == {"Set-Cookie": list(COOKIES), "Server": "x", "Content-Length": "0"}


def test_single_headers_stay_plain_strings_and_three_repeats_make_one_list():
    assert header_fields([("Host", "x"), ("A", "1"), ("a", "2"), ("A", "3, 4")]) == \
        {"Host": "x", "A": ["1", "2", "3, 4"]}
    assert header_fields([]) == {}
