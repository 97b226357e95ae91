"""The compiled build's C HPACK decoder (parsers/hpack_accel.c, through http2.decode_block) against
hpack.Decoder: the same headers, the same errors and the same dynamic table, block after block,
on what hpack's encoder writes and on damaged blocks."""
from __future__ import annotations

import random

import hpack
import pytest

from orchestrator import fastpath
from orchestrator.parsers import http2

pytestmark = pytest.mark.skipif(http2.hpack_accel is None, reason=f"no compiled hot path ({fastpath.reason})")

NAMES = [b":method", b":path", b":status", b"content-type", b"cookie", b"authorization", b"x-custom",
         b"user-agent", b"set-cookie", b"accept", b"x-\xff-raw"]


def _header(rng: random.Random):
    name = rng.choice(NAMES) if rng.random() < 0.8 else bytes(rng.randrange(97, 123) for _ in range(rng.randint(1, 12)))
    value = bytes(rng.randrange(256) if rng.random() < 0.1 else rng.randrange(32, 127)
                  for _ in range(rng.choice([0, 1, 5, 20, 300])))
    return (name, value) if rng.random() < 0.9 else hpack.NeverIndexedHeaderTuple(name, value)


def _damage(rng: random.Random, block: bytes) -> bytes:
    how = rng.randrange(4)
    if how == 0 and block:
        return block[:rng.randrange(len(block))]
    if how == 1 and block:
        i = rng.randrange(len(block))
        return block[:i] + bytes([rng.randrange(256)]) + block[i + 1:]
    if how == 2:
        return bytes([0x80 | rng.randrange(62, 128)]) + block        # an index past the tables
    return bytes([0x3f, 0xe1, 0x1f]) + block                           # a table size update


def _state(decoder):
    if type(decoder) is hpack.Decoder:
        t = decoder.header_table
        return [tuple(map(bytes, e)) for e in t.dynamic_entries], t._current_size, t.maxsize
    return [tuple(e) for e in decoder.table], decoder.size, decoder.maxsize


@pytest.mark.parametrize("seed", range(40))
def test_c_decoder_matches_hpack_block_after_block(seed):
    rng = random.Random(seed)
    encoder = hpack.Encoder()
    encoder.huffman = rng.random() < 0.7
    if rng.random() < 0.3:
        encoder.header_table_size = rng.choice([0, 64, 256, 1024])
    c = http2.new_decoder()
    py = hpack.Decoder(max_header_list_size=http2.MAX_HEADER_LIST)
    damaged = False
    for _ in range(30):
        block = encoder.encode([_header(rng) for _ in range(rng.randint(0, 8))], huffman=encoder.huffman)
        if rng.random() < 0.1:
            block = _damage(rng, block)
            damaged = True
        try:
            want = ("ok", [tuple(map(bytes, h)) for h in py.decode(block, raw=True)])
        except Exception as e:  # noqa: BLE001 - the error itself is compared
            want = ("error", type(e).__name__, str(e))
        try:
            got = ("ok", [tuple(h) for h in http2.decode_block(c, block)])
        except Exception as e:  # noqa: BLE001
            got = ("error", type(e).__name__, str(e))
        assert got == want
        assert _state(c) == _state(py)
        if want[0] == "error":
            break           # the connection's parser stops at an HPACK error
    assert damaged or want[0] == "ok"


def test_huffman_and_plain_strings_decode_in_c_without_help():
    encoder = hpack.Encoder()
    c = http2.new_decoder()
    block = encoder.encode([(b":path", b"/a?b=c"), (b"x-long", b"v" * 5000), (b"x-bin", bytes(range(256)))])
    headers = c.decode(block)          # None would mean the C decoder declined
    assert headers == [(b":path", b"/a?b=c"), (b"x-long", b"v" * 5000), (b"x-bin", bytes(range(256)))]
    py = hpack.Decoder()
    py.decode(block, raw=True)
    assert _state(c) == _state(py) and len(c.table) == 1     # the 5000-byte value emptied the table
