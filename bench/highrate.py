"""High rate: N concurrent TLS writers as fast as they can, captured by `ecapture apply` (issue 12, target 4).

Set-up, all on loopback:

  server    one listening process (the system python3); per accepted connection a forked reader
            that does the TLS handshake and then reads the raw socket (the ciphertext) with large
            recv()s and discards it: it never decrypts, so it costs far less than the writers and
            is never the bottleneck (it makes no libssl calls after the handshake either)
  writers   --writers processes of /usr/bin/python3 (its `ssl` module, the system libssl.so.3),
            each connects once, completes the handshake, reports its pid, waits for a go file,
            then calls `sslsock.sendall(payload)` with --size-byte printable-ASCII payloads for
            --duration seconds, counting its writes (each payload begins `w<k>:<index>:` so every
            captured record names its write)
  capture   `ecapture apply` on a profile with one `kind: openssl` target on that libssl, scoped
            to the writers' pids (`filters.pids`: the uprobes attach to those processes only),
            `parsers: []` (raw `data` records) and a JSONL sink into the work directory

While the writers run, apply's VmRSS/VmHWM (/proc/PID/status), its CPU time and the JSONL size
are sampled every 0.5 s. After the writers stop, the bench waits until the JSONL stops growing,
asks `ecapture status --json` (on a private control socket), stops apply with SIGINT and reads
its exit summary. Then it counts the file exactly:

  writes done by the writers  ==  `data` write records from the writers' pids  +  losses counted

where losses are the `loss` records (stage, count) of the file, checked against apply's exit
summary; each writer's records are also checked by payload index (missing, duplicated, out of
order) and by `seq` (a gap = a record the kernel could not put in the ring buffer).

    .venv/bin/python bench/highrate.py [--writers 4] [--size 2048] [--duration 20] [--keep DIR]
                                       [--rate W_PER_S] [--ring-kib KIB] [--baseline] [--source DIR]

Needs root, tracefs, openssl and the venv (see bench/README.md, section "high rate"). Exits 0
whatever the numbers are (it is a measurement); 1 only when the set-up fails.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ECAPTURE = ROOT / ".venv" / "bin" / "ecapture"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = "/usr/bin/python3"          # the writers' and the server's interpreter (system libssl)
SAMPLE_S = 0.5                       # RSS / CPU / JSONL-size sampling period
QUIET_S = 2.0                        # the JSONL counts as drained after this long without growth
DRAIN_TIMEOUT_S = 600.0


# =========================================================================== child roles
# The bench re-runs this file under /usr/bin/python3 as the server and as each writer, so
# that the whole bench is one file. These functions use only the standard library.

def _set_comm(name: str) -> None:
    import ctypes
    ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)      # PR_SET_NAME


def role_server(argv: list[str]) -> int:
    """Accept --conns connections; fork a raw-reading reader for each; exit when all are done."""
    import ssl
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--conns", type=int, required=True)
    a = ap.parse_args(argv)
    _set_comm("hr-server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(a.conns + 8)
    print(f"port {lsock.getsockname()[1]}", flush=True)
    children = []
    for _ in range(a.conns):
        conn, _addr = lsock.accept()
        pid = os.fork()
        if pid == 0:
            lsock.close()
            os._exit(_reader(ctx, conn))
        conn.close()
        children.append(pid)
    lsock.close()
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def _reader(ctx, conn) -> int:
    _set_comm("hr-reader")
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        tls = ctx.wrap_socket(conn, server_side=True)
        # After the handshake: the raw bytes (ciphertext), never decrypted, never an SSL call.
        raw = socket.socket(fileno=os.dup(tls.fileno()))
        buf = bytearray(1 << 20)
        while raw.recv_into(buf):
            pass
        return 0
    except OSError:
        return 0


def role_writer(argv: list[str]) -> int:
    """Connect, handshake, print `ready PID`, wait for --go, sendall() for --duration s, print `done ...`."""
    import ssl
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--go", required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="writes/s (0: as fast as it can)")
    a = ap.parse_args(argv)
    _set_comm(f"hr-writer-{a.index}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", a.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    print(f"ready {os.getpid()} {tls.version()}", flush=True)
    while not os.path.exists(a.go):
        time.sleep(0.001)
    prefix = f"w{a.index}:".encode()
    filler = bytes((0x61 + i % 26) for i in range(a.size))        # a..z, printable
    sendall = tls.sendall
    monotonic = time.monotonic
    cpu0 = os.times()
    t0 = monotonic()
    deadline = t0 + a.duration
    n = 0
    period = 1.0 / a.rate if a.rate > 0 else 0.0
    while True:
        if period:
            ahead = t0 + n * period - monotonic()
            if ahead > 0:
                time.sleep(ahead)
        head = b"%s%010d:" % (prefix, n)
        sendall(head + filler[len(head):])
        n += 1
        if monotonic() >= deadline:
            break
    elapsed = monotonic() - t0
    cpu1 = os.times()
    print(f"done {n} {elapsed:.6f} {cpu1.user - cpu0.user + cpu1.system - cpu0.system:.3f}", flush=True)
    try:
        tls.close()
    except OSError:
        pass
    return 0


# =========================================================================== helpers

def libssl_of(python: str) -> str:
    """The libssl.so the interpreter's _ssl extension links (ldd)."""
    ext = subprocess.run([python, "-c", "import _ssl; print(_ssl.__file__)"], capture_output=True,
                         text=True, check=True).stdout.strip()
    out = subprocess.run(["ldd", ext], capture_output=True, text=True, check=True).stdout
    m = re.search(r"libssl\.so\S*\s+=>\s+(\S+)", out)
    if not m:
        raise RuntimeError(f"{ext} links no libssl:\n{out}")
    return os.path.realpath(m.group(1))


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads from /proc/PID/status."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(val.split()[0])
    except OSError:
        pass
    return out


def stop_process(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 60) -> int | None:
    """`sig`, wait; then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"  ! pid {proc.pid} did not stop within {timeout:.0f} s of {signal.Signals(sig).name}: killing it")
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (started with start_new_session: it and its forks)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def profile_text(pids: list[int], binary: str, library: str, jsonl: Path, max_bytes: int,
                 ring_kib: int | None) -> str:
    ring = f"\n      ring_buffer_kib: {ring_kib}" if ring_kib else ""
    return f"""\
# bench/highrate.py: the writers' TLS writes (their pids only), raw data records, JSONL only
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: bench-highrate
spec:
  targets:
    - name: writers
      kind: openssl
      binary: {binary}
      library: {library}
      max_bytes: {max_bytes}{ring}
      filters:
        pids: [{', '.join(map(str, pids))}]
  parsers: []
  sinks:
    - type: jsonl
      path: {jsonl}
"""


# =========================================================================== counting

try:
    import msgspec
    _decode = msgspec.json.decode
except ImportError:          # the venv has msgspec (the JSONL sink uses it); json is the fallback
    _decode = json.loads

HEAD_RE = re.compile(r"^w(\d+):(\d{10}):")


class Count:
    def __init__(self, writer_pids: dict[int, int]):
        self.writer_pids = writer_pids                  # pid -> writer index
        self.types: dict[str, int] = {}
        self.data_other = 0                             # data records not a writer's write
        self.losses: dict[str, int] = {}                # stage -> count (loss records)
        self.loss_records = 0
        self.loss_times: list[tuple[int, int]] = []    # (ts, count) of each loss record
        self.first_ts: int | None = None                # the first record's ts
        self.by_pid = {pid: {"records": 0, "bytes": 0, "wrong_len": 0, "truncated": 0, "bad_head": 0,
                             "indices": [], "seqs": [],
                             "offsets": collections.Counter()} for pid in writer_pids}
        self.lines = 0
        self.bytes = 0


def count_jsonl(path: Path, writer_pids: dict[int, int], size: int) -> Count:
    c = Count(writer_pids)
    if not path.exists():
        return c
    with open(path, "rb") as f:
        for line in f:
            c.lines += 1
            c.bytes += len(line)
            r = _decode(line)
            t = r.get("type", "?")
            c.types[t] = c.types.get(t, 0) + 1
            if c.first_ts is None:
                c.first_ts = r.get("ts")
            if t == "data":
                w = c.by_pid.get(r.get("pid"))
                if w is None or r.get("direction") != "write":
                    c.data_other += 1
                    continue
                w["records"] += 1
                w["bytes"] += r.get("len", 0)
                w["wrong_len"] += r.get("len") != size
                w["truncated"] += bool(r.get("truncated"))
                w["seqs"].append(r.get("seq", -1))
                m = HEAD_RE.match(r.get("data", ""))
                if m and int(m.group(1)) == writer_pids[r["pid"]]:
                    w["indices"].append(int(m.group(2)))
                    w["offsets"][r.get("seq", -1) - int(m.group(2))] += 1
                else:
                    w["bad_head"] += 1
            elif t == "loss":
                stage = str(r.get("stage", "?"))
                c.losses[stage] = c.losses.get(stage, 0) + int(r.get("count", 0))
                c.loss_records += 1
                c.loss_times.append((r.get("ts", 0), int(r.get("count", 0))))
    return c


def index_check(indices: list[int], writes: int) -> dict:
    """Missing / duplicated / out-of-order payload indices of one writer, against 0..writes-1."""
    seen = set(indices)
    return {"distinct": len(seen), "missing": writes - len(seen & set(range(writes))),
            "duplicated": len(indices) - len(seen),
            "out_of_order": sum(1 for a, b in zip(indices, indices[1:]) if b <= a),
            "beyond": sum(1 for i in seen if i >= writes or i < 0)}


def seq_check(seqs: list[int]) -> dict:
    """Gaps in one process's `seq` (the kernel numbers every record it tries to submit)."""
    if not seqs:
        return {"gaps": 0, "min": None, "max": None}
    s = sorted(set(seqs))
    return {"gaps": s[-1] - s[0] + 1 - len(s), "min": s[0], "max": s[-1],
            "out_of_order": sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)}


SUMMARY_RE = re.compile(r"stopped after ([\d.]+) s: (\d+) event\(s\); records: (.*)")
LOSS_LINE_RE = re.compile(r"loss:\s*(\S+)/(\S+) (\S+): (\d+)")


def parse_summary(text: str) -> dict:
    out = {"line": "", "records": {}, "losses": {}, "events": None}
    for ln in text.splitlines():
        m = SUMMARY_RE.search(ln)
        if m:
            out["line"] = ln.strip()
            out["events"] = int(m.group(2))
            for kv in m.group(3).split(", "):
                k, _, v = kv.partition("=")
                if v.isdigit():
                    out["records"][k] = int(v)
        m = LOSS_LINE_RE.search(ln)
        if m:
            out["losses"][m.group(3)] = out["losses"].get(m.group(3), 0) + int(m.group(4))
    return out


# =========================================================================== the run

class Run:
    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        self.apply: subprocess.Popen | None = None
        self.ecapture = ecapture_cmd(Path(args.source).resolve() if args.source else ROOT)

    # ---- processes
    def start_server(self, cert: Path, key: Path) -> int:
        self.server = subprocess.Popen([PYTHON, __file__, "_server", "--cert", str(cert), "--key", str(key),
                                        "--conns", str(self.args.writers)],
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.server.stdout.readline().split()
        if len(line) != 2 or line[0] != "port":
            raise RuntimeError(f"the TLS server did not start (exit {self.server.poll()})")
        return int(line[1])

    def start_writers(self, port: int, go: Path) -> list[tuple[subprocess.Popen, int]]:
        writers = []
        for k in range(self.args.writers):
            p = subprocess.Popen([PYTHON, __file__, "_writer", "--port", str(port), "--index", str(k),
                                  "--size", str(self.args.size), "--duration", str(self.args.duration),
                                  "--go", str(go), "--rate", str(self.args.rate)],
                                 stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            writers.append(p)
        out = []
        for p in writers:
            line = p.stdout.readline().split()
            if len(line) < 2 or line[0] != "ready":
                raise RuntimeError(f"writer pid {p.pid} did not get ready (exit {p.poll()})")
            out.append((p, int(line[1])))
            self.tls_version = line[2] if len(line) > 2 else "?"
        return out

    def finish_writers(self, writers) -> list[dict]:
        results = []
        for p, pid in writers:
            try:
                line = p.stdout.readline().split()
                p.wait(timeout=self.args.duration + 120)
            except subprocess.TimeoutExpired:
                line = []
            if len(line) != 4 or line[0] != "done":
                raise RuntimeError(f"writer pid {pid} did not report its count (exit {p.poll()})")
            results.append({"pid": pid, "writes": int(line[1]), "elapsed": float(line[2]), "cpu": float(line[3])})
        return results

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        if self.apply is not None and self.apply.poll() is None:
            stop_process(self.apply, signal.SIGINT, 60)
        if self.server is not None:
            kill_group(self.server)

    # ---- one phase of writers, with or without the capture
    def writers_phase(self, cert: Path, key: Path, tag: str, capture: bool) -> dict:
        from overhead import cpu_seconds, other_bpf_users   # the parent only: child roles stay stdlib
        port = self.start_server(cert, key)
        go = self.work / f"go-{tag}"
        go.unlink(missing_ok=True)          # a stale one (--keep) would start the writers at once
        writers = self.start_writers(port, go)
        pids = [pid for _, pid in writers]
        res: dict = {"pids": pids, "samples": []}
        env = dict(os.environ, ECAPTURE_SOCKET=str(self.work / f"control-{tag}.sock"))
        if capture:
            jsonl = self.work / "capture.jsonl"
            prof = self.work / "highrate.yaml"
            ready = self.work / "apply.ready"
            max_bytes = min(65536, max(16384, self.args.size))
            prof.write_text(profile_text(pids, self.binary, self.library, jsonl, max_bytes, self.args.ring_kib))
            os.chmod(prof, 0o600)
            res.update(jsonl=jsonl, stderr=self.work / "apply.stderr")
            with open(res["stderr"], "wb") as err, open(self.work / "apply.stdout", "wb") as out:
                t_start = time.monotonic()
                self.apply = subprocess.Popen([*self.ecapture, "apply", str(prof), "--ready-file", str(ready)],
                                              stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
            apid = self.apply.pid
            while not ready.exists():
                if self.apply.poll() is not None:
                    raise RuntimeError(f"ecapture apply exited with {self.apply.returncode} before ready:\n"
                                       f"{res['stderr'].read_text(errors='replace')}")
                if time.monotonic() - t_start > 180:
                    raise RuntimeError("ecapture apply did not become ready within 180 s")
                time.sleep(0.05)
            res["ready_s"] = time.monotonic() - t_start
            res["rss_ready"] = proc_status(apid)
            res["others"] = set(other_bpf_users({os.getpid(), apid}))
        # go
        load0 = os.getloadavg()
        if capture:
            st = proc_status(apid)
            res["samples"].append({"t": 0.0, "rss": st.get("VmRSS"), "hwm": st.get("VmHWM"),
                                   "threads": st.get("Threads"), "cpu": cpu_seconds(apid),
                                   "size": res["jsonl"].stat().st_size if res["jsonl"].exists() else 0,
                                   "writing": True})
        go.touch()
        t_go = time.monotonic()
        t_end_writers = None
        last_size, last_growth = 0, t_go
        while True:
            time.sleep(SAMPLE_S)
            now = time.monotonic()
            alive = any(p.poll() is None for p, _ in writers)
            if t_end_writers is None and not alive:
                t_end_writers = now
            if capture:
                st = proc_status(apid)
                size = res["jsonl"].stat().st_size if res["jsonl"].exists() else 0
                if size != last_size:
                    last_size, last_growth = size, now
                res["samples"].append({"t": now - t_go, "rss": st.get("VmRSS"), "hwm": st.get("VmHWM"),
                                       "threads": st.get("Threads"), "cpu": cpu_seconds(apid), "size": size,
                                       "writing": alive})
                if t_end_writers is not None and now - last_growth >= QUIET_S:
                    break
                if t_end_writers is not None and now - t_end_writers > DRAIN_TIMEOUT_S:
                    print(f"  ! the JSONL still grew {DRAIN_TIMEOUT_S:.0f} s after the writers stopped")
                    break
                if self.apply.poll() is not None:
                    raise RuntimeError(f"ecapture apply exited with {self.apply.returncode} during the run:\n"
                                       f"{res['stderr'].read_text(errors='replace')}")
            elif t_end_writers is not None:
                break
        res["load"] = (load0, os.getloadavg())
        if capture:
            (self.work / "samples.json").write_text(json.dumps(res["samples"], indent=0))
        res["writers"] = self.finish_writers(writers)
        res["t_writers_end"] = t_end_writers - t_go
        kill_group(self.server)     # the readers end at EOF anyway
        self.server = None
        if capture:
            res["others"] |= set(other_bpf_users({os.getpid(), apid}))
            st = subprocess.run([*self.ecapture, "status", "--json"], capture_output=True, text=True, env=env,
                                timeout=30)
            try:
                res["status"] = json.loads(st.stdout)
            except ValueError:
                res["status"] = None
            res["rss_final"] = proc_status(apid)
            res["cpu_final"] = cpu_seconds(apid)
            t_stop = time.monotonic()
            res["rc"] = stop_process(self.apply, signal.SIGINT, 120)
            res["stop_s"] = time.monotonic() - t_stop
            res["summary"] = parse_summary(res["stderr"].read_text(errors="replace"))
            self.apply = None
        return res


def ecapture_cmd(source: Path) -> list[str]:
    """The command that runs `ecapture`: the venv's console script, or (--source DIR) the venv's
    python on DIR's orchestrator package (e.g. `git archive HEAD` unpacked there)."""
    if source == ROOT:
        return [str(ECAPTURE)]
    return [str(VENV_PYTHON), "-c", f"import sys; sys.path.insert(0, {str(source)!r}); "
            "from orchestrator.cli import main; sys.argv[0] = 'ecapture'; main()"]


def consumer_build(source: Path = ROOT) -> str:
    """Which orchestrator apply runs: the commit, whether orchestrator/ or templates/ have local edits,
    whether the compiled hot path is in use, and the extension modules next to the sources."""
    if source != ROOT:
        exts = sorted(str(p.relative_to(source)) for p in (source / "orchestrator").rglob("*.so"))
        return f"--source {source}" + (f"; extension modules present: {', '.join(exts)}" if exts else
                                       "; no extension modules")

    def git(*a):
        r = subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"
    exts = sorted(str(p.relative_to(ROOT)).split(".")[0] for p in (ROOT / "orchestrator").rglob("*.so"))
    dirty = git("status", "--porcelain", "--", "orchestrator", "templates")
    # orchestrator.fastpath (where present) decides at import whether the extensions run: ask it,
    # in a separate interpreter with apply's environment
    probe = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                            "import orchestrator, orchestrator.fastpath as f; print(f.mode, '-', f.reason)"],
                           capture_output=True, text=True, cwd=str(ROOT))
    fast = probe.stdout.strip() if probe.returncode == 0 else ""
    return (f"commit {git('rev-parse', '--short', 'HEAD')}"
            f"{' + local edits in orchestrator/ or templates/' if dirty else ''}; "
            + (f"hot path: {fast}; " if fast else "")
            + (f"extension modules present: {', '.join(exts)}" if exts else "no extension modules"))


def mib(kb: int | None) -> str:
    return f"{kb / 1024:.1f}" if kb is not None else "?"


def report(args, run: Run, base: dict | None, cap: dict) -> None:
    size = args.size
    W = cap["writers"]
    writes = sum(w["writes"] for w in W)
    elapsed = max(w["elapsed"] for w in W)
    print()
    if base:
        bw = sum(w["writes"] for w in base["writers"])
        be = max(w["elapsed"] for w in base["writers"])
        print(f"baseline (no capture): {bw} writes in {be:.2f} s = {bw / be:,.0f} writes/s "
              f"({bw * size / be / 1e6:.1f} MB/s); writers' CPU {sum(w['cpu'] for w in base['writers']):.1f} s")
    print("counting the JSONL ...", flush=True)
    c = count_jsonl(cap["jsonl"], {pid: k for k, pid in enumerate(cap["pids"])}, size)
    print()
    print(f"{'writer':<8} {'pid':>7} {'writes':>9} {'writes/s':>9} {'records':>9} {'missing':>8} {'dup':>4} "
          f"{'order':>5} {'seq gaps':>8} {'CPU s':>6}")
    tot_rec = tot_missing = tot_dup = tot_gaps = tot_order = 0
    oddities = []
    offsets: set = set()
    for k, w in enumerate(W):
        b = c.by_pid[w["pid"]]
        ic = index_check(b["indices"], w["writes"])
        sc = seq_check(b["seqs"])
        tot_rec += b["records"]
        tot_missing += ic["missing"]
        tot_dup += ic["duplicated"]
        tot_gaps += sc["gaps"]
        tot_order += ic["out_of_order"]
        for key in ("wrong_len", "truncated", "bad_head"):
            if b[key]:
                oddities.append(f"writer {k}: {b[key]} records with {key}")
        if ic["beyond"]:
            oddities.append(f"writer {k}: {ic['beyond']} records name writes it did not count")
        if len(b["offsets"]) > 1:
            oddities.append(f"writer {k}: seq - payload index is not constant: "
                            f"{dict(b['offsets'].most_common(5))} (a write gave more or less than one submit)")
        offsets.update(b["offsets"].keys())
        print(f"{k:<8} {w['pid']:>7} {w['writes']:>9} {w['writes'] / w['elapsed']:>9,.0f} {b['records']:>9} "
              f"{ic['missing']:>8} {ic['duplicated']:>4} {'ok' if not ic['out_of_order'] else ic['out_of_order']:>5} "
              f"{sc['gaps']:>8} {w['cpu']:>6.1f}")
    loss_file = sum(c.losses.values())
    summ = cap["summary"]
    loss_summary = sum(summ["losses"].values())
    status_losses = None
    if cap.get("status"):
        status_losses = sum(t.get("losses", 0) for p in cap["status"].get("profiles", []) for t in p["targets"])
    print(f"{'total':<8} {'':>7} {writes:>9} {writes / elapsed:>9,.0f} {tot_rec:>9} {tot_missing:>8} {tot_dup:>4} "
          f"{'ok' if not tot_order else tot_order:>5} {tot_gaps:>8} {sum(w['cpu'] for w in W):>6.1f}")
    print()
    print(f"record types in the file: {', '.join(f'{k}={v}' for k, v in sorted(c.types.items()))}"
          f"; {c.lines} lines, {c.bytes / 1e6:.0f} MB ({c.bytes / max(c.lines, 1):.0f} B/record)")
    if c.data_other:
        print(f"  {c.data_other} data records not a writer's write (other pid or direction read)")
    print(f"loss records in the file: {c.loss_records} "
          f"({', '.join(f'{k}={v}' for k, v in sorted(c.losses.items())) or 'none'}); "
          f"apply's exit summary: {', '.join(f'{k}={v}' for k, v in sorted(summ['losses'].items())) or 'losses: 0'}"
          + (f"; `ecapture status` before stopping: losses={status_losses}" if status_losses is not None else ""))
    if c.loss_times and c.first_ts:
        # loss records are emitted when apply reads the kernel counters (about once a second)
        print("  loss records, s after the first record: count: " + ", ".join(
            f"{(ts - c.first_ts) / 1e9:.1f}: {n}" for ts, n in c.loss_times))
    print(f"  {summ['line'] or '(no exit summary in apply stderr)'}; exit code {cap['rc']}, "
          f"{cap['stop_s']:.1f} s after SIGINT")

    # rates: the JSONL's growth and apply's CPU, while the writers write and after (the drain)
    samples = cap["samples"]
    rec_bytes = c.bytes / max(c.lines, 1)
    end = next((i for i, x in enumerate(samples) if not x["writing"]), len(samples) - 1)
    last = max((i for i, x in enumerate(samples) if x["size"] != samples[i - 1]["size"] or i == 0), default=0)
    last = max(last, end)

    def phase(a, b):
        sa, sb = samples[a], samples[b]
        dt = sb["t"] - sa["t"]
        if dt <= 0:
            return 0.0, 0.0, 0.0
        return (sb["size"] - sa["size"]) / rec_bytes / dt, ((sb["cpu"] or 0) - (sa["cpu"] or 0)) / dt, dt
    w_rate, w_cpu, w_dt = phase(0, end)
    d_rate, d_cpu, d_dt = phase(end, last)
    span = samples[last]["t"]
    cpu = (samples[last]["cpu"] or 0) - (samples[0]["cpu"] or 0)
    peak_rss = max((x["rss"] or 0) for x in samples)
    hwm = cap["rss_final"].get("VmHWM") or max((x["hwm"] or 0) for x in samples)
    rss = [x["rss"] or 0 for x in samples[:end + 1]]
    growth = (rss[-1] - rss[0]) / 1024 / w_dt if w_dt else 0.0
    print()
    print(f"writers: {writes:,} writes of {size} B in {elapsed:.2f} s = {writes / elapsed:,.0f} writes/s, "
          f"{writes * size / elapsed / 1e6:.1f} MB/s (TLS {run.tls_version})")
    print(f"capture: {tot_rec:,} records ({tot_rec * size / 1e6:.0f} MB of plaintext) in the JSONL, "
          f"{tot_rec / span:,.0f} records/s from go until the file stopped growing ({span:.1f} s)")
    print(f"  while writing ({w_dt:.1f} s): JSONL +{w_rate:,.0f} records/s, apply {w_cpu:.0%} of a core; "
          + (f"after ({d_dt:.1f} s, the drain): +{d_rate:,.0f} records/s, apply {d_cpu:.0%} of a core"
             if d_dt > 0 else "nothing left to drain after"))
    print(f"apply: ready after {cap['ready_s']:.1f} s; RSS at ready {mib(cap['rss_ready'].get('VmRSS'))} MiB, "
          f"at go {mib(samples[0]['rss'])}, when the writers stopped {mib(rss[-1])} (+{growth:.0f} MiB/s), "
          f"peak sampled {mib(peak_rss)}, VmHWM {mib(hwm)}, final {mib(cap['rss_final'].get('VmRSS'))} MiB; "
          f"CPU {cpu:.1f} s from go to the end of the drain, {cpu / max(tot_rec, 1) * 1e6:.1f} µs/record; "
          f"threads {cap['rss_final'].get('Threads')}")
    print(f"load average before/after: {cap['load'][0][0]:.2f} / {cap['load'][1][0]:.2f}; "
          f"{os.cpu_count()} CPUs")
    if cap["others"]:
        print(f"NOTE other processes held BPF programs during the run: {', '.join(sorted(cap['others']))} "
              f"(their probes and CPU disturb the figures)")
    for o in oddities:
        print(f"ODD  {o}")

    # the identity
    kernel_losses = sum(v for k, v in c.losses.items() if k.startswith("kernel."))
    lhs, rhs = writes, tot_rec + loss_file
    holds = lhs == rhs and tot_dup == 0
    print()
    print(f"identity: writes {lhs:,} == data records {tot_rec:,} + losses counted {loss_file:,} "
          f"(= {rhs:,}): {'HOLDS exactly' if holds else f'DOES NOT HOLD (off by {lhs - rhs:+,})'}")
    print(f"  cross-checks: missing payload indices {tot_missing:,}; seq gaps between captured records "
          f"{tot_gaps:,}; seq - payload index in every record: "
          f"{', '.join(map(str, sorted(offsets))) or '-'}; kernel-stage losses {kernel_losses:,}; "
          f"exit-summary losses {loss_summary:,}; duplicates {tot_dup}")
    mb = writes * size / elapsed / 1e6
    if loss_file == 0 and tot_missing == 0 and holds:
        print(f"VERDICT  no loss: the consumer kept up with {args.writers} writers × {size} B = "
              f"{writes / elapsed:,.0f} writes/s ({mb:.1f} MB/s); apply peak RSS {mib(hwm)} MiB")
    else:
        print(f"VERDICT  LOSS: the writers offered {writes / elapsed:,.0f} writes/s ({mb:.1f} MB/s); the consumer "
              f"wrote {w_rate:,.0f} records/s while they ran ({w_cpu:.0%} of a core), {d_rate:,.0f} alone after; "
              f"{loss_file:,} writes counted lost "
              f"({loss_file / max(writes, 1):.2%}); identity {'holds' if holds else 'does not hold'}; "
              f"apply peak RSS {mib(hwm)} MiB")


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root")
    if not ECAPTURE.exists():
        problems.append(f"missing {ECAPTURE}")
    if not shutil.which("openssl"):
        problems.append("missing openssl")
    if not Path(PYTHON).exists():
        problems.append(f"missing {PYTHON}")
    if not Path("/sys/kernel/tracing/uprobe_events").exists():
        problems.append("tracefs is not mounted at /sys/kernel/tracing")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048, help="bytes per write (printable ASCII)")
    ap.add_argument("--duration", type=float, default=20, help="seconds the writers write")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files (profile, JSONL, apply's stderr)")
    ap.add_argument("--ring-kib", type=int, default=None, help="the target's ring_buffer_kib (default: the schema's)")
    ap.add_argument("--source", metavar="DIR", help="run apply from DIR's orchestrator/ with the venv's python "
                    "(e.g. `git archive HEAD | tar -x -C DIR`: the committed code while orchestrator/ is being edited)")
    ap.add_argument("--baseline", action="store_true", help="first run the writers once without capture")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="writes/s per writer (default 0: as fast as it can); to find the rate captured without loss")
    args = ap.parse_args(argv)
    if args.size < 16 or args.size > 65536:
        ap.error("--size: 16..65536")
    problems = preflight()
    if problems:
        print("highrate: cannot run: " + "; ".join(problems))
        return 1
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.chmod(work, 0o700)
        for stale in ("capture.jsonl", "apply.ready", "go-base", "go-cap", "samples.json"):
            (work / stale).unlink(missing_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="ecap-highrate-"))
    run = Run(args, work)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, on_signal)        # stop like Ctrl-C: the finally below cleans up
    signal.signal(signal.SIGINT, on_signal)         # (also when started with SIGINT ignored)
    try:
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        run.binary = os.path.realpath(PYTHON)
        run.library = libssl_of(PYTHON)
        pace = f"at {args.rate:g} writes/s each" if args.rate else "as fast as they can"
        print(f"highrate: {args.writers} writers × {args.size} B sendall() {pace} for {args.duration:g} s; "
              f"{run.binary} with {run.library}; {os.cpu_count()} CPUs; kernel {os.uname().release}; "
              f"work dir {work}")
        print(f"  consumer: {consumer_build(Path(args.source).resolve() if args.source else ROOT)}")
        base = None
        if args.baseline:
            base = run.writers_phase(cert, key, "base", capture=False)
            time.sleep(1)
        cap = run.writers_phase(cert, key, "cap", capture=True)
        report(args, run, base, cap)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        print(f"highrate: set-up failed: {exc}")
        return 1
    except KeyboardInterrupt as exc:
        print(f"highrate: interrupted ({exc or 'SIGINT'}): writers, server and apply stopped")
        return 130
    finally:
        run.cleanup()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        sys.exit(role_server(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        sys.exit(role_writer(sys.argv[2:]))
    sys.exit(main())
