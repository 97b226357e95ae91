"""The compiled hot path (mypyc, scripts/build_fast.py) and its Python sources write the same
JSONL, byte for byte, and the Python sources stay importable and tested.

The corpus is synthetic but broad: HTTP/1.x in every body mode, split at random points, cut by
the kernel (truncated events), pipelined, HEAD, 1xx and 101, malformed input, binary bodies and
odd header bytes; HTTP/2 conversations made by the h2 library; raw non-HTTP data; reused
session pointers; a port filter. bench/pipeline.py checks the same on recorded nginx traffic.
"""
from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import pytest

from orchestrator import fastpath
from orchestrator.bpf import layout

ROOT = Path(__file__).resolve().parents[2]
ADDR = b"\x7f\0\0\x01" + b"\0" * 12


def _raw(payload: bytes, seq: int, *, session: int, direction: int, lport: int, rport: int, fd: int,
         length: int | None = None, ts: int = 0) -> bytes:
    cut = length is not None and length > len(payload)
    header = layout.HEADER.pack(
        1_000_000 + ts, seq, session, 0, *(0,) * 6, 100, 100 + session % 3, 33, fd,
        len(payload) if length is None else length, len(payload), 1, layout.RECORD_DATA, direction,
        layout.FLAG_TRUNCATED if cut else 0, 1, 2, lport, rport, 0, ADDR, ADDR, b"nginx".ljust(16, b"\0"),
        session % 2)     # cgroup: none known, or the root (id 1, named "/")
    return header + payload


def _split(rng: random.Random, data: bytes) -> list[bytes]:
    """`data` in 1 to 4 pieces cut at random places."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 3)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


HEADERS = [b"Host: example.test", b"User-Agent: curl/8.0", b"Accept: */*", b"Cookie: a=1", b"Cookie: b=2",
           b"Set-Cookie: x=1, y=2", b"X-Dup: 1", b"x-dup: 2", b"X-Latin: caf\xe9", b"X-Quote: \"q\" \\ \t",
           b"X-Ctl: a\x01b", b"Accept-Encoding: gzip", b"X-Long: " + b"v" * 300]
BODIES = [b"", b"hello", b'{"user": "\xc3\xa9t\xc3\xa9", "n": 1}', bytes(range(256)), b"x" * 5000]


def _http1_message(rng: random.Random, request: bool) -> bytes:
    head = [rng.choice([b"GET /a?q=1 HTTP/1.1", b"POST /submit HTTP/1.1", b"HEAD / HTTP/1.0",
                        b"PUT /p%20q HTTP/1.1"]) if request else
            rng.choice([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 500 Oops", b"HTTP/1.1 204 No Content",
                        b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 100 Continue"])]
    head += rng.sample(HEADERS, rng.randint(0, 6))
    body = rng.choice(BODIES)
    mode = rng.choice(["length", "chunked", "none"])
    if mode == "length":
        head.append(b"Content-Length: %d" % len(body))
    elif mode == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        pieces = _split(rng, body) if body else []
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + \
            rng.choice([b"", b"X-Trailer: t\r\n"]) + b"\r\n"
    else:
        body = b""
    nl = b"\r\n" if rng.random() < 0.9 else b"\n"
    return nl.join(head) + nl + nl + body


def _http1_conversation(rng: random.Random) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(rng.randint(1, 6)):
        out.append((layout.DIR_READ, _http1_message(rng, True)))
        out.append((layout.DIR_WRITE, _http1_message(rng, False)))
    if rng.random() < 0.1:
        out.append((layout.DIR_READ, rng.choice([b"GARBAGE\r\n\r\n", b"GET  HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00"])))
    return out


def _http2_conversation(rng: random.Random) -> list[tuple[int, bytes]]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    out = [(layout.DIR_READ, client.data_to_send())]
    server.initiate_connection()
    server.receive_data(out[0][1])
    out.append((layout.DIR_WRITE, server.data_to_send()))
    client.receive_data(out[-1][1])
    for i in range(rng.randint(1, 5)):
        sid = client.get_next_available_stream_id()
        body = rng.choice(BODIES[:4])
        client.send_headers(sid, [(":method", "POST" if body else "GET"), (":path", f"/h2/{i}?k=v"),
                                  (":scheme", "https"), (":authority", "example.test"),
                                  ("cookie", "a=1"), ("cookie", "b=2"), ("x-n", str(i))], end_stream=not body)
        if body:
            client.send_data(sid, body, end_stream=True)
        data = client.data_to_send()
        out.append((layout.DIR_READ, data))
        server.receive_data(data)
        server.send_headers(sid, [(":status", rng.choice(["200", "404"])), ("content-type", "text/plain"),
                                  ("set-cookie", "s=1"), ("set-cookie", "t=2")])
        server.send_data(sid, rng.choice(BODIES[:4]), end_stream=True)
        data = server.data_to_send()
        out.append((layout.DIR_WRITE, data))
        client.receive_data(data)
    return out


def corpus(seed: int = 12, connections: int = 300) -> list[tuple[str, bytes]]:
    """[(source name, raw record)] of many interleaved connections, in one ring-buffer order."""
    rng = random.Random(seed)
    streams = []
    for c in range(connections):
        kind = rng.random()
        conv = (_http2_conversation(rng) if kind < 0.2 else
                [(layout.DIR_READ, bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))] if kind < 0.25 else
                _http1_conversation(rng))
        pieces = []
        for direction, data in conv:
            for piece in _split(rng, data):
                cut = rng.random() < 0.05 and len(piece) > 2
                pieces.append((direction, piece[:len(piece) // 2] if cut else piece, len(piece) if cut else None))
        session = 0x1000 + c % 250          # some sessions are reused by later connections
        streams.append(("ported" if c % 7 == 0 else "web", session, 40000 + c, 3 + c % 50, pieces))
    out, seq, ts = [], 0, 0
    while streams:
        i = rng.randrange(len(streams))
        src, session, rport, fd, pieces = streams[i]
        take = rng.randint(1, 3)
        for direction, piece, length in pieces[:take]:
            ts += rng.randint(1, 50_000)
            out.append((src, _raw(piece, seq, session=session, direction=direction, lport=443 if rport % 2 else 8443,
                                  rport=rport, fd=fd, length=length, ts=ts)))
            seq += 1
        del pieces[:take]
        if not pieces:
            streams.pop(i)
    return out


def _replay(tmp: Path, pure: bool) -> tuple[str, bytes]:
    out = tmp / ("pure.jsonl" if pure else "compiled.jsonl")
    env = dict(os.environ, ECAPTURE_PURE_PYTHON="1" if pure else "0")
    proc = subprocess.run([sys.executable, "-m", "tests.support.replay", str(tmp / "corpus.pickle"), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip(), out.read_bytes()


def _require_compiled():
    if fastpath.reason == "ECAPTURE_PURE_PYTHON=1":
        pytest.skip("this run asked for the Python sources only")
    assert fastpath.mode == "compiled", f"the hot path is not compiled: {fastpath.reason}"


def test_compiled_and_python_write_the_same_jsonl(tmp_path):
    _require_compiled()
    raws = corpus()
    (tmp_path / "corpus.pickle").write_bytes(pickle.dumps(raws))
    mode_c, compiled = _replay(tmp_path, pure=False)
    mode_p, pure = _replay(tmp_path, pure=True)
    assert (mode_c, mode_p) == ("compiled", "python")
    lines = pure.splitlines()
    types = {t: sum(1 for ln in lines if ln.startswith(b'{"type":"%s"' % t.encode()))
             for t in ("http.request", "http.response", "parse_error", "data")}
    # The corpus reaches every kind of record, so the comparison covers them all.
    assert all(n >= 20 for n in types.values()), types
    assert compiled == pure


def test_the_parser_suite_passes_on_the_python_sources_too():
    """The compiled run of tests/parsers skips what only Python allows (patching a method);
    this runs the files on the sources (but those of the C accelerators, which have no Python side)."""
    _require_compiled()
    env = dict(os.environ, ECAPTURE_PURE_PYTHON="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                           "--ignore=tests/parsers/test_hpack_accel.py", "--ignore=tests/parsers/test_http1_accel.py", "tests/parsers"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]


def test_the_compiled_modules_are_the_extensions():
    _require_compiled()
    from orchestrator.parsers import http1
    from orchestrator.pipeline import connections, dispatch, events
    for mod in (http1, connections, dispatch, events):
        assert mod.__file__.endswith(".so"), mod.__file__


@pytest.mark.parametrize("built, env, stamp, digest, expected", [
    (False, None, None, "d", ("python", "not built (scripts/build_fast.py)")),
    (True, "1", "d\n", "d", ("python", "ECAPTURE_PURE_PYTHON=1")),
    (True, None, "old\n", "d", ("python", "sources changed since the build (run make setup)")),
    (True, None, None, "d", ("python", "sources changed since the build (run make setup)")),
    (True, "0", "d\n", "d", ("compiled", "mypyc")),
    (True, None, "d\n", "d", ("compiled", "mypyc")),
])
def test_decide(built, env, stamp, digest, expected):
    assert fastpath.decide(built, env, stamp, digest) == expected


def test_every_compiled_source_exists_and_the_digest_follows_them():
    for rel in fastpath.SOURCES:
        assert (ROOT / rel).is_file(), rel
    assert len(fastpath.sources_digest()) == 64
    assert set(fastpath.MODULES) >= {"orchestrator.parsers.http1", "orchestrator.pipeline.dispatch"}


def test_to_json_is_the_encoded_dict_byte_for_byte():
    import msgspec

    from orchestrator.pipeline import dispatch, events
    from tests.support import replay

    encode = msgspec.json.Encoder().encode
    sources = {"web": replay.probe_set("web"), "ported": replay.probe_set("ported", ports=(443,))}

    class Keep:
        def __init__(self):
            self.records = []

        def write(self, records):
            self.records += records

    keep = Keep()
    d = dispatch.Dispatcher(lambda _p: [keep])
    raws = corpus(seed=5, connections=80)
    d.process([events.decode(raw, sources[src]) for src, raw in raws])
    d.flush_all()
    ev = keep.records[0].event
    odd = [events.Record("x", ev, {"pid": 1, "a": "é\n\"\\"}, keep.records[0].conn),   # a field named like a common one
           events.Record("x", ev, {}, None),
           events.Record("loss", None, {"profile": "p", "count": 2}),
           events.Record("x", ev, {"nested": {"k": [1, 2.5, None, True]}}, (("::1", 1), ("10.0.0.1", 2)))]
    assert len(keep.records) > 200
    for r in keep.records + odd:
        assert r.to_json(encode) == encode(r.to_dict()), r.type


def test_a_record_whose_fields_were_handed_out_is_encoded_from_them():
    """A sink that changes `fields` (e.g. a redaction) must not be undone by the JSON tail."""
    import msgspec

    from orchestrator.pipeline import events
    from tests.support import replay

    encode = msgspec.json.Encoder().encode
    ps = replay.probe_set("web")
    ev = events.decode(corpus(seed=3, connections=1)[0][1], ps)
    r = events.Record("http.request", ev, None, None, b'"direction":"read","path":"/secret"')
    assert b'"/secret"' in r.to_json(encode)
    r.fields["path"] = "[redacted]"
    assert b'"/secret"' not in r.to_json(encode) and r.to_json(encode) == encode(r.to_dict())


def _event_fields(ev) -> dict:
    return {name: getattr(ev, name) for name in ("ts", "seq", "session", "ret", "pid", "tid", "uid", "fd", "len",
                                                 "truncated", "hook", "record", "direction", "family", "lport",
                                                 "rport", "laddr", "raddr", "comm", "cgroup", "payload")}


def test_the_compiled_decode_reads_every_field_as_struct_does():
    """The compiled build reads the header with librt's byte readers; the Python build unpacks it
    with struct. Every field, including values with the top bit set and negative signed ones."""
    _require_compiled()
    from orchestrator.pipeline import events
    assert events._NATIVE_READS
    rng = random.Random(12)
    big = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 0xDEADBEEFCAFEF00D]
    for i in range(400):
        record = rng.choice((layout.RECORD_DATA, layout.RECORD_COMMAND, layout.RECORD_CALL, layout.RECORD_SECRET))
        payload = rng.randbytes(rng.randrange(0, 64))
        comm = rng.choice((b"nginx", b"", b"\xff\xfebad", b"sixteen-bytes-xx"[:16]))
        raw = layout.HEADER.pack(
            rng.choice(big[:4]), rng.choice(big), rng.choice(big), rng.choice((-(1 << 63), -1, 0, 5, (1 << 63) - 1)),
            *(rng.choice(big) for _ in range(6)),
            rng.choice((0, 1, 0xFFFFFFFF)), rng.randrange(1 << 32), rng.choice((0, 33, 0xFFFFFFFF)),
            rng.choice((-(1 << 31), -1, 0, 7, (1 << 31) - 1)), rng.randrange(1 << 32), len(payload),
            rng.choice((0, 1, 0xFFFF)), record, rng.choice((0, 1, 255)), rng.choice((0, layout.FLAG_TRUNCATED, 0xFF)),
            rng.randrange(1 << 16), rng.choice((0, 2, 10)), rng.randrange(1 << 16), rng.randrange(1 << 16), 0,
            rng.randbytes(16), rng.randbytes(16), comm.ljust(16, b"\0"), rng.choice(big)) + payload
        native, reference = events.decode(raw, None), _struct_decode(events, raw)
        assert _event_fields(native) == _event_fields(reference), i
        # Arguments are read for the records that use them (calls, secrets), not for data.
        if record != layout.RECORD_DATA:
            assert native.args == reference.args
        else:
            assert native.args == () and len(reference.args) == 6      # (the struct path really ran)


def _struct_decode(events, raw):
    saved = events._NATIVE_READS
    events._NATIVE_READS = False
    try:
        return events.decode(raw, None)
    finally:
        events._NATIVE_READS = saved
