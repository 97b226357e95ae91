"""A call belongs to exactly one generation: the one that admitted it when it was entered.

A TLS server reads with a blocking SSL_read_ex on a real TCP socket on 127.0.0.1 while
`ecapture apply` switches the target's port filter (a gate flip in the running program, and,
with a ring buffer size edited too, by compiling a new program). What a user sees in the JSONL:

- the read that was entered while the filters selected the server's port is recorded exactly
  once, even though it returns under filters that exclude that port;
- a read entered while the filters excluded the port is not recorded, even though it returns
  under filters that select it again;
- reads entered after each switch follow the new filters.
"""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tests.kernel.test_reload import LIBSSL, PYTHON, _target_status, _wait_for, cert  # noqa: F401

# Runs under /usr/bin/python3.11 (its libssl is the target): a TLS server thread named cg-srv that
# reads when told and acknowledges what it read, and a client (main thread, named cg-cli) that
# writes when told.
HELPER = r'''
import ctypes, socket, ssl, sys, threading, queue

def set_comm(name):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)

port, certfile, keyfile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out_lock = threading.Lock()
def say(text):
    with out_lock:
        print(text, flush=True)

srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
srv_ctx.load_cert_chain(certfile, keyfile)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1)
reads = queue.Queue()

def server():
    set_comm("cg-srv")
    raw, _ = listener.accept()
    conn = srv_ctx.wrap_socket(raw, server_side=True)
    say("accepted")
    while reads.get():
        say("reading")
        data = conn.recv(4096)          # SSL_read_ex, blocking in recv() until the client writes
        conn.sendall(b"ack " + data)    # both directions: the raw stream is released at once
        say("got " + data.decode())

t = threading.Thread(target=server, daemon=True)
t.start()
set_comm("cg-cli")
cli_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cli_ctx.check_hostname = False
cli_ctx.verify_mode = ssl.CERT_NONE
client = cli_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    if cmd == "read":
        reads.put(True)
    elif cmd == "send":
        client.sendall(arg.encode())
        client.recv(4096)
    elif cmd == "quit":
        reads.put(False)
        break
'''


def profile(port: int, name: str = "callgen") -> str:
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: {name}}}
spec:
  targets:
    - name: srv
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
      filters: {{comm: [cg-srv], ports: [{port}]}}
  parsers: []
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peers:
    def __init__(self, tmp_path, cert, port: int):
        script = tmp_path / "peers.py"
        script.write_text(HELPER)
        self.proc = subprocess.Popen([PYTHON, str(script), str(port), cert[0], cert[1]], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def expect(self, prefix: str) -> str:
        line = self.proc.stdout.readline()
        assert line.startswith(prefix), line
        return line.strip()

    def tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def blocked_read(self) -> None:
        """The server enters SSL_read_ex and blocks (nothing to read yet)."""
        self.tell("read")
        self.expect("reading")
        time.sleep(0.3)      # well inside SSL_read_ex, blocked in recv()

    def send(self, text: str) -> None:
        self.tell(f"send {text}")
        assert self.expect("got ") == f"got {text}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.tell("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def reads(cap) -> list[str]:
    return [r["data"] for r in cap.records("data") if r["comm"] == "cg-srv" and r["direction"] == "read"]


@pytest.mark.parametrize("how", ["express", "compile"])
def test_a_blocking_read_belongs_to_the_generation_that_admitted_it(apply_profile, cert, tmp_path, how):
    port, other = free_port(), free_port()
    path = tmp_path / "profile.yaml"
    # compile: the first edit also changes the ring buffer size and the second changes it back, so
    # each is a new program and the blocked read returns in another program than its entry's
    ring = "" if how == "express" else "      ring_buffer_kib: 512\n"
    with apply_profile(profile(port)) as cap:
        peers = Peers(tmp_path, cert, port)
        try:
            peers.expect("accepted")
            peers.blocked_read()
            peers.send("m0-selected")
            assert cap.wait_for(lambda rs: "m0-selected" in reads(cap)), cap.stderr

            # entered while the port is selected; the filters then exclude it; then it returns
            peers.blocked_read()
            path.write_text(profile(other).replace("{jsonl}", str(cap.jsonl))
                            .replace("      filters:", ring + "      filters:"))
            assert _wait_for(lambda: cap.stderr.count("reloaded callgen") == 1, 20), cap.stderr
            words = "express lane, no compile" if how == "express" else "compile"
            assert f"replaced srv (gen 2, {words})" in cap.stderr, cap.stderr
            peers.send("m1-entered-when-selected")
            peers.blocked_read()
            peers.send("m2-entered-when-excluded")

            # entered while the port is excluded; the filters then select it; then it returns
            peers.blocked_read()
            path.write_text(profile(port).replace("{jsonl}", str(cap.jsonl)))
            assert _wait_for(lambda: cap.stderr.count("reloaded callgen") == 2, 20), cap.stderr
            assert f"replaced srv (gen 3, {words})" in cap.stderr, cap.stderr
            peers.send("m3-entered-when-excluded")
            peers.blocked_read()
            peers.send("m4-entered-when-selected")
            assert cap.wait_for(lambda rs: "m4-entered-when-selected" in reads(cap)), cap.stderr
            time.sleep(0.5)
        finally:
            peers.close()
    got = reads(cap)
    assert got == ["m0-selected", "m1-entered-when-selected", "m4-entered-when-selected"], (got, cap.stderr)
    assert cap.records("loss") == []
    conns = {r["conn"]["local"] for r in cap.records("data") if r["comm"] == "cg-srv"}
    assert conns == {f"127.0.0.1:{port}"}


def test_max_bytes_and_parsers_edits_compile_nothing(apply_profile, cert, tmp_path):
    """max_bytes is a map value, and an edit of only `parsers` (userspace) writes a generation
    into the running program too: neither compiles."""
    port = free_port()
    path = tmp_path / "profile.yaml"

    def edit(text: str, n: int) -> str:
        path.write_text(text.replace("{jsonl}", str(cap.jsonl)))
        assert _wait_for(lambda: cap.stderr.count("reloaded callgen") == n, 20), cap.stderr
        return [ln for ln in cap.stderr.splitlines() if "reloaded callgen" in ln][-1]

    long = "x" * 100
    with apply_profile(profile(port)) as cap:
        peers = Peers(tmp_path, cert, port)
        try:
            peers.expect("accepted")
            peers.blocked_read()
            peers.send("m0-" + long)
            assert cap.wait_for(lambda rs: "m0-" + long in reads(cap)), cap.stderr
            line = edit(profile(port).replace("      filters:", "      max_bytes: 32\n      filters:"), 1)
            assert "express lane, no compile" in line, line
            peers.blocked_read()
            peers.send("m1-" + long)
            assert cap.wait_for(lambda rs: any(d.startswith("m1-") for d in reads(cap))), cap.stderr
            (m1,) = [r for r in cap.records("data") if r["comm"] == "cg-srv" and r["data"].startswith("m1-")]
            assert (m1["data"], m1["len"], m1["truncated"]) == (("m1-" + long)[:32], 103, True)
            line = edit(profile(port).replace("      filters:", "      max_bytes: 32\n      filters:")
                        .replace("parsers: []", "parsers: [http1]"), 2)
            assert "parsers only, no compile" in line, line
            assert _target_status("callgen")["generation"] == 3
            peers.blocked_read()
            peers.send("m2-" + long)
            assert cap.wait_for(lambda rs: any(d.startswith("m2-") for d in reads(cap))), cap.stderr
            time.sleep(0.3)
        finally:
            peers.close()
    got = [d[:3] for d in reads(cap)]
    assert got == ["m0-", "m1-", "m2-"]
    assert [len(d) for d in reads(cap)] == [103, 32, 32]
    assert "compile failed" not in cap.stderr and cap.records("loss") == []
