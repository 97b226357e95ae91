"""TCP/IP packet synthesis for captured plaintext: no I/O, no clock (ISNs from a seedable PRNG).

Owns turning "these bytes went this way on this connection" into raw IPv4/IPv6 packets
(pcapng linktype 101, LINKTYPE_RAW) that Wireshark dissects as a real TCP stream: the real
4-tuple, a three-way handshake when a connection is first seen, per-direction sequence and
acknowledgement numbers, payloads cut into segments of at most `mss` bytes (Wireshark
reassembles them), IP total length, IPv4 header checksum and TCP checksum, and a FIN
exchange on `close`. Raw IP rather than Ethernet: there are no real MAC addresses to put
in a frame, and one linktype carries both IP versions.

The server side of a connection (the one the SYN goes to) is guessed from the ports: the
lower port is the server's, a tie makes the remote end the server. Dissectors that care
(MySQL, PostgreSQL) look at the well-known port anyway.

Memory is bounded: a flow is forgotten on `close` and the least recently used flow is
dropped past `max_flows` (seen again, it gets a new handshake).
"""
from __future__ import annotations

import collections
import ipaddress
import random
import struct

READ, WRITE = 1, 2          # read: remote → local; write: local → remote
DEFAULT_MSS = 32768          # well under the 16-bit IP length limits of both versions
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
_WSCALE = 14                 # declared in the SYNs: windows of 65535 << 14 never look full

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")


def _syn_options(mss: int) -> bytes:
    """MSS, NOP, window scale: 8 bytes, so the TCP header stays 32-bit aligned."""
    return struct.pack("!BBHBBBB", 2, 4, mss, 1, 3, 3, _WSCALE)


def _checksum(data: bytes) -> int:
    """Internet checksum. Since 2**16 ≡ 1 (mod 0xFFFF), the one's-complement sum of the 16-bit
    words is the big-endian integer mod 0xFFFF (0xFFFF, not 0, for a non-zero multiple)."""
    if len(data) % 2:
        data += b"\0"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return ~s & 0xFFFF


def _address(ip: str):
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class Flow:
    """One connection seen as client → server: addresses, ports, next sequence numbers."""
    __slots__ = ("client", "server", "seq", "ip_id", "v6")

    def __init__(self, client, server, isn: int = 0):
        (cip, cport), (sip, sport) = client, server
        if cip.version != sip.version:       # one end unmapped, the other not: speak IPv6
            cip, sip = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (cip, sip))
        self.v6 = cip.version == 6
        self.client = (cip.packed, cport)
        self.server = (sip.packed, sport)
        self.seq = [isn & 0xFFFFFFFF, (isn ^ 0x5A5A5A5A) & 0xFFFFFFFF]   # next seq: [client → server, server → client]
        self.ip_id = [0, 0]

    def segment(self, side: int, flags: int, payload: bytes = b"", opts: bytes = b"", advance=None) -> bytes:
        """One packet from `side` (0 client, 1 server); the sequence moves by `advance`
        (default: the payload length, plus one for SYN or FIN)."""
        src, dst = (self.client, self.server) if side == 0 else (self.server, self.client)
        seq = self.seq[side]
        ack = self.seq[1 - side] if flags & ACK else 0
        if advance is None:
            advance = len(payload) + (1 if flags & (SYN | FIN) else 0)
        self.seq[side] = (seq + advance) & 0xFFFFFFFF
        hlen = 20 + len(opts)
        tcp = _TCP.pack(src[1], dst[1], seq, ack, (hlen // 4) << 4, flags, 65535, 0, 0) + opts + payload
        if self.v6:
            pseudo = src[0] + dst[0] + struct.pack("!IxxxB", len(tcp), 6)
        else:
            pseudo = src[0] + dst[0] + struct.pack("!xBH", 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        if self.v6:
            return _IP6.pack(6 << 28, len(tcp), 6, 64, src[0], dst[0]) + tcp
        self.ip_id[side] = (self.ip_id[side] + 1) & 0xFFFF
        ip = _IP4.pack(0x45, 0, 20 + len(tcp), self.ip_id[side], 0x4000, 64, 6, 0, src[0], dst[0])
        return ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:] + tcp

    def handshake(self, mss: int) -> list[bytes]:
        opts = _syn_options(mss)
        return [self.segment(0, SYN, opts=opts), self.segment(1, SYN | ACK, opts=opts), self.segment(0, ACK)]

    def data(self, side: int, payload: bytes, length: int, mss: int) -> list[bytes]:
        """Segments of `payload`; a `length` beyond it (bytes lost to truncation) is skipped in
        sequence space, so Wireshark shows the gap ("previous segment not captured")."""
        out = []
        for off in range(0, len(payload), mss):
            chunk = payload[off:off + mss]
            last = off + mss >= len(payload)
            extra = length - len(payload) if last else 0
            out.append(self.segment(side, ACK | (PSH if last else 0), chunk, advance=len(chunk) + extra))
        return out

    def finish(self, first: int) -> list[bytes]:
        """FIN from `first`, FIN+ACK back, last ACK."""
        return [self.segment(first, FIN | ACK), self.segment(1 - first, FIN | ACK), self.segment(first, ACK)]


class Synthesizer:
    """Packets for many connections; conn = ((local_ip, local_port), (remote_ip, remote_port))."""

    def __init__(self, mss: int = DEFAULT_MSS, max_flows: int = 4096, seed: int | None = None):
        if not 1 <= mss <= 65000:
            raise ValueError(f"mss {mss} out of range 1..65000")
        self.mss = mss
        self.max_flows = max_flows
        # Fresh initial sequence numbers for every flow, also across runs appending to one
        # file: a reused 4-tuple must not look like a retransmission of the old connection.
        self._isn = random.Random(seed)
        self._flows: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._flows)

    def packets(self, conn, direction: int, payload: bytes, ts_ns: int = 0, length: int | None = None) -> list[bytes]:
        """Raw IP packets carrying `payload` (handshake first when the connection is new).

        `direction` 1 (read) sends remote → local, 2 (write) local → remote. `length`, when
        larger than the payload, is the length before truncation. `ts_ns` is accepted for
        symmetry with the sink; packets carry no time of their own.
        """
        if direction not in (READ, WRITE):
            raise ValueError(f"direction {direction!r} is neither 1 (read) nor 2 (write)")
        if not payload:
            return []
        flow, out, local_side = self._flow(conn)
        side = local_side if direction == WRITE else 1 - local_side
        out += flow.data(side, payload, max(length or 0, len(payload)), self.mss)
        return out

    def close(self, conn, ts_ns: int = 0) -> list[bytes]:
        """FIN exchange started by the local end; the flow is forgotten. [] for an unknown conn."""
        entry = self._flows.pop(conn, None)
        if entry is None:
            return []
        flow, local_side = entry
        return flow.finish(local_side)

    def _flow(self, conn):
        entry = self._flows.get(conn)
        if entry is not None:
            self._flows.move_to_end(conn)
            return entry[0], [], entry[1]
        (lip, lport), (rip, rport) = conn
        local, remote = (_address(lip), int(lport)), (_address(rip), int(rport))
        local_is_server = local[1] < remote[1]
        isn = self._isn.getrandbits(32)
        flow = Flow(remote, local, isn) if local_is_server else Flow(local, remote, isn)
        local_side = 1 if local_is_server else 0
        self._flows[conn] = (flow, local_side)
        if len(self._flows) > self.max_flows:
            self._flows.popitem(last=False)
        return flow, flow.handshake(self.mss), local_side
