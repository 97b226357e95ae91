"""The packet pcapng sink's decisions, without a kernel: which packets are written, when, with
which comment, and that secrets go ahead of the packets they decrypt."""
from __future__ import annotations

import struct
import types

from orchestrator.bpf import packets
from orchestrator.pipeline import events
from orchestrator.sinks import packet_sink

CONN = (("127.0.0.1", 51000), ("127.0.0.1", 443))
OTHER = (("127.0.0.1", 52000), ("127.0.0.1", 8443))
NAMES = {1: "lo"}


class Clock:
    def __init__(self):
        self.now = 10_000_000_000

    def __call__(self):
        return self.now


def _packet(conn, ts, tgid=0, target_no=0, payload=b"x"):
    return (ts, 1, 54 + len(payload), tgid, target_no, 2, b"nginx\0".ljust(16, b"\0"), packets.flow_key(conn),
            b"\0" * 54 + payload)


def _record(type_, conn, fields=None):
    source = types.SimpleNamespace(profile="web", target=types.SimpleNamespace(name="srv"))
    ev = events.Event()
    ev.pid, ev.comm, ev.source = 77, "nginx", source
    return events.Record(type_, ev, fields or {}, conn)


def _blocks(path):
    """(block type, body) of every block in a pcapng file."""
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        btype, length = struct.unpack_from("<II", data, at)
        out.append((btype, data[at + 8:at + length - 4]))
        at += length
    return out


def _packets_written(path):
    return [body for t, body in _blocks(path) if t == 6]


def _sink(tmp_path, clock, describe=lambda no: ("web", "srv") if no == 3 else ("other", "x")):
    return packet_sink.PacketPcapngSink(str(tmp_path / "p.pcapng"), ["lo"], "web", describe=describe, clock=clock,
                                        subscribe=False)


def test_flow_key_is_the_same_from_both_ends_and_ipv4_mapped_is_ipv4():
    assert packets.flow_key(CONN) == packets.flow_key((CONN[1], CONN[0]))
    family, port_a, port_b, _, a, b = packets.FLOW_KEY.unpack(packets.flow_key(CONN))
    assert (family, port_a, port_b) == (2, 443, 51000) and a[:4] == bytes([127, 0, 0, 1]) and a[4:] == bytes(12)
    v6 = packets.flow_key((("::1", 5), ("::2", 5)))
    assert packets.FLOW_KEY.unpack(v6)[0] == 10
    assert packets.HEADER.size == 88          # struct packet_header in tc.c.j2


def test_claimed_packets_wait_out_the_hold_and_carry_the_process(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    sink.write_packets([_packet(CONN, clock.now, tgid=77, target_no=3)], NAMES)
    assert _packets_written(tmp_path / "p.pcapng") == []          # held: its secrets may still come
    clock.now += packet_sink.HOLD_NS
    sink.tick()
    (body,) = _packets_written(tmp_path / "p.pcapng")
    assert b"pid=77 comm=nginx profile=web target=srv" in body
    sink.close()


def test_another_profiles_connection_is_not_written(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    sink.write_packets([_packet(OTHER, clock.now, tgid=9, target_no=4)], NAMES)
    clock.now += packet_sink.UNCLAIMED_NS * 2
    sink.tick()
    sink.close()
    assert _packets_written(tmp_path / "p.pcapng") == []


def test_a_handshake_waits_for_the_record_that_claims_it_and_secrets_come_first(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    hello = _packet(CONN, clock.now, payload=b"client hello")          # sent before any probe saw it
    sink.write_packets([hello], NAMES)
    clock.now += packet_sink.HOLD_NS + 1
    sink.tick()
    assert _packets_written(tmp_path / "p.pcapng") == []
    secret = {"label": "CLIENT_RANDOM", "client_random": "ab" * 32, "secret": "cd" * 48}
    sink.write([_record("tls.secret", (CONN[1], CONN[0]), secret)])   # the server's view of the same connection
    kinds = [t for t, _ in _blocks(tmp_path / "p.pcapng")]
    assert kinds.index(10) < kinds.index(6)              # the DSB before the packet it decrypts
    dsb = next(body for t, body in _blocks(tmp_path / "p.pcapng") if t == 10)
    assert b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 in dsb
    (body,) = _packets_written(tmp_path / "p.pcapng")
    assert b"client hello" in body and b"target=srv" in body
    sink.close()
    assert sink.not_claimed == 0


def test_a_connection_nobody_claims_is_dropped_and_counted(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    sink.write_packets([_packet(OTHER, clock.now), _packet(OTHER, clock.now + 1)], NAMES)
    clock.now += packet_sink.UNCLAIMED_NS + packet_sink.HOLD_NS
    sink.tick()
    assert sink.not_claimed == 2 and _packets_written(tmp_path / "p.pcapng") == []
    sink.write([_record("data", OTHER)])          # too late: they are gone
    assert _packets_written(tmp_path / "p.pcapng") == []
    sink.close()


def test_close_writes_what_is_claimed_and_counts_the_rest(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    sink.write_packets([_packet(CONN, clock.now, tgid=77, target_no=3), _packet(OTHER, clock.now)], NAMES)
    sink.close()
    assert len(_packets_written(tmp_path / "p.pcapng")) == 1 and sink.not_claimed == 1


def test_order_is_kept_within_a_connection(tmp_path):
    clock = Clock()
    sink = _sink(tmp_path, clock)
    sink.write_packets([_packet(CONN, clock.now + i, payload=b"seg%d" % i) for i in range(5)], NAMES)
    sink.write([_record("data", CONN)])
    clock.now += packet_sink.HOLD_NS + 10
    sink.tick()
    bodies = _packets_written(tmp_path / "p.pcapng")
    assert [int(body[body.index(b"seg") + 3:][:1]) for body in bodies] == [0, 1, 2, 3, 4]
    sink.close()


def test_decode_reads_the_kernels_packet_header():
    flow = packets.flow_key(CONN)
    raw = packets.HEADER.pack(5, 1, 1500, 3, 77, 9, 2, b"nginx".ljust(16, b"\0"), flow) + b"abc" + b"\0" * 5
    p = packets.decode(raw, 1000)
    assert (p[packets.TS], p[packets.IFINDEX], p[packets.LENGTH], p[packets.TGID], p[packets.TARGET_NO],
            p[packets.DIRECTION], p[packets.FLOW], p[packets.DATA]) == (1005, 1, 1500, 77, 9, 2, flow, b"abc")


def test_young_connections_are_wanted_only_on_the_ports_the_targets_filter_on():
    from orchestrator.profile import models
    from orchestrator.reconcile.reconciler import _ports_of

    def profile(*targets):
        return models.Profile("p", "/p.yaml", tuple(targets), None, ())
    web = models.Target("web", "openssl", binary="/x", filters=models.Filters(ports=(443,)))
    api = models.Target("api", "gotls", binary="/y", filters=models.Filters(ports=(8443, 443)))
    shell = models.Target("sh", "bash")
    anything = models.Target("db", "socket")
    assert _ports_of(profile(web, api, shell)) == {443, 8443}      # a shell has no connections
    assert _ports_of(profile(web, anything)) is None                # one target on any port: any port
    assert _ports_of(profile(shell)) is None
