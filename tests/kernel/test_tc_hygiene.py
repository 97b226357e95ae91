"""The TC classifier's hygiene on real interfaces (orchestrator/bpf/tc.py): what is added on attach
is removed on detach, a clsact qdisc and filters that were there before are left as they were,
filters of a killed apply are found and removed by the next start, loopback counts a packet once.

Every test runs in network namespaces of its own (a veth pair between two of them, and their
loopbacks), so it never touches this machine's interfaces nor sees other tests' traffic. `tc`
itself, run in the namespace, is the independent witness of what is in the kernel. The program
counts UDP datagrams to two ports and returns TC_ACT_UNSPEC, so other filters still run.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.bpf import owner, tc

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CLONE_NEWNET = 0x40000000
REQUEST_PORT, REPLY_PORT = 40001, 40002      # counted in slots 0 and 1 (slots 2 and 3: count_alt)
ADDR_A, ADDR_B = "10.201.0.1", "10.201.0.2"
N = 25

PROGRAM = """
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

BPF_ARRAY(counts, u64, 4);

static __always_inline int count_at(struct __sk_buff *skb, int base) {
    void *data = (void *)(long)skb->data, *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    struct udphdr *udp = (void *)ip + sizeof(*ip);
    if ((void *)(udp + 1) > data_end)
        return TC_ACT_UNSPEC;
    if (eth->h_proto != ETH_P_IP_BE || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
        return TC_ACT_UNSPEC;
    int slot = udp->dest == REQUEST_BE ? base : udp->dest == REPLY_BE ? base + 1 : -1;
    if (slot >= 0)
        counts.atomic_increment(slot);
    return TC_ACT_UNSPEC;     /* go on to the next filter: a capture never decides a packet's fate */
}

int count(struct __sk_buff *skb) { return count_at(skb, 0); }
int count_alt(struct __sk_buff *skb) { return count_at(skb, 2); }
"""

CHILD = """
import sys, time
from orchestrator.bpf import owner, tc
import bcc
module = owner.compile(sys.argv[1], [])
fd = owner.run(lambda: module.load_func(b"count", bcc.BPF.SCHED_CLS).fd)
attachment = tc.TcAttachment()
for spec in sys.argv[2:]:
    ifname, directions = spec.split("=")
    attachment.attach(ifname, fd, directions.split(","))
print("ready", flush=True)
time.sleep(600)
"""

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


@contextmanager
def inside(ns: str):
    """Run this thread (and the netlink sockets it opens) in network namespace `ns`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(there)
        yield
    finally:
        _setns(home)
        os.close(there)
        os.close(home)


def sh(*argv: str, ns: str | None = None, check=True) -> str:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Net:
    """Namespaces a and b joined by a veth pair (va in a, vb in b), loopbacks up."""

    def __init__(self):
        self.a, self.b = f"ecap-tc-{os.getpid()}-a", f"ecap-tc-{os.getpid()}-b"

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)     # a run killed before its cleanup
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", self.b)
        for ns, dev, addr in ((self.a, "va", ADDR_A), (self.b, "vb", ADDR_B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)

    def tc(self, *args: str) -> str:
        return sh("tc", *args, ns=self.a)

    def qdiscs(self, dev: str) -> str:
        return self.tc("qdisc", "show", "dev", dev)

    def filters(self, dev: str, direction: str) -> str:
        return self.tc("filter", "show", "dev", dev, direction)

    def exchange(self, n: int = N) -> None:
        """`n` datagrams a → b (REQUEST_PORT), each echoed b → a (REPLY_PORT), one at a time."""
        with inside(self.b):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with inside(self.a):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with server, client:
            server.bind((ADDR_B, REQUEST_PORT))
            client.bind((ADDR_A, REPLY_PORT))
            for sock in (server, client):
                sock.settimeout(5)
            for i in range(n):
                client.sendto(b"ping %d" % i, (ADDR_B, REQUEST_PORT))
                data, peer = server.recvfrom(100)
                server.sendto(data, peer)
                assert client.recvfrom(100)[0] == data


def loopback_datagrams(n: int = N) -> None:
    """`n` datagrams over this namespace's lo from REPLY_PORT to REQUEST_PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", REQUEST_PORT))
        tx.bind(("127.0.0.1", REPLY_PORT))
        rx.settimeout(5)
        for i in range(n):
            tx.sendto(b"lo %d" % i, ("127.0.0.1", REQUEST_PORT))
            assert rx.recv(100) == b"lo %d" % i


@pytest.fixture(scope="module")
def program():
    """The counting program, compiled and loaded through the bcc owner: (fds by name, counts)."""
    import bcc

    be = {name: socket.htons(value) for name, value in
          (("ETH_P_IP_BE", 0x0800), ("REQUEST_BE", REQUEST_PORT), ("REPLY_BE", REPLY_PORT))}
    text = "".join(f"#define {k} {v}\n" for k, v in be.items()) + PROGRAM
    module = owner.compile(text, [])
    try:
        fds = {name: owner.run(lambda n=name: module.load_func(n.encode(), bcc.BPF.SCHED_CLS).fd)
               for name in ("count", "count_alt")}
        yield Program(text, fds, owner.table(module, "counts"))
    finally:
        owner.cleanup(module)


class Program:
    def __init__(self, text, fds, table):
        self.text, self.fds, self.table = text, fds, table

    @property
    def fd(self) -> int:
        return self.fds["count"]

    def counts(self) -> list[int]:
        return [self.table[ctypes.c_int(i)].value for i in range(4)]

    def reset(self) -> None:
        for i in range(4):
            self.table[ctypes.c_int(i)] = ctypes.c_uint64(0)


@pytest.fixture
def net(program):
    program.reset()
    with Net() as net:
        yield net


def our_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " ecapture:" in ln]


def test_attach_adds_clsact_and_a_tagged_filter_counts_both_directions_and_detach_removes_both(net, program):
    assert "clsact" not in net.qdiscs("va")
    attachment = tc.TcAttachment()
    with inside(net.a):
        try:
            attachment.attach("va", program.fd)
            attachment.attach("va", program.fd)       # idempotent: still one filter per direction
            tag = f"ecapture:{os.getpid()}:{tc.process_start(os.getpid())}:own-qdisc"
            assert "clsact" in net.qdiscs("va")
            for direction in ("ingress", "egress"):
                lines = our_lines(net.filters("va", direction))
                assert len(lines) == 1, lines
                assert f"pref {tc.PRIO} bpf" in lines[0] and f" {tag} direct-action" in lines[0]
                assert f"handle {os.getpid():#x}" in lines[0]
            assert attachment.interfaces() == tc.attached() == [("va", "egress"), ("va", "ingress")]

            net.exchange()
            assert program.counts() == [N, N, 0, 0]      # each request leaves va once, each reply arrives once

            # A reload with a new program: replaced in place, same filter, the old one no longer runs.
            attachment.attach("va", program.fds["count_alt"])
            assert all(len(our_lines(net.filters("va", d))) == 1 for d in ("ingress", "egress"))
            net.exchange()
            assert program.counts() == [N, N, N, N]
        finally:
            attachment.detach_all()
        attachment.detach_all()                       # idempotent
        assert attachment.interfaces() == tc.attached() == []
    assert "clsact" not in net.qdiscs("va")
    assert net.filters("va", "ingress") == net.filters("va", "egress") == ""


def test_a_clsact_qdisc_and_foreign_filters_that_were_there_are_left_as_they_were(net, program):
    net.tc("qdisc", "add", "dev", "va", "clsact")
    # A foreign cls_bpf (same kind as ours) ahead of us that matches nothing, and a u32 after us.
    net.tc("filter", "add", "dev", "va", "ingress", "pref", "100", "bpf", "bytecode", "1,6 0 0 0,")
    net.tc("filter", "add", "dev", "va", "egress", "pref", "50000", "u32", "match", "u32", "0", "0")
    before = {d: net.filters("va", d) for d in ("ingress", "egress")}
    qdiscs_before = net.qdiscs("va")
    attachment = tc.TcAttachment()
    with inside(net.a):
        try:
            attachment.attach("va", program.fd, ["ingress", "egress"])
            for d in ("ingress", "egress"):
                lines = our_lines(net.filters("va", d))
                assert len(lines) == 1 and ":own-qdisc" not in lines[0], lines
            net.exchange()
            assert program.counts()[:2] == [N, N]
        finally:
            attachment.detach_all()
    assert net.qdiscs("va") == qdiscs_before
    assert {d: net.filters("va", d) for d in ("ingress", "egress")} == before


def _child(ns: str, program, *specs: str) -> subprocess.Popen:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-c", CHILD, program.text, *specs],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise AssertionError(f"child did not attach: {line}{proc.communicate()[1]}")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()          # reaped: a zombie would still look like a running process


def test_filters_of_a_killed_apply_are_removed_at_the_next_start_and_live_ones_kept(net, program):
    sh("ip", "-n", net.a, "link", "add", "vc", "type", "veth", "peer", "name", "vd")
    net.tc("qdisc", "add", "dev", "vc", "clsact")        # there before: stays after the cleanup
    killed = live = None
    try:
        killed = _child(net.a, program, "va=ingress,egress", "lo=egress", "vc=ingress")
        live = _child(net.a, program, "va=ingress")
        # The second found the first's clsact on va: it inherits the right (and duty) to remove it.
        assert f"ecapture:{live.pid}:" in net.filters("va", "ingress")
        on_va = our_lines(net.filters("va", "ingress"))
        assert len(on_va) == 2 and all(":own-qdisc direct-action" in ln for ln in on_va), on_va
        assert ":own-qdisc" not in our_lines(net.filters("vc", "ingress"))[0]
        _kill(killed)
        with inside(net.a):
            removed = tc.cleanup_stale()
            assert sorted(removed) == sorted([
                f"va ingress filter of pid {killed.pid}", f"va egress filter of pid {killed.pid}",
                f"lo egress filter of pid {killed.pid}", "lo clsact qdisc",
                f"vc ingress filter of pid {killed.pid}"])
            assert tc.cleanup_stale() == []             # the live one is left alone, every time
        assert [f"ecapture:{live.pid}:" in ln for ln in our_lines(net.filters("va", "ingress"))] == [True]
        assert net.filters("va", "egress") == ""
        assert "clsact" not in net.qdiscs("lo")
        assert "clsact" in net.qdiscs("vc") and net.filters("vc", "ingress") == ""

        _kill(live)
        with inside(net.a):
            assert tc.cleanup_stale() == [f"va ingress filter of pid {live.pid}", "va clsact qdisc"]
        assert "clsact" not in net.qdiscs("va")
    finally:
        for proc in (killed, live):
            if proc is not None:
                _kill(proc)


def test_loopback_attached_on_egress_counts_each_packet_once(net, program):
    attachment = tc.TcAttachment()
    with inside(net.a):
        try:
            attachment.attach("lo", program.fd, ["egress"])
            loopback_datagrams()
            assert program.counts()[0] == N
            # The control: on both directions of lo every datagram is seen twice.
            attachment.attach("lo", program.fd, ["ingress"])
            assert attachment.interfaces() == [("lo", "egress"), ("lo", "ingress")]
            program.reset()
            loopback_datagrams()
            assert program.counts()[0] == 2 * N
            attachment.detach("lo", ["ingress"])
            assert attachment.interfaces() == [("lo", "egress")]
            assert net.filters("lo", "ingress") == "" and our_lines(net.filters("lo", "egress"))
        finally:
            attachment.detach_all()
    assert "clsact" not in net.qdiscs("lo")


def test_a_missing_interface_or_a_foreign_ingress_qdisc_is_a_one_line_error(net, program):
    attachment = tc.TcAttachment()
    with inside(net.a):
        with pytest.raises(tc.TcError, match="no network interface named 'ecap-nope0'"):
            attachment.attach("ecap-nope0", program.fd)
        with pytest.raises(tc.TcError, match="ingress or egress, not 'both'"):
            attachment.attach("va", program.fd, ["both"])
        attachment.detach("ecap-nope0")               # nothing attached there: nothing to do
        sh("tc", "qdisc", "add", "dev", "va", "ingress", ns=net.a)
        with pytest.raises(tc.TcError, match="va has an 'ingress' qdisc where the classifier needs clsact"):
            attachment.attach("va", program.fd)
        assert attachment.interfaces() == []
    assert "clsact" not in net.qdiscs("va") and "clsact" not in net.qdiscs("lo")


def test_a_failed_direction_takes_back_what_the_attach_added(net, program):
    net.tc("qdisc", "add", "dev", "va", "clsact")
    # Someone else holds our preference and handle on egress: egress fails after ingress worked.
    net.tc("filter", "add", "dev", "va", "egress", "pref", str(tc.PRIO), "handle", str(os.getpid()),
           "bpf", "bytecode", "1,6 0 0 0,")
    egress_before = net.filters("va", "egress")
    attachment = tc.TcAttachment()
    with inside(net.a):
        with pytest.raises(tc.TcError, match="cannot attach the classifier to va egress: File exists"):
            attachment.attach("va", program.fd, ["ingress", "egress"])
        assert attachment.interfaces() == tc.attached() == []
    assert net.filters("va", "ingress") == ""
    assert net.filters("va", "egress") == egress_before
    assert "clsact" in net.qdiscs("va")


def test_an_interface_that_vanished_detaches_quietly(net, program):
    sh("ip", "-n", net.a, "link", "add", "ve", "type", "veth", "peer", "name", "vf")
    attachment = tc.TcAttachment()
    with inside(net.a):
        attachment.attach("ve", program.fd)
        sh("ip", "link", "del", "ve")
        attachment.detach_all()
        assert attachment.interfaces() == []



def test_a_clsact_qdisc_deleted_by_someone_else_detaches_quietly(net, program):
    attachment = tc.TcAttachment()
    with inside(net.a):
        attachment.attach("va", program.fd)
        net.tc("qdisc", "del", "dev", "va", "clsact")
        attachment.detach_all()
        assert attachment.interfaces() == []
        attachment.attach("va", program.fd, ["egress"])    # and a new attach puts it back
        assert "clsact" in net.qdiscs("va") and our_lines(net.filters("va", "egress"))
        attachment.detach_all()
    assert "clsact" not in net.qdiscs("va")
