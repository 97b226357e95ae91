"""pcapng file sinks: captured plaintext as synthesized TCP, and the file side of TC capture.

`PlaintextPcapngSink` (`{type: pcapng, path, source: plaintext}`) turns data events into
raw-IP TCP packets (`tcpsynth`) on one interface, each packet commented with the process
and profile it came from. `PacketPcapngWriter` writes packets that were captured whole
(TC mode) on interfaces its caller names, plus TLS key log lines as Decryption Secrets
Blocks, so Wireshark decrypts the file with no key file.

Files are opened by `safefile.open_private` (0600, no links followed) in append mode: an
existing file gains a new section (SHB), which pcapng readers take as a continuation. `reopen`
(SIGHUP, for logrotate) opens the path again and starts it the same way: a section header, the
interfaces again before their next packet, and (packets) the TLS secrets written lately, so the
connections under way still decrypt from the new file.
Each batch goes out as one os.write; a batch that fails part-way is cut off again so the
file never ends in half a block (the same rule as the JSONL sink).
"""
from __future__ import annotations

import collections
import os

from orchestrator import safefile
from orchestrator.sinks import pcapng, tcpsynth

_FLUSH_AT = 1 << 20      # PacketPcapngWriter writes its buffer out past this many bytes
RECENT_SECRETS = 1024    # secrets PacketPcapngWriter writes again at the start of a reopened file


class PlaintextPcapngSink:
    """Data events → synthesized TCP/IP packets (linktype 101) in a pcapng file.

    Counts in `unnamed` the events whose connection the kernel could not name (no conn, or an
    address that is not IPv4/IPv6) and in `skipped` those with a direction other than
    read/write; neither is written.
    """
    kind = "pcapng"
    IF_NAME = "ecapture-plaintext"

    def __init__(self, path: str, mss: int = tcpsynth.DEFAULT_MSS, max_flows: int = 4096):
        self.path = path
        self.unnamed = 0
        self.skipped = 0
        self._synth = tcpsynth.Synthesizer(mss=mss, max_flows=max_flows)
        self._fd = self._open()

    def _open(self) -> int:
        """The path opened (0600, no link followed) with a new section describing our interface."""
        fd = safefile.open_private(self.path)
        try:
            safefile.write_whole(fd, pcapng.section_header() +
                                 pcapng.interface_description(pcapng.LINKTYPE_RAW, name=self.IF_NAME))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reopen(self) -> None:
        """Open the path again (SIGHUP, after logrotate renamed the file away). The connections
        under way go on in the new file (their sequence numbers continue). If the open fails the
        error is raised and the sink keeps its current file."""
        if self._fd < 0:
            return
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)

    def write(self, records) -> None:
        """Records are for other sinks: this one is fed raw data through `write_data`."""

    def write_data(self, items) -> None:
        """items: [(ev, conn)] with conn ((local ip, port), (remote ip, port)) or None."""
        out = []
        epb = pcapng.enhanced_packet
        synth = self._synth
        for ev, conn in items:
            if conn is None:
                self.unnamed += 1
                continue
            if ev.direction not in (tcpsynth.READ, tcpsynth.WRITE):
                self.skipped += 1
                continue
            try:
                packets = synth.packets(conn, ev.direction, ev.payload, ev.ts,
                                        length=ev.len if ev.truncated else None)
            except ValueError:          # an address the kernel reported in a family we cannot name
                self.unnamed += 1
                continue
            if not packets:
                continue
            src = ev.source
            comment = f"pid={ev.pid} comm={ev.comm} profile={src.profile} target={src.target.name}"
            if ev.truncated:
                comment += f" truncated={len(ev.payload)}/{ev.len}"
            out += [epb(0, ev.ts, p, None, comment) for p in packets]
        if out:
            safefile.write_whole(self._fd, b"".join(out))

    def close_conn(self, conn, ts_ns: int) -> None:
        """Write the FIN exchange of a connection that closed and forget it."""
        packets = self._synth.close(conn)
        if packets:
            safefile.write_whole(self._fd, b"".join(pcapng.enhanced_packet(0, ts_ns, p) for p in packets))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PacketPcapngWriter:
    """Whole packets and TLS secrets into a pcapng file, buffered until `flush`.

    `add_interface` hands out ids 0, 1, ...; an interface's IDB reaches the buffer just before
    its first packet (with those of lower ids still unwritten, since pcapng numbers interfaces
    by the order of their IDBs).
    """

    def __init__(self, path: str):
        self.path = path
        self._interfaces: list[tuple[str, int]] = []
        self._described = 0            # IDBs in the buffer or the file
        self._described_in_file = 0
        self._buf = bytearray()
        self._recent_secrets: collections.deque = collections.deque(maxlen=RECENT_SECRETS)
        self._fd = self._open()

    def _open(self) -> int:
        fd = safefile.open_private(self.path)
        try:
            safefile.write_whole(fd, pcapng.section_header())
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reopen(self) -> None:
        """Write out what is buffered, then open the path again (SIGHUP, after logrotate renamed
        the file away) with a new section: every interface is described again before its next
        packet, and the latest RECENT_SECRETS secrets come first, so connections under way still
        decrypt. If the flush or the open fails the error is raised and the current file stays."""
        if self._fd < 0:
            return
        self.flush()
        fd = self._open()
        old, self._fd = self._fd, fd
        os.close(old)
        self._described = self._described_in_file = 0
        if self._recent_secrets:
            self._buf += pcapng.decryption_secrets(list(self._recent_secrets))

    def add_interface(self, name: str, linktype: int = pcapng.LINKTYPE_ETHERNET) -> int:
        self._interfaces.append((name, linktype))
        return len(self._interfaces) - 1

    def write_packet(self, if_id: int, ts_ns: int, data: bytes, orig_len: int | None = None,
                     comment: str | None = None) -> None:
        if not 0 <= if_id < len(self._interfaces):
            raise ValueError(f"interface id {if_id} was not added")
        self._describe(if_id + 1)
        self._buf += pcapng.enhanced_packet(if_id, ts_ns, data, orig_len, comment)
        if len(self._buf) >= _FLUSH_AT:
            self.flush()

    def append(self, blocks: bytes) -> None:
        """Packet blocks already encoded (pcapng.packet) for any added interface: every IDB goes
        first (again, after a failed flush took them with it)."""
        self._describe(len(self._interfaces))
        self._buf += blocks

    def _describe(self, count: int) -> None:
        """The IDBs of the first `count` interfaces, in order, those not in the buffer or file yet."""
        while self._described < count:
            name, linktype = self._interfaces[self._described]
            self._buf += pcapng.interface_description(linktype, name=name)
            self._described += 1

    def write_secrets(self, lines) -> None:
        """One Decryption Secrets Block of NSS key log lines; put it before the packets it opens."""
        if lines:
            self._buf += pcapng.decryption_secrets(lines)
            self._recent_secrets.extend(lines)

    def flush(self) -> None:
        """Write the buffer out; if that fails its packets are lost (and the error raised), and
        the IDBs that went with them are written again before their next packet."""
        if self._buf:
            data, self._buf = self._buf, bytearray()
            try:
                safefile.write_whole(self._fd, data)
            except BaseException:
                self._described = self._described_in_file
                raise
            self._described_in_file = self._described

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1
