"""Packet capture for pcapng sinks: the TC classifier (templates/kern/tc.c.j2, owned here), its
place on interfaces (bpf/tc.py) and the ring buffer its packets come through.

One capture per apply process, made when the first sink asks for an interface and kept until
exit. An interface is attached while some sink wants it and detached when the last one lets it
go. Loopback is attached on egress only: every packet on lo passes egress, then ingress, and would
otherwise be captured twice. Packets reach their sinks on the dispatcher's thread, in ring order,
through `submit` (so a sink sees them in order with the records, secrets included).
"""
from __future__ import annotations

import collections
import ctypes
import os
import socket
import struct
import threading
import time

from orchestrator import threadname
from orchestrator.bpf import owner, render, ringreader, state, tc

TEMPLATE = "tc.c.j2"
SNAPLEN = 65536              # bytes of a packet kept (loopback carries 64 KiB segments)
YOUNG_PACKETS = 16           # packets of a connection not yet claimed by a probe (its handshake)
RING_KIB = 16384
DRAIN_INTERVAL_S = 0.02
# /sys/class/net/X/type: interfaces whose packets start with an Ethernet header at TC
ETHERNET_TYPES = {"1": "ethernet", "772": "loopback"}

MONO_TO_EPOCH_NS = time.time_ns() - time.monotonic_ns()     # bpf_ktime_get_ns → ns since the epoch
# struct packet_header (tc.c.j2), then the packet's first `cap` bytes
HEADER = struct.Struct("<QIIIIHBx16s40s4x")
FLOW_KEY = struct.Struct("<HHHH16s16s")


# A captured packet, as a tuple (cheap to make by the hundred thousand):
TS, IFINDEX, LENGTH, TGID, TARGET_NO, DIRECTION, COMM, FLOW, DATA = range(9)
#   ts         ns since the epoch
#   length     the packet's length on the wire (DATA may be shorter: SNAPLEN)
#   tgid       the process whose probe claimed its connection, 0: not claimed yet
#   comm       that process's name (16 bytes, NUL-padded)
#   flow       its connection's key (shared.h flow_key: both endpoints, in the kernel's order)


def decode(raw: bytes, mono_to_epoch_ns: int) -> tuple:
    ts, ifindex, length, cap, tgid, target_no, direction, comm, flow = HEADER.unpack_from(raw)
    return (ts + mono_to_epoch_ns, ifindex, length, tgid, target_no, direction, comm, flow,
            raw[HEADER.size:HEADER.size + cap])


def flow_key(conn) -> bytes:
    """The kernel's key (shared.h flow_key_of) of a connection ((local ip, port), (remote ip, port))."""
    import ipaddress

    (lip, lport), (rip, rport) = conn
    la, ra = ipaddress.ip_address(lip), ipaddress.ip_address(rip)
    family = 2 if la.version == 4 else 10
    a, b = la.packed.ljust(16, b"\0"), ra.packed.ljust(16, b"\0")
    if (lport, a) <= (rport, b):
        return FLOW_KEY.pack(family, lport, rport, 0, a, b)
    return FLOW_KEY.pack(family, rport, lport, 0, b, a)


class PacketError(OSError):
    """An interface cannot be captured on (the machine's, not the profile's fault); one line."""


def check_interface(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or len(name) > 15:
        raise PacketError(f"interface {name!r}: not an interface name")
    try:
        with open(f"/sys/class/net/{name}/type") as f:
            kind = f.read(16).strip()
    except OSError:
        raise PacketError(f"interface {name}: no such interface") from None
    if kind not in ETHERNET_TYPES:
        raise PacketError(f"interface {name}: link type {kind} is not supported (Ethernet and loopback are)")


def directions_for(name: str) -> tuple[str, ...]:
    return ("egress",) if name == "lo" else ("ingress", "egress")


class PacketCapture:
    def __init__(self, submit, warn=None):
        self._submit = submit               # fn → runs fn on the dispatcher thread, in order
        self._warn = warn or (lambda line: None)
        self._lock = threading.Lock()
        self._subs: dict = {}               # sink → frozenset of interface names
        self._sink_ports: dict = {}         # sink → frozenset of ports, or None: any
        self._refs: collections.Counter = collections.Counter()
        self._names: dict[int, str] = {}    # ifindex → name
        self._attachment = tc.TcAttachment()
        self._bpf = None
        self._fds: dict[str, int] = {}
        self._reader = None
        self._lost = None
        self._on = None                     # the shared ecap_packets_on switch, while capturing
        self._lost_seen = 0
        self._stop = threading.Event()
        self._thread = None
        self.ports: set[int] | None = None  # young connections: only these ports (None: any)

    # ---- sinks
    def subscribe(self, sink, interfaces, ports=None) -> None:
        """Capture on `interfaces` for `sink` (its write_packets gets their packets); all or nothing.
        `ports`: the only ports its connections can have (its targets' port filters), None: any."""
        names = list(dict.fromkeys(interfaces))
        for name in names:
            check_interface(name)
        with self._lock:
            self._start()
            added, counted = [], []
            try:
                for name in names:
                    if self._refs[name] == 0:
                        added.append(name)
                        for direction in directions_for(name):
                            self._attachment.attach(name, self._fds[direction], (direction,))
                        self._names[socket.if_nametoindex(name)] = name
                    self._refs[name] += 1
                    counted.append(name)
            except (tc.TcError, OSError) as exc:
                for name in counted:
                    self._refs[name] -= 1
                    if self._refs[name] <= 0:
                        del self._refs[name]
                for name in added:
                    self._detach(name)
                raise PacketError(str(exc)) from None
            self._subs[sink] = frozenset(names)
            self._sink_ports[sink] = frozenset(ports) if ports else None
            self._update_ports()

    def unsubscribe(self, sink) -> None:
        with self._lock:
            names = self._subs.pop(sink, frozenset())
            self._sink_ports.pop(sink, None)
            if self._bpf is not None:
                self._update_ports()
            for name in names:
                self._refs[name] -= 1
                if self._refs[name] <= 0:
                    del self._refs[name]
                    self._detach(name)

    def _update_ports(self) -> None:
        """Young connections are captured only on the ports some sink's targets filter on; any
        port as soon as one sink's targets have no port filter."""
        wanted = list(self._sink_ports.values())
        self.ports = None if not wanted or any(p is None for p in wanted) else set().union(*wanted)
        self._write_ports()

    def interfaces(self) -> list[dict]:
        """For `status`: each attached interface, its directions and how many sinks want it."""
        with self._lock:
            return [{"interface": name, "directions": list(directions_for(name)), "sinks": n}
                    for name, n in sorted(self._refs.items())]

    # ---- kernel side
    def _start(self) -> None:
        if self._bpf is not None:
            return
        try:
            state.shared()
            text = render.kernel_template(TEMPLATE, snaplen=SNAPLEN, young_packets=YOUNG_PACKETS,
                                          cpus=render.possible_cpus(),
                                          ring_pages=RING_KIB * 1024 // os.sysconf("SC_PAGE_SIZE"))
            self._bpf = owner.compile(text, render.cflags())
            ingress = owner.load_func(self._bpf, "tc_ingress", tracepoint=False, classifier=True)
            egress = owner.load_func(self._bpf, "tc_egress", tracepoint=False, classifier=True)
            self._lost = owner.table(self._bpf, "packet_lost")
            self._ports = owner.table(self._bpf, "young_ports")
            self._ports_set = owner.table(self._bpf, "young_ports_set")
            self._reader = ringreader.RingReader(owner.table(self._bpf, "packets").map_fd, RING_KIB * 1024)
            self._on = owner.table(self._bpf, "ecap_packets_on")
            self._on[ctypes.c_int(0)] = ctypes.c_uint32(1)       # the probes start claiming connections
        except owner.BccError as exc:
            self._close_bpf()
            raise PacketError(f"packet capture: {exc}") from None
        self._fds = {"ingress": ingress, "egress": egress}
        self._stop.clear()
        self._thread = threading.Thread(target=self._drain_loop, name="ecapture-packets", daemon=True)
        self._thread.start()

    def _write_ports(self) -> None:
        self._ports.clear()
        for port in sorted(self.ports or ()):
            self._ports[ctypes.c_uint16(port)] = ctypes.c_uint8(1)
        self._ports_set[ctypes.c_int(0)] = ctypes.c_uint8(1 if self.ports else 0)

    def _detach(self, name: str) -> None:
        try:
            self._attachment.detach(name)
        except tc.TcError as exc:
            self._warn(f"packet capture: {exc}")

    def _drain_loop(self) -> None:
        threadname.name_this_thread()
        ticks = 0
        while not self._stop.wait(DRAIN_INTERVAL_S):
            ticks += 1
            if not self.drain() and ticks % 5 == 0:
                self._submit(self._tick)           # held packets come due without new ones
            if ticks % 50 == 0:
                self._report_lost()

    def drain(self) -> int:
        """Hand every packet in the ring to the dispatcher; how many."""
        raws: list = []
        with self._lock:
            if self._reader is None:
                return 0
            self._reader.read(raws.append)
        if raws:
            offset = MONO_TO_EPOCH_NS
            batch = [decode(r, offset) for r in raws]
            self._submit(lambda b=batch: self._deliver(b))
        return len(raws)

    def _deliver(self, batch) -> None:
        with self._lock:
            subs = list(self._subs.items())
            names = dict(self._names)
        for sink, wanted in subs:
            mine = [p for p in batch if names.get(p[IFINDEX]) in wanted]
            if mine:
                sink.write_packets(mine, names)

    def _tick(self) -> None:
        with self._lock:
            sinks = list(self._subs)
        for sink in sinks:
            sink.tick()

    def _report_lost(self) -> None:
        """Packets the ring had no room for: a loss for every sink capturing then."""
        with self._lock:
            if self._lost is None:
                return
            total = self._lost.sum(ctypes.c_int(0)).value
            delta, self._lost_seen = total - self._lost_seen, total
            sinks = list(self._subs)
        if delta and sinks:
            profiles = sorted({getattr(s, "profile", "") for s in sinks})
            self._submit(lambda: _report_loss(profiles, delta))

    def stop(self) -> None:
        """Stop reading: what is in the ring is handed over first (at exit, before the dispatcher stops)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.drain()
        self._report_lost()

    def close(self) -> None:
        """Detach every interface and free the classifier (at exit)."""
        self.stop()
        with self._lock:
            try:
                self._attachment.detach_all()
            except tc.TcError as exc:
                self._warn(f"packet capture: {exc}")
            self._refs.clear()
            self._subs.clear()
            self._close_bpf()

    def _close_bpf(self) -> None:
        if self._on is not None:
            self._on[ctypes.c_int(0)] = ctypes.c_uint32(0)
            self._on = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._bpf is not None:
            owner.cleanup(self._bpf)
            self._bpf = None


_lock = threading.Lock()
_capture: PacketCapture | None = None
_submit = None
_warn = None
_describe = None
_loss = None


def configure(submit, warn, describe, report_loss) -> None:
    """At apply start: where packets go (the dispatcher's call_soon), where warnings go, how a
    target number is named ((profile, target) or None), and how lost packets are reported
    (profiles, count)."""
    global _submit, _warn, _describe, _loss
    _submit, _warn, _describe, _loss = submit, warn, describe, report_loss


def _report_loss(profiles, n: int) -> None:
    if _loss is not None:
        _loss(profiles, n)


def describe_target(target_no: int):
    return _describe(target_no) if _describe is not None else None


def capture() -> PacketCapture:
    global _capture
    with _lock:
        if _capture is None:
            if _submit is None:
                raise PacketError("packet capture runs only under `ecapture apply`")
            _capture = PacketCapture(_submit, _warn)
        return _capture


def cleanup_stale() -> list[str]:
    """Remove the classifier filters a killed apply left (at start); what was removed, one line
    each. Raises PacketError when the interfaces cannot be read."""
    try:
        return tc.cleanup_stale()
    except tc.TcError as exc:
        raise PacketError(f"cannot look for filters a killed apply left: {exc}") from None


def interfaces() -> list[dict]:
    with _lock:
        return _capture.interfaces() if _capture is not None else []


def stop() -> None:
    with _lock:
        if _capture is not None:
            _capture.stop()


def close() -> None:
    global _capture
    with _lock:
        if _capture is not None:
            _capture.close()
            _capture = None
