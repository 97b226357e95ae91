"""The pcapng sink with real packets (`{type: pcapng, interfaces: [...]}`): the targets' TCP packets
from the TC classifier (bpf/packets.py), with their TLS secrets in Decryption Secrets Blocks, so
Wireshark and tshark open the file decrypted with no key file.

A packet is written once its connection is known to be one of this profile's targets': the
probes claimed it in the kernel (the packet names the process), or a record of this profile was
made on it (a secret, data). Packets of a connection not claimed yet (its handshake: sent before
any probe sees the connection) wait up to UNCLAIMED_NS, then are dropped as not ours and counted.

Secrets must come before the packets they decrypt, but a process derives a secret just after it
receives the packet that starts it, and secrets and packets come through different rings. So
every packet waits HOLD_NS before it is written, and secrets are written the moment they arrive.
"""
from __future__ import annotations

import collections
import time

from orchestrator.bpf import packets
from orchestrator.bpf.packets import COMM, DATA, FLOW, IFINDEX, LENGTH, TARGET_NO, TGID, TS
from orchestrator.sinks import pcapng
from orchestrator.sinks.pcapng_sink import PacketPcapngWriter

HOLD_NS = 300_000_000
UNCLAIMED_NS = 3_000_000_000
MAX_FLOWS = 65536
MAX_PENDING = 200_000        # packets of unclaimed connections held at once; beyond: dropped, counted


class PacketPcapngSink:
    kind = "pcapng"

    def __init__(self, path: str, interfaces, profile: str, describe=None, clock=time.time_ns, subscribe=True,
                 ports=None):
        self.path = path
        self.profile = profile
        self._describe = describe or packets.describe_target   # target number → (profile, target) or None
        self._clock = clock
        self._writer = PacketPcapngWriter(path)
        self._ids = {name: self._writer.add_interface(name) for name in interfaces}
        self._flows: collections.OrderedDict = collections.OrderedDict()   # flow key → encoded comment
        self._held: collections.deque = collections.deque()                # (packet, if_id), arrival order
        self._keys: dict = {}                                              # record conn → flow key
        self._pending: dict = {}                                           # flow key → [(packet, if_id)]
        self._pending_count = 0
        self.written = 0
        self.not_claimed = 0          # packets of connections no target of this profile claimed
        self.overflow = 0             # unclaimed packets beyond MAX_PENDING
        self._capture = None
        if subscribe:
            self._capture = packets.capture()
            try:
                self._capture.subscribe(self, list(self._ids), ports)
            except Exception:
                self._writer.close()
                raise

    # ---- from the dispatcher
    def write(self, records) -> None:
        secrets = [f"{r.fields['label']} {r.fields['client_random']} {r.fields['secret']}"
                   for r in records if r.type == "tls.secret"]
        if secrets:          # first: a claim below may write the packets these secrets open
            self._writer.write_secrets(secrets)
        keys = self._keys
        for r in records:
            ev = r.event
            if ev is not None and r.conn is not None:
                key = keys.get(r.conn)
                if key is None:
                    if len(keys) >= MAX_FLOWS:
                        keys.clear()
                    key = keys[r.conn] = packets.flow_key(r.conn)
                if key not in self._flows:
                    self._claim(key, ev.pid, ev.comm, ev.source.target.name)
        self._release(self._clock())
        self._writer.flush()

    def write_packets(self, batch, names) -> None:
        ids, flows = self._ids, self._flows
        held = self._held
        for p in batch:
            if_id = ids.get(names.get(p[IFINDEX]))
            if if_id is None:
                continue
            if p[TGID] and p[FLOW] not in flows:
                owner = self._describe(p[TARGET_NO])
                if owner is None or owner[0] != self.profile:
                    continue            # another profile's connection
                self._claim(p[FLOW], p[TGID], p[COMM].split(b"\0", 1)[0].decode("utf-8", "replace"), owner[1])
            held.append((p, if_id))
        self._release(self._clock())
        self._writer.flush()

    def tick(self) -> None:
        self._release(self._clock())
        self._writer.flush()

    # ----
    def _claim(self, key: bytes, pid: int, comm: str, target: str) -> None:
        if key in self._flows:
            return
        opts = self._flows[key] = pcapng.comment_options(
            f"pid={pid} comm={comm} profile={self.profile} target={target}")
        if len(self._flows) > MAX_FLOWS:
            self._flows.popitem(last=False)
        waiting = self._pending.pop(key, None)
        if waiting:
            self._pending_count -= len(waiting)
            for p, if_id in waiting:
                self._write(p, if_id, opts)

    def _write(self, p, if_id: int, opts: bytes) -> None:
        self._writer.append(pcapng.packet(if_id, p[TS], p[DATA], p[LENGTH], opts))
        self.written += 1

    def _release(self, now: int) -> None:
        held, flows, pending = self._held, self._flows, self._pending
        due = now - HOLD_NS
        encode = pcapng.packet
        blocks = []
        while held and held[0][0][TS] <= due:
            p, if_id = held.popleft()
            opts = flows.get(p[FLOW])
            if opts is not None:
                blocks.append(encode(if_id, p[TS], p[DATA], p[LENGTH], opts))
            elif self._pending_count >= MAX_PENDING:
                self.overflow += 1
            else:
                pending.setdefault(p[FLOW], []).append((p, if_id))
                self._pending_count += 1
        if blocks:
            self._writer.append(b"".join(blocks))
            self.written += len(blocks)
        if pending:
            for key in [k for k, v in pending.items() if v[0][0][TS] + UNCLAIMED_NS <= now]:
                dropped = pending.pop(key)
                self._pending_count -= len(dropped)
                self.not_claimed += len(dropped)

    def reopen(self) -> None:
        """SIGHUP: the file is opened again (see PacketPcapngWriter.reopen); packets still held
        go to the new file."""
        self._writer.reopen()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.unsubscribe(self)
            self._capture = None
        while self._held:
            p, if_id = self._held.popleft()
            opts = self._flows.get(p[FLOW])
            if opts is not None:
                self._write(p, if_id, opts)
            else:
                self.not_claimed += 1
        self.not_claimed += self._pending_count
        self._pending.clear()
        self._pending_count = 0
        self._writer.close()
