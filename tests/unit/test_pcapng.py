"""pcapng output: block layouts byte by byte, synthesized TCP checked field by field, and files
read back with tshark (HTTP/1.1, HTTP/2, MySQL, PostgreSQL, IPv6, a 200 KB reassembly, packet
comments, TLS 1.2/1.3 decrypted from a Decryption Secrets Block). No root needed; the tshark
tests skip when tshark is not installed."""
from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import ssl
import stat
import struct
import subprocess
import types

import h2.config
import h2.connection
import pytest

from orchestrator.sinks import pcapng, pcapng_sink, tcpsynth

TS = 1_700_000_000_123_456_789
READ, WRITE = tcpsynth.READ, tcpsynth.WRITE
CLIENT = (("10.0.0.2", 43210), ("10.0.0.9", 80))      # local end is the client


# --- independent readers (not the module's own code) ----------------------------------------

def parse_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """[(type, body)]; checks both lengths, 32-bit alignment and that the blocks fill `data`."""
    out, off = [], 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        assert blen >= 12 and blen % 4 == 0, (btype, blen)
        assert struct.unpack_from("<I", data, off + blen - 4)[0] == blen
        out.append((btype, data[off + 8:off + blen - 4]))
        off += blen
    assert off == len(data)
    return out


def parse_options(raw: bytes) -> list[tuple[int, bytes]]:
    """Options up to opt_endofopt, which must end `raw`; padding must be zeros."""
    opts, off = [], 0
    while True:
        code, ln = struct.unpack_from("<HH", raw, off)
        off += 4
        if code == 0:
            assert ln == 0 and off == len(raw)
            return opts
        opts.append((code, raw[off:off + ln]))
        pad = -ln % 4
        assert raw[off + ln:off + ln + pad] == b"\0" * pad
        off += ln + pad


def word_sum_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dissect(pkt: bytes) -> dict:
    """Raw IPv4/IPv6 + TCP, with the lengths and checksums verified."""
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 15) * 4
        assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        assert word_sum_checksum(pkt[:ihl]) == 0
        src, dst, seg = pkt[12:16], pkt[16:20], pkt[ihl:]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(seg))
    else:
        assert version == 6 and pkt[6] == 6
        assert struct.unpack_from("!H", pkt, 4)[0] == len(pkt) - 40
        src, dst, seg = pkt[8:24], pkt[24:40], pkt[40:]
        pseudo = src + dst + struct.pack("!I3xB", len(seg), 6)
    assert word_sum_checksum(pseudo + seg) == 0
    sport, dport, seq, ack, off, flags = struct.unpack_from("!HHIIBB", seg)
    return {"v": version, "src": (str(ipaddress.ip_address(src)), sport),
            "dst": (str(ipaddress.ip_address(dst)), dport), "seq": seq, "ack": ack,
            "flags": flags, "payload": seg[(off >> 4) * 4:]}


# --- pcapng blocks -------------------------------------------------------------------------

def test_section_header_layout():
    (btype, body), = parse_blocks(pcapng.section_header())
    assert btype == 0x0A0D0D0A
    assert struct.unpack_from("<IHHq", body) == (0x1A2B3C4D, 1, 0, -1)
    assert parse_options(body[16:]) == [(4, b"ecapture")]
    (_, bare), = parse_blocks(pcapng.section_header(appl=None))
    assert len(bare) == 16      # no options: no opt_endofopt either


@pytest.mark.parametrize("name", ["lo", "eth0", "wlp3s0f"])
def test_interface_description_layout(name):
    (btype, body), = parse_blocks(pcapng.interface_description(101, snaplen=262144, name=name))
    assert btype == 1
    assert struct.unpack_from("<HHI", body) == (101, 0, 262144)
    assert parse_options(body[8:]) == [(2, name.encode()), (9, b"\x09")]


@pytest.mark.parametrize("size", range(0, 9))
def test_enhanced_packet_layout(size):
    data = bytes(range(1, size + 1))
    ts = (0x1234 << 32) | 0x89ABCDEF
    raw = pcapng.enhanced_packet(3, ts, data, orig_len=size + 100)
    (btype, body), = parse_blocks(raw)
    assert btype == 6
    assert len(raw) == 32 + size + (-size % 4)
    assert struct.unpack_from("<IIIII", body) == (3, 0x1234, 0x89ABCDEF, size, size + 100)
    assert body[20:20 + size] == data and set(body[20 + size:]) <= {0}

    (_, body), = parse_blocks(pcapng.enhanced_packet(0, ts, data, comment="pid=7 comm=curl é"))
    padded = 20 + size + (-size % 4)
    assert struct.unpack_from("<II", body, 12) == (size, size)
    assert parse_options(body[padded:]) == [(1, "pid=7 comm=curl é".encode())]


def test_decryption_secrets_layout():
    lines = ["CLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48, "CLIENT_TRAFFIC_SECRET_0 00 11\n"]
    (btype, body), = parse_blocks(pcapng.decryption_secrets(lines))
    assert btype == 0x0000000A
    stype, slen = struct.unpack_from("<II", body)
    assert stype == 0x544C534B
    text = body[8:8 + slen]
    assert text.decode().splitlines() == [ln.rstrip("\n") for ln in lines]
    assert text.endswith(b"\n") and len(body) == 8 + slen + (-slen % 4)


# --- tcpsynth, checked without tshark ------------------------------------------------------

def _streams(packets):
    """Follow both directions by sequence number: every segment must start where the previous one
    ended and acknowledge all the peer sent. Returns {src endpoint: bytes}, flags in order."""
    pkts = [dissect(p) for p in packets]
    syn, synack, ack = pkts[:3]
    assert (syn["flags"], synack["flags"], ack["flags"]) == (0x02, 0x12, 0x10)
    nxt = {syn["src"]: syn["seq"] + 1, synack["src"]: synack["seq"] + 1}
    assert synack["ack"] == nxt[syn["src"]] and ack["ack"] == nxt[synack["src"]]
    data = {syn["src"]: b"", synack["src"]: b""}
    for p in pkts[2:]:
        peer = p["dst"]
        assert p["seq"] == nxt[p["src"]] and p["ack"] == nxt[peer]
        nxt[p["src"]] += len(p["payload"]) + (p["flags"] & 0x01)
        data[p["src"]] += p["payload"]
    return data, [p["flags"] for p in pkts]


@pytest.mark.parametrize("data", [b"", b"\0\0", b"\xff\xff", b"\xff\xff" * 7, b"\x01", b"\xfe\x01\x01",
                                  bytes(range(256)) * 3 + b"\x07", os.urandom(1001)])
def test_checksum_matches_word_by_word_sum(data):
    assert tcpsynth._checksum(data) == word_sum_checksum(data)


def test_handshake_data_and_fin_are_consistent():
    synth = tcpsynth.Synthesizer(mss=1000, seed=1)
    local, remote = CLIENT
    out = synth.packets(CLIENT, WRITE, b"q" * 2500, TS)
    out += synth.packets(CLIENT, READ, b"r" * 10, TS)
    out += synth.packets(CLIENT, WRITE, b"w" * 3, TS)
    out += synth.close(CLIENT)
    data, flags = _streams(out)
    assert data == {local: b"q" * 2500 + b"w" * 3, remote: b"r" * 10}
    assert [len(dissect(p)["payload"]) for p in out[3:6]] == [1000, 1000, 500]
    assert flags[3:6] == [0x10, 0x10, 0x18]          # PSH on the last segment only
    assert flags[-3:] == [0x11, 0x11, 0x10]
    assert dissect(out[0])["src"] == local
    assert len(synth) == 0 and synth.close(CLIENT) == []


def test_server_side_guessed_from_ports():
    synth = tcpsynth.Synthesizer()
    conn = (("10.0.0.9", 443), ("10.0.0.2", 51000))   # we are the server
    out = synth.packets(conn, READ, b"GET / HTTP/1.1\r\n\r\n", TS)
    assert dissect(out[0])["src"] == ("10.0.0.2", 51000) and dissect(out[0])["flags"] == 0x02
    assert dissect(out[-1])["src"] == ("10.0.0.2", 51000)
    assert dissect(synth.packets(conn, WRITE, b"HTTP/1.1 200 OK\r\n\r\n", TS)[0])["src"] == ("10.0.0.9", 443)


def test_ipv4_mapped_and_ipv6_addresses():
    synth = tcpsynth.Synthesizer()
    p = dissect(synth.packets((("::ffff:10.1.2.3", 40000), ("::ffff:10.1.2.4", 5432)), WRITE, b"x", TS)[-1])
    assert p["v"] == 4 and p["src"] == ("10.1.2.3", 40000) and p["dst"] == ("10.1.2.4", 5432)
    p = dissect(synth.packets((("2001:db8::1", 40000), ("2001:db8::2", 443)), WRITE, b"x", TS)[-1])
    assert p["v"] == 6 and p["src"] == ("2001:db8::1", 40000)
    p = dissect(synth.packets((("::ffff:10.1.2.3", 40000), ("2001:db8::2", 443)), WRITE, b"x", TS)[-1])
    assert p["v"] == 6 and ipaddress.ip_address(p["src"][0]) == ipaddress.ip_address("::ffff:10.1.2.3")


def test_truncated_payload_leaves_a_sequence_gap():
    synth = tcpsynth.Synthesizer()
    first = dissect(synth.packets(CLIENT, WRITE, b"a" * 100, TS, length=5000)[-1])
    second = dissect(synth.packets(CLIENT, WRITE, b"b", TS)[0])
    assert (second["seq"] - first["seq"]) & 0xFFFFFFFF == 5000


def test_flows_are_bounded_and_forgotten():
    synth = tcpsynth.Synthesizer(max_flows=2)
    conns = [(("10.0.0.1", 40000 + i), ("10.0.0.2", 80)) for i in range(3)]
    for c in conns:
        assert len(synth.packets(c, WRITE, b"x", TS)) == 4       # SYN, SYN+ACK, ACK, data
    assert len(synth) == 2
    assert len(synth.packets(conns[2], WRITE, b"x", TS)) == 1    # still known
    assert len(synth.packets(conns[0], WRITE, b"x", TS)) == 4    # evicted: handshake again
    assert synth.packets(conns[1], WRITE, b"", TS) == []
    with pytest.raises(ValueError):
        synth.packets(conns[1], 3, b"x", TS)


def test_reused_four_tuple_gets_new_sequence_numbers():
    synth = tcpsynth.Synthesizer()
    a = dissect(synth.packets(CLIENT, WRITE, b"x", TS)[0])["seq"]
    synth.close(CLIENT)
    b = dissect(synth.packets(CLIENT, WRITE, b"x", TS)[0])["seq"]
    assert a != b


# --- tshark read-back ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tshark():
    path = shutil.which("tshark")
    if path is None:
        pytest.skip("tshark is not installed")
    return path


def run_tshark(tshark, path, *args) -> list[list[str]]:
    """Rows of `-T fields` output (each a list of the fields asked for)."""
    proc = subprocess.run([tshark, "-n", "-r", str(path), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


def field(tshark, path, name, *args) -> list[str]:
    """Non-empty values of one field, frame by frame."""
    return [row[0] for row in run_tshark(tshark, path, *args, "-T", "fields", "-e", name) if row[0]]


def write_capture(path, conn, convo, secrets=None, mss=tcpsynth.DEFAULT_MSS) -> int:
    """A file with one raw-IP interface (through PacketPcapngWriter); returns the packet count."""
    w = pcapng_sink.PacketPcapngWriter(str(path))
    if_id = w.add_interface("synth", linktype=pcapng.LINKTYPE_RAW)
    if secrets:
        w.write_secrets(secrets)
    synth = tcpsynth.Synthesizer(mss=mss)
    n = 0
    for i, (direction, payload) in enumerate(convo):
        for pkt in synth.packets(conn, direction, payload, TS + i):
            w.write_packet(if_id, TS + i, pkt, len(pkt), None)
            n += 1
    w.close()
    return n


def test_http1_request_and_response(tshark, tmp_path):
    f = tmp_path / "http1.pcapng"
    write_capture(f, CLIENT, [(WRITE, b"GET /hello/world?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
                              (READ, b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 3\r\n\r\nabc")])
    assert field(tshark, f, "http.request.uri") == ["/hello/world?x=1"]
    assert field(tshark, f, "http.response.code") == ["418"]
    rows = run_tshark(tshark, f, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                      "-T", "fields", "-e", "tcp.checksum.status", "-e", "ip.checksum.status")
    assert rows and all(r == ["1", "1"] for r in rows)          # 1 = Good
    assert field(tshark, f, "frame.time_epoch")[0] == f"{TS // 10**9}.{TS % 10**9:09d}"


def _h2_exchange(path: str) -> list[tuple[int, bytes]]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()         # the connection preface and SETTINGS
    client.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "http"),
                            (":authority", "example.test")], end_stream=True)
    convo = [(WRITE, client.data_to_send())]
    server.initiate_connection()
    server.receive_data(convo[0][1])
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"hello", end_stream=True)
    convo.append((READ, server.data_to_send()))
    client.receive_data(convo[1][1])
    convo.append((WRITE, client.data_to_send()))
    return convo


def test_http2_on_an_http_port(tshark, tmp_path):
    f = tmp_path / "h2.pcapng"
    write_capture(f, (("127.0.0.1", 51000), ("127.0.0.1", 8080)), _h2_exchange("/api/v2/items?q=7"))
    assert field(tshark, f, "http2.headers.path") == ["/api/v2/items?q=7"]
    assert field(tshark, f, "http2.headers.status") == ["200"]


def test_http2_on_another_port_needs_decode_as(tshark, tmp_path):
    f = tmp_path / "h2other.pcapng"
    write_capture(f, (("127.0.0.1", 51000), ("127.0.0.1", 9999)), _h2_exchange("/other"))
    assert field(tshark, f, "http2.headers.path") == []
    assert field(tshark, f, "http2.headers.path", "-d", "tcp.port==9999,http2") == ["/other"]


def _mysql(seq: int, body: bytes) -> bytes:
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body


def test_mysql_query(tshark, tmp_path):
    greeting = (b"\x0a8.0.36\0" + struct.pack("<I", 11) + b"abcdefgh\0" + struct.pack("<HBHH", 0xFFFF, 0x21, 2, 0xDFFF)
                + b"\x15" + b"\0" * 10 + b"ijklmnopqrst\0mysql_native_password\0")
    login = (struct.pack("<IIB", 0x000FA685, 1 << 24, 0x21) + b"\0" * 23 + b"app\0\x14" + b"x" * 20
             + b"mysql_native_password\0")
    query = "SELECT name FROM users WHERE id = 42"
    f = tmp_path / "mysql.pcapng"
    write_capture(f, (("10.1.1.1", 40000), ("10.1.1.2", 3306)),
                  [(READ, _mysql(0, greeting)), (WRITE, _mysql(1, login)),
                   (READ, _mysql(2, b"\x00\x00\x00\x02\x00\x00\x00")), (WRITE, _mysql(0, b"\x03" + query.encode()))])
    assert field(tshark, f, "mysql.query") == [query]
    assert field(tshark, f, "mysql.user") == ["app"]


def test_postgres_simple_query(tshark, tmp_path):
    params = b"user\0postgres\0database\0app\0\0"
    startup = struct.pack("!II", 8 + len(params), 196608) + params
    ready = b"R" + struct.pack("!II", 8, 0) + b"Z" + struct.pack("!I", 5) + b"I"
    query = "SELECT 1 AS one"
    q = b"Q" + struct.pack("!I", 4 + len(query) + 1) + query.encode() + b"\0"
    f = tmp_path / "pg.pcapng"
    write_capture(f, (("10.1.1.1", 40001), ("10.1.1.2", 5432)), [(WRITE, startup), (READ, ready), (WRITE, q)])
    assert field(tshark, f, "pgsql.query") == [query]


def test_ipv6_connection(tshark, tmp_path):
    f = tmp_path / "v6.pcapng"
    write_capture(f, (("2001:db8::10", 50500), ("2001:db8::20", 80)),
                  [(WRITE, b"GET /six HTTP/1.1\r\nHost: b\r\n\r\n")])
    rows = run_tshark(tshark, f, "-Y", "http.request", "-T", "fields",
                      "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "http.request.uri")
    assert rows == [["2001:db8::10", "2001:db8::20", "/six"]]


def test_large_payload_is_segmented_and_reassembled(tshark, tmp_path):
    body = bytes(range(256)) * 800                       # 200 KB
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    f = tmp_path / "big.pcapng"
    mss = 16384
    n = write_capture(f, CLIENT, [(WRITE, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"), (READ, head + body)], mss=mss)
    segments = -(-(len(head) + len(body)) // mss)
    assert n == 3 + 1 + segments
    rows = run_tshark(tshark, f, "-Y", "http.response", "-T", "fields", "-e", "http.content_length",
                      "-e", "tcp.reassembled.length", "-e", "tcp.segment.count")
    assert rows == [[str(len(body)), str(len(head) + len(body)), str(segments)]]


# --- TLS decrypted through a Decryption Secrets Block --------------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI is not installed")
    d = tmp_path_factory.mktemp("cert")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


def tls_session(cert, version, keylog: str, request: bytes):
    """A client and a server talking over MemoryBIOs; returns (wire chunks, key log lines, version)."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(*cert)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.minimum_version = cctx.maximum_version = version
    cctx.keylog_filename = keylog
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    wire = []

    def pump():
        for src, dst, direction in ((c_out, s_in, WRITE), (s_out, c_in, READ)):
            chunk = src.read()
            if chunk:
                wire.append((direction, chunk))
                dst.write(chunk)

    done = set()
    for _ in range(20):
        for end in (client, server):
            if end not in done:
                try:
                    end.do_handshake()
                    done.add(end)
                except ssl.SSLWantReadError:
                    pass
        pump()
        if len(done) == 2:
            break
    client.write(request)
    pump()
    assert server.read(65536) == request
    server.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    pump()
    with open(keylog) as fh:
        lines = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    return wire, lines, client.version()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_tls_decrypted_with_embedded_secrets(tshark, tmp_path, cert, version):
    uri = f"/secret/{version.name}?token=s3cr3t"
    wire, lines, negotiated = tls_session(cert, version, str(tmp_path / "keys.log"),
                                          f"GET {uri} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert negotiated == {"TLSv1_3": "TLSv1.3", "TLSv1_2": "TLSv1.2"}[version.name]
    assert lines
    conn = (("192.168.5.1", 50123), ("192.168.5.2", 443))
    with_keys, without = tmp_path / "with.pcapng", tmp_path / "without.pcapng"
    write_capture(with_keys, conn, wire, secrets=lines)
    write_capture(without, conn, wire)
    blocks = parse_blocks(with_keys.read_bytes())
    assert [t for t, _ in blocks[:2]] == [0x0A0D0D0A, 0x0000000A]   # secrets before the packets
    assert field(tshark, with_keys, "http.request.uri", "-Y", "http.request") == [uri]
    assert field(tshark, with_keys, "http.response.code", "-Y", "http.response") == ["200"]
    # Negative control: the same packets, no DSB, nothing decrypted.
    assert field(tshark, without, "http.request.uri", "-Y", "http.request") == []
    assert len(field(tshark, without, "tls.record.content_type")) > 0


# --- the sinks through their API -----------------------------------------------------------

def fake_event(direction, payload, ts=TS, pid=4242, comm="curl", truncated_from=None):
    return types.SimpleNamespace(
        ts=ts, direction=direction, payload=payload, pid=pid, comm=comm,
        source=types.SimpleNamespace(profile="prof-a", target=types.SimpleNamespace(name="web")),
        truncated=truncated_from is not None, len=truncated_from or len(payload))


def test_plaintext_sink_writes_comments_and_counts_unnamed(tshark, tmp_path):
    path = tmp_path / "out" / "plain.pcapng"
    sink = pcapng_sink.PlaintextPcapngSink(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    sink.write([types.SimpleNamespace(type="http.request")])          # records are ignored
    sink.write_data([(fake_event(WRITE, b"GET /via/sink HTTP/1.1\r\nHost: a\r\n\r\n"), CLIENT),
                     (fake_event(WRITE, b"lost"), None), (fake_event(WRITE, b"lost"), (("?", 1), ("?", 2)))])
    sink.write_data([(fake_event(READ, b"HTTP/1.1 204 No Content\r\n\r\n", ts=TS + 5, pid=99, comm="nginx"), CLIENT),
                     (fake_event(0, b"?"), CLIENT)])
    sink.close_conn(CLIENT, TS + 9)
    sink.close()
    assert (sink.unnamed, sink.skipped) == (2, 1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    rows = run_tshark(tshark, path, "-T", "fields", "-e", "frame.interface_name", "-e", "tcp.flags.str",
                      "-e", "http.request.uri", "-e", "http.response.code", "-e", "frame.comment")
    assert len(rows) == 3 + 1 + 1 + 3
    assert {r[0] for r in rows} == {pcapng_sink.PlaintextPcapngSink.IF_NAME}
    assert [r[2] for r in rows if r[2]] == ["/via/sink"] and [r[3] for r in rows if r[3]] == ["204"]
    first = "pid=4242 comm=curl profile=prof-a target=web"
    assert [r[4] for r in rows[:4]] == [first] * 4                      # handshake + request
    assert rows[4][4] == "pid=99 comm=nginx profile=prof-a target=web"
    assert [r[4] for r in rows[5:]] == [""] * 3                         # the FIN exchange
    assert "F" in rows[5][1] and "F" in rows[6][1]


def test_plaintext_sink_truncation_is_visible(tshark, tmp_path):
    path = tmp_path / "trunc.pcapng"
    sink = pcapng_sink.PlaintextPcapngSink(str(path))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n"
    captured = head + b"z" * 100
    sink.write_data([(fake_event(READ, captured, truncated_from=len(head) + 9000), CLIENT),
                     (fake_event(READ, b"more"), CLIENT)])
    sink.close()
    comments = field(tshark, path, "frame.comment")
    assert comments[-2].endswith(f"truncated={len(captured)}/{len(head) + 9000}")
    assert "truncated" not in comments[-1]
    assert len(field(tshark, path, "frame.number", "-Y", "tcp.analysis.lost_segment")) == 1


def test_plaintext_sink_appends_a_new_section(tshark, tmp_path):
    path = tmp_path / "again.pcapng"
    for uri in ("/first", "/second"):
        sink = pcapng_sink.PlaintextPcapngSink(str(path))
        sink.write_data([(fake_event(WRITE, f"GET {uri} HTTP/1.1\r\nHost: a\r\n\r\n".encode()), CLIENT)])
        sink.close()
    assert [t for t, _ in parse_blocks(path.read_bytes())].count(0x0A0D0D0A) == 2
    assert field(tshark, path, "http.request.uri") == ["/first", "/second"]


def _fail_writes_on(monkeypatch, fd: int, after: int):
    """os.write on `fd`: `after` bytes go through (a short write), then ENOSPC until undone."""
    real = os.write
    state = {"left": after}

    def write(f, data):
        if f != fd:
            return real(f, data)
        if state["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(f, bytes(data)[:state["left"]])
        state["left"] -= n
        return n
    monkeypatch.setattr(pcapng_sink.os, "write", write)


def test_failed_batch_leaves_no_partial_block(tshark, tmp_path, monkeypatch):
    path = tmp_path / "full.pcapng"
    sink = pcapng_sink.PlaintextPcapngSink(str(path))
    size = os.path.getsize(path)
    _fail_writes_on(monkeypatch, sink._fd, after=50)
    with pytest.raises(OSError):
        sink.write_data([(fake_event(WRITE, b"GET /lost HTTP/1.1\r\n\r\n"), CLIENT)])
    assert os.path.getsize(path) == size
    monkeypatch.undo()
    sink.write_data([(fake_event(WRITE, b"GET /kept HTTP/1.1\r\nHost: a\r\n\r\n", ts=TS + 1), CLIENT)])
    sink.close()
    parse_blocks(path.read_bytes())
    assert field(tshark, path, "http.request.uri") == ["/kept"]


def test_packet_writer_interfaces_secrets_and_failed_flush(tshark, tmp_path, monkeypatch):
    path = tmp_path / "tc.pcapng"
    w = pcapng_sink.PacketPcapngWriter(str(path))
    lo = w.add_interface("lo", linktype=pcapng.LINKTYPE_RAW)
    eth = w.add_interface("eth0")
    assert (lo, eth) == (0, 1)
    with pytest.raises(ValueError):
        w.write_packet(2, TS, b"x", 1, None)
    synth = tcpsynth.Synthesizer()
    pkts = synth.packets(CLIENT, WRITE, b"GET /on/eth HTTP/1.1\r\nHost: a\r\n\r\n", TS)
    frame = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00"     # Ethernet II, IPv4
    w.write_secrets(["CLIENT_RANDOM " + "00" * 32 + " " + "11" * 48])
    _fail_writes_on(monkeypatch, w._fd, after=0)
    w.write_packet(eth, TS, frame + pkts[0], None, "first")     # IDBs of lo and eth0 go in the buffer
    with pytest.raises(OSError):
        w.flush()
    monkeypatch.undo()
    for i, p in enumerate(pkts[1:]):
        w.write_packet(eth, TS + i, frame + p, None, "eth")
    w.write_packet(lo, TS + 10, pkts[1], None, "lo")
    w.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    types_ = [t for t, _ in parse_blocks(path.read_bytes())]
    assert types_[:3] == [0x0A0D0D0A, 1, 1]            # the lost flush took the DSB; IDBs written again
    rows = run_tshark(tshark, path, "-T", "fields", "-e", "frame.interface_name", "-e", "eth.type",
                      "-e", "http.request.uri", "-e", "frame.comment")
    assert rows == [["eth0", "0x0800", "", "eth"]] * 2 + [["eth0", "0x0800", "/on/eth", "eth"], ["lo", "", "", "lo"]]


def test_the_fast_packet_path_encodes_what_enhanced_packet_does():
    for size in range(0, 9):
        data = bytes(range(size))
        for comment in (None, "pid=1 comm=x profile=p target=t", "é"):
            opts = pcapng.comment_options(comment) if comment else b""
            assert pcapng.packet(2, 1_700_000_000_123_456_789, data, size + 5, opts) == \
                pcapng.enhanced_packet(2, 1_700_000_000_123_456_789, data, size + 5, comment)


def test_appended_blocks_follow_their_interfaces_even_after_a_failed_flush(tmp_path, monkeypatch):
    path = tmp_path / "tc.pcapng"
    w = pcapng_sink.PacketPcapngWriter(str(path))
    lo = w.add_interface("lo")
    w.append(pcapng.packet(lo, TS, b"lost", 4))
    with monkeypatch.context() as m:
        _fail_writes_on(m, w._fd, after=0)
        with pytest.raises(OSError):
            w.flush()                           # the IDB went with the failed buffer
    w.append(pcapng.packet(lo, TS + 1, b"kept", 4))
    w.close()
    data = path.read_bytes()
    kinds, at = [], 0
    while at < len(data):
        btype, length = struct.unpack_from("<II", data, at)
        kinds.append(btype)
        at += length
    assert kinds == [pcapng.SHB_TYPE, pcapng.IDB_TYPE, pcapng.EPB_TYPE] and b"kept" in data and b"lost" not in data
