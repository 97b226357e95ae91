"""The compiled build's C accelerator for HTTP/1 heads and bodies (parsers/http1_accel.c) against
the Python code it stands in for: the same JSON text, byte for byte, or a refusal (None)."""
from __future__ import annotations

import random

import msgspec
import pytest

from orchestrator import fastpath
from orchestrator.parsers import http1, http_shape

try:
    from orchestrator.parsers import http1_accel
except ImportError:
    http1_accel = None

pytestmark = pytest.mark.skipif(http1_accel is None, reason=f"no compiled hot path ({fastpath.reason})")
encode = msgspec.json.Encoder().encode




@pytest.mark.parametrize("block", [
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\ncookie: b=2\r\nX-A: 1\r\nx-a: 2\r\nX-A: 3",
    b"POST /p HTTP/1.0\r\nContent-Length: 12\r\nX-Q: \"q\" \\ \tend\t ",
    b"M-SEARCH * HTTP/1.1\r\nTransfer-Encoding: Chunked",
    b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0",
    b"HTTP/1.0 404 Not \"Found\"",
    b"HTTP/1.1 204",
    b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Sp:   ",
])
def test_head_json_is_what_the_python_path_encodes(block):
    request = not block.startswith(b"HTTP/")
    got = http1_accel.head(block, 0, len(block), request)
    assert got is not None
    first, second, version, fragment, length, chunked = got
    text = block.decode("latin-1")
    lines = text.split("\r\n")
    pairs = [(n, v.strip(" \t")) for n, _, v in (ln.partition(":") for ln in lines[1:])]
    if request:
        method, path, ver = lines[0].split(" ")
        want = {"method": method, "path": path, "version": ver, "headers": http_shape.header_fields(pairs)}
        assert (first, second, version) == (method, path, ver)
    else:
        ver, _, rest = lines[0].partition(" ")
        want = {"status": int(rest[:3]), "reason": rest[4:], "version": ver,
                "headers": http_shape.header_fields(pairs)}
    assert b"{" + fragment + b"}" == encode(want)
    cl = [v for n, v in pairs if n.lower() == "content-length"]
    assert length == (int(cl[0]) if cl else -1)
    assert chunked == any(n.lower() == "transfer-encoding" for n, _ in pairs)


@pytest.mark.parametrize("block", [
    b"GET /a HTTP/1.1\nHost: h",                      # bare LF
    b"GET /a HTTP/1.1\r\nHost: caf\xe9",              # not ASCII
    b"GET /a HTTP/1.1\r\nX: a\x01b",                 # a control byte
    b"GET  /a HTTP/1.1",                             # an empty part
    b"GET /a HTTP/1.2",                              # a version the C side leaves to Python
    b"G(T /a HTTP/1.1",                              # not a token
    b"GET /a HTTP/1.1\r\nBad Name: x",
    b"GET /a HTTP/1.1\r\nNoColon",
    b"GET /a HTTP/1.1\r\n folded: x",
    b"GET /a HTTP/1.1\r\nContent-Length: 1, 1",
    b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
    b"GET /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked",
    b"HTTP/1.1 2000 OK",
    b"HTTP/1.1 099 Low",
    b"HTTP/1.1 20",
])
def test_head_declines_what_it_does_not_take(block):
    assert http1_accel.head(block, 0, len(block), not block.startswith(b"HTTP/")) is None


def _python_body_tail(body: bytes, body_len: int, truncated: bool) -> bytes:
    return b"," + encode(http_shape.body_fields({}, body, body_len, truncated))[1:-1]


def test_body_tail_matches_body_fields_on_text_and_declines_the_rest():
    rng = random.Random(7)
    samples = [b"", b"plain", b'q"\\\x00\x01\x08\t\n\x0b\x0c\r\x1f\x7f', "é€😀\u2028".encode(),
               b"\xed\xa0\x80", b"\xc0\x80", b"\xe0\x80\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98", b"\x80",
               bytes(range(256))]
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            samples.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))))
        elif kind == 1:
            samples.append("".join(chr(rng.choice([rng.randrange(0x20), rng.randrange(0x20, 0x80),
                                                   rng.randrange(0x80, 0xd800), rng.randrange(0xe000, 0x110000)]))
                                   for _ in range(rng.randint(0, 12))).encode("utf-8", "surrogatepass"))
        else:
            samples.append(bytes(rng.choice([0xc2, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0x80, 0xbf, 0x9f, 0x41])
                                 for _ in range(rng.randint(1, 6))))
    taken = declined = 0
    for body in samples:
        for truncated in (False, True):
            got = http1_accel.body_tail(body, len(body) + 5, truncated)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                assert got is None, body
                declined += 1
                continue
            assert got == _python_body_tail(body, len(body) + 5, truncated), body
            taken += 1
    assert taken > 1000 and declined > 1000


@pytest.mark.parametrize("data, is_request, expected", [
    (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nrest", True, (25, 28)),
    (b"xxGET /a HTTP/1.1\r\n\r\n", True, None),                      # not at pos 0: see below
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, (35, 38)),
    (b"GET /a HTTP/1.1\r\nHost: h\r\n", True, None),                  # the block is not whole yet
    (b"GET /a HTTP/1.1\nHost: h\n\n", True, None),                    # LF block end: Python's
    (b"M" * 33 + b" /a HTTP/1.1\r\n\r\n", True, None),                # longer than a method may be
    (b"HTTP/2.0 200 OK\r\n\r\n", False, None),
])
def test_block_finds_the_end_that_find_block_finds(data, is_request, expected):
    pos = 2 if data.startswith(b"xx") else 0
    got = http1_accel.block(data, pos, len(data), is_request)
    if data.startswith(b"xx"):
        assert got is not None and got[:2] == (18, 21)
        return
    if expected is None:
        assert got is None
        return
    assert got[:2] == expected
    p = http1.Http1Parser()
    p._role = 1 if is_request else 2
    assert p._find_block(data, 0, len(data), http1.MAX_HEADER_BYTES, "header block") == expected
    assert got[2:] == http1_accel.head(data, 0, expected[0], is_request)


def test_find_any_lower_is_any_needle_in_the_lower_cased_bytes():
    rng = random.Random(5)
    alphabet = b"aAbBcCkKiIeEoO%-:\r\n\x00\xc3\xa9Z["
    needles_pool = [b"cookie", b"authorization", b"%", b"ab", b"k", b"\xc3\xa9", b"z[", b""]
    for _ in range(3000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        needles = tuple(rng.sample(needles_pool, rng.randrange(0, 4)))
        low = data.lower()
        assert http1_accel.find_any_lower(data, needles) == any(n in low for n in needles), (data, needles)
    assert http1_accel.find_any_lower(b'"headers":{"COOKIE":"a=1"}', (b"authorization", b"cookie"))
    assert not http1_accel.find_any_lower(b'"headers":{"Cooki":"e"}', (b"authorization", b"cookie"))
    with pytest.raises(TypeError):
        http1_accel.find_any_lower(b"x", ("cookie",))
