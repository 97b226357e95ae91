"""bench/reload: how fast a profile edit takes effect under load, and what it loses or duplicates.

Three TLS write generators run (tests/support/tls_generator.py, SSL_write_ex over memory
BIOs): gen-c is selected by every version of the profile, gen-a and gen-b alternately. Each
reload rewrites the profile's comm filter to select the other one of gen-a/gen-b, and
measures the time from the file write to (1) the kernel timestamp of the first record from
the newly selected generator (when capture switched) and (2) when that record reached the
JSONL file (when a user sees it). gen-c's records must be exactly its writes: any gap is a
lost event, any repeat a duplicate.

Two series run one after the other, each with its own `ecapture apply` (see SERIES): express
(comm edits only: each is a few map writes in the running program) and compile (each edit also
switches the ring buffer size between 256 and 512 KiB, so each compiles a new program: what a
reload cost before filters were read from maps).

A third series, mixed, runs edits of every kind in turn under two writers (gen-a, gen-c, both
selected by every version): filters and max_bytes together, parsers only, sinks only, and one
that changes attach points (the pid scope). Each is timed from the file write to the moment
`apply` logs the reload (the new generation is live when it logs); both writers' records must
be exactly their writes.

    .venv/bin/python bench/reload.py [--reloads 30] [--interval 0.002] [--pause 0.3] [--series express,compile]
    .venv/bin/python bench/reload.py --series mixed [--mixed-rounds 10] [--mixed-pause 0.5]
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ECAPTURE = str(ROOT / ".venv" / "bin" / "ecapture")
GENERATOR = str(ROOT / "tests" / "support" / "tls_generator.py")
PYTHON = "/usr/bin/python3.11"
LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"


def profile(selected: str, jsonl: str, ring_kib: int = 256) -> str:
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: reload-bench}}
spec:
  targets:
    - name: gen
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
      ring_buffer_kib: {ring_kib}
      filters: {{comm: [gen-c, {selected}]}}
  parsers: []
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""


class Tail:
    """New JSONL records as they are appended."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.buf = b""

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


SERIES = {
    # name: (whether each edit changes the program too, what it shows)
    "express": (False, "comm edits: each is a few map writes and a gate flip in the running program"),
    "compile": (True, "comm and ring buffer size edits: each compiles a new program and switches to it"),
    "mixed": (False, "every kind of edit in turn under 2 writers; file written -> reload logged"),
}
MIXED_KINDS = ("filters+max_bytes", "parsers", "sinks", "attach")


def mixed_profile(state: dict, jsonl: str, jsonl2: str) -> str:
    pids = f", pids: [{', '.join(map(str, state['pids']))}]" if state["pids"] else ""
    sink2 = f"\n    - {{type: jsonl, path: \"{jsonl2}\"}}" if state["sink2"] else ""
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: reload-bench}}
spec:
  targets:
    - name: gen
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
      max_bytes: {state['max_bytes']}
      filters: {{comm: [gen-a, gen-c, other-{state['other']}]{pids}}}
  parsers: [{state['parsers']}]
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}{sink2}
"""


def run_mixed(args, cert: tuple[str, str], tmp: Path) -> dict | None:
    tmp = tmp / "mixed"
    tmp.mkdir()
    jsonl, jsonl2, prof, ready = tmp / "out.jsonl", tmp / "out2.jsonl", tmp / "profile.yaml", tmp / "ready"
    stops = {c: tmp / f"stop-{c}" for c in ("gen-a", "gen-c")}
    state = {"other": 0, "max_bytes": 16384, "parsers": "", "sink2": False, "pids": ()}
    gens = {}
    for comm in ("gen-a", "gen-c"):
        gens[comm] = subprocess.Popen([PYTHON, GENERATOR, "--comm", comm, "--count", "0", "--interval",
                                       str(args.interval), "--cert", cert[0], "--key", cert[1],
                                       "--stop", str(stops[comm])], stdout=subprocess.PIPE, text=True)
    pids = tuple(int(gens[c].stdout.readline().split()[1]) for c in ("gen-a", "gen-c"))
    prof.write_text(mixed_profile(state, str(jsonl), str(jsonl2)))
    err_path = tmp / "stderr.txt"
    apply = subprocess.Popen([ECAPTURE, "apply", str(prof), "--ready-file", str(ready)],
                             stdout=subprocess.DEVNULL, stderr=open(err_path, "w"))
    applied: dict = {k: [] for k in MIXED_KINDS}
    logged: dict = {k: [] for k in MIXED_KINDS}
    hows: dict = {k: {} for k in MIXED_KINDS}
    try:
        while not ready.exists():
            if apply.poll() is not None:
                print(err_path.read_text())
                return None
            time.sleep(0.05)
        tail = Tail(jsonl)
        deadline = time.time() + 20
        while not any(r.get("comm") == "gen-a" for r in tail.read()) and time.time() < deadline:
            time.sleep(0.01)
        n = 0
        for rnd in range(args.mixed_rounds):
            for kind in args.mixed_kinds.split(","):
                if kind == "filters+max_bytes":
                    state["other"] += 1
                    state["max_bytes"] = 8192 if state["max_bytes"] == 16384 else 16384
                elif kind == "parsers":
                    state["parsers"] = "" if state["parsers"] else "http1"
                elif kind == "sinks":
                    state["sink2"] = not state["sink2"]
                else:
                    state["pids"] = () if state["pids"] else pids
                n += 1
                written = time.monotonic()
                prof.write_text(mixed_profile(state, str(jsonl), str(jsonl2)))
                line = None
                deadline = written + 30
                while line is None and time.monotonic() < deadline:
                    lines = [ln for ln in err_path.read_text().splitlines() if "reloaded reload-bench" in ln]
                    if len(lines) >= n:
                        line = lines[n - 1]
                    else:
                        time.sleep(0.002)
                if line is None:
                    print(f"mixed: edit {n} ({kind}) not applied within 30 s\n{err_path.read_text()[-2000:]}")
                    return None
                applied[kind].append((time.monotonic() - written) * 1000)
                logged[kind].append(float(line.split(" in ")[1].split(" ms")[0]))
                how = ("express lane" if "express lane" in line
                       else "parsers only" if "parsers only" in line
                       else "re-attach and compile" if "re-attach" in line
                       else "compile" if ", compile)" in line
                       else "no change" if "unchanged" in line or "no change" in line else "other")
                hows[kind][how] = hows[kind].get(how, 0) + 1
                time.sleep(args.mixed_pause)
        for stop in stops.values():
            stop.touch()
        written = {c: int(g.communicate(timeout=30)[0].split()[-1]) for c, g in gens.items()}
        time.sleep(0.5)
    finally:
        for g in gens.values():
            if g.poll() is None:
                g.kill()
        apply.send_signal(signal.SIGINT)
        apply.wait(60)
    records = Tail(jsonl).read()
    writers = {}
    for comm, pid in zip(("gen-a", "gen-c"), pids):
        # by pid too: other tests on this machine run generators with the same names
        idx = [int(r["data"].split(":")[1]) for r in records if r.get("comm") == comm and r.get("pid") == pid
               and r.get("type") == "data" and r.get("direction") == "write"]
        first = idx[0] if idx else 0
        writers[comm] = {"written": written[comm] - first, "captured": len(idx), "dup": len(idx) - len(set(idx)),
                         "lost": len(set(range(first, written[comm])) - set(idx)), "ordered": idx == sorted(idx)}
    return {"applied": applied, "logged": logged, "hows": hows, "writers": writers,
            "loss_records": sum(1 for r in records if r["type"] == "loss"), "stderr": err_path.read_text()}


def report_mixed(args, r: dict) -> bool:
    print(f"mixed: {args.mixed_rounds} rounds of {len(MIXED_KINDS)} edit kinds, {args.mixed_pause} s apart, under "
          f"2 writers x {1 / args.interval:.0f} writes/s; file written -> reload logged (the new generation live)")
    print(f"{'edit':18} {'n':>3} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'logged p50':>10}  how")
    ok = True
    for kind in args.mixed_kinds.split(","):
        a, lg = r["applied"][kind], r["logged"][kind]
        hows = ", ".join(f"{k} {v}" for k, v in sorted(r["hows"][kind].items()))
        print(f"{kind:18} {len(a):>3} {statistics.median(a):7.0f} {pct(a, 99):7.0f} {max(a):7.0f} "
              f"{statistics.median(lg):10.0f}  {hows}")
        p99_limit = 1500 if kind == "attach" else 1000
        good = pct(a, 99) <= p99_limit and (kind == "attach" or statistics.median(a) <= 300)
        ok &= good
        print(f"  {'PASS' if good else 'FAIL'}  " + (f"p99 <= {p99_limit} ms" if kind == "attach"
                                                    else f"p50 <= 300 ms, p99 <= {p99_limit} ms"))
    for comm, w in r["writers"].items():
        print(f"  {comm}: {w['captured']}/{w['written']} writes captured: lost {w['lost']}, duplicated {w['dup']}, "
              f"{'in order' if w['ordered'] else 'OUT OF ORDER'}")
    clean = all(w["lost"] == 0 and w["dup"] == 0 for w in r["writers"].values()) and not r["loss_records"]
    print(f"{'PASS' if clean else 'FAIL'}  0 lost, 0 duplicated (loss records: {r['loss_records']})")
    return ok and clean


def run_series(name: str, args, cert: tuple[str, str], tmp: Path) -> dict | None:
    recompile, _ = SERIES[name]
    pause = args.pause
    tmp = tmp / name
    tmp.mkdir()
    jsonl, prof, ready = tmp / "out.jsonl", tmp / "profile.yaml", tmp / "ready"
    stop_c = tmp / "stop-c"
    prof.write_text(profile("gen-a", str(jsonl)))
    apply = subprocess.Popen([ECAPTURE, "apply", str(prof), "--ready-file", str(ready)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp / "stderr.txt", "w"))
    gens = {}
    try:
        while not ready.exists():
            if apply.poll() is not None:
                print((tmp / "stderr.txt").read_text())
                return None
            time.sleep(0.05)
        for comm in ("gen-a", "gen-b", "gen-c"):
            cmd = [PYTHON, GENERATOR, "--comm", comm, "--count", "0", "--interval", str(args.interval),
                   "--cert", cert[0], "--key", cert[1]]
            if comm == "gen-c":
                cmd += ["--stop", str(stop_c)]
            gens[comm] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            gens[comm].stdout.readline()
        tail = Tail(jsonl)
        records: list[dict] = []
        deadline = time.time() + 20
        while not any(r.get("comm") == "gen-a" for r in records) and time.time() < deadline:
            records += tail.read()
            time.sleep(0.01)
        time.sleep(pause)
        capture_ms, visible_ms = [], []
        selected = "gen-a"
        for i in range(args.reloads):
            selected = "gen-b" if selected == "gen-a" else "gen-a"
            ring_kib = 512 if recompile and i % 2 == 0 else 256
            written = time.time_ns()
            prof.write_text(profile(selected, str(jsonl), ring_kib))
            first = None
            deadline = time.time() + 30
            while first is None and time.time() < deadline:
                new = tail.read()
                records += new
                first = next((r for r in new if r.get("comm") == selected and r["ts"] > written), None)
                if first is None:
                    time.sleep(0.002)
            if first is None:
                print(f"{name}: reload {i}: no record from {selected} within 30 s")
                return None
            seen = time.time_ns()
            capture_ms.append((first["ts"] - written) / 1e6)
            visible_ms.append((seen - written) / 1e6)
            time.sleep(pause)
        stop_c.touch()
        written_c = int(gens["gen-c"].communicate(timeout=30)[0].split()[-1])
        time.sleep(0.5)
    finally:
        for g in gens.values():
            if g.poll() is None:
                g.kill()
        apply.send_signal(signal.SIGINT)
        apply.wait(60)
    records = Tail(jsonl).read()
    c_writes = [r["data"] for r in records if r.get("comm") == "gen-c" and r.get("direction") == "write"]
    indexes = [int(d.split(":")[1]) for d in c_writes]
    first_c = indexes[0] if indexes else 0
    expected = list(range(first_c, written_c))
    stderr = (tmp / "stderr.txt").read_text()
    reloads = [ln for ln in stderr.splitlines() if "reloaded reload-bench" in ln]
    return {
        "capture": capture_ms, "visible": visible_ms, "written_c": written_c, "captured_c": len(indexes),
        "first_c": first_c, "dup": len(indexes) - len(set(indexes)), "lost": len(set(expected) - set(indexes)),
        "ordered": indexes == sorted(indexes), "loss_records": sum(1 for r in records if r["type"] == "loss"),
        "reloads": len(reloads), "express": sum("express lane" in ln for ln in reloads),
        "compiled": sum(", compile)" in ln or "re-attach and compile)" in ln for ln in reloads),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=30)
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between a generator's writes")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between a reload landing and the next edit")
    ap.add_argument("--series", default="express,compile",
                    help=f"comma-separated subset of {','.join(SERIES)}")
    ap.add_argument("--mixed-rounds", type=int, default=10, help="mixed series: rounds of one edit of each kind")
    ap.add_argument("--mixed-pause", type=float, default=0.5, help="mixed series: seconds between edits")
    ap.add_argument("--mixed-kinds", default=",".join(MIXED_KINDS), help="mixed series: the kinds of edit, in turn")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ecap-reload-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(tmp / "k.pem"), "-out", str(tmp / "c.pem")],
                   check=True, capture_output=True)
    cert = (str(tmp / "c.pem"), str(tmp / "k.pem"))
    results = {}
    mixed = None
    for name in args.series.split(","):
        if name == "mixed":
            mixed = run_mixed(args, cert, tmp)
            if mixed is None:
                return 1
            continue
        result = run_series(name, args, cert, tmp)
        if result is None:
            return 1
        results[name] = result
    if mixed is not None:
        report_mixed(args, mixed)
    if not results:
        return 0
    print(f"reload: {args.reloads} reloads of a comm filter per series, under 3 generators x "
          f"{1 / args.interval:.0f} writes/s; file written -> first record under the new filter")
    print(f"{'series':9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'visible p50':>11} {'no compile':>10} "
          f"{'compiled':>8}  gen-c writes (lost, duplicated, order)")
    for name, r in results.items():
        c, v = r["capture"], r["visible"]
        print(f"{name:9} {statistics.median(c):7.0f} {pct(c, 99):7.0f} {max(c):7.0f} {statistics.median(v):11.0f} "
              f"{r['express']:>6}/{r['reloads']:<3} {r['compiled']:>8}  {r['captured_c']}/"
              f"{r['written_c'] - r['first_c']} ({r['lost']}, {r['dup']}, {'ok' if r['ordered'] else 'BROKEN'})"
              f"{'; loss records: %d' % r['loss_records'] if r['loss_records'] else ''}")
    for name, r in results.items():
        print(f"  {name}: {SERIES[name][1]}")
    if "express" in results and "compile" in results:
        ratio = statistics.median(results["compile"]["capture"]) / statistics.median(results["express"]["capture"])
        print(f"map writes vs compiling, p50: {ratio:.1f}x faster")
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    default = results.get("express") or next(iter(results.values()))
    print(f"{verdict(statistics.median(default['capture']) <= 300)}  p50 <= 300 ms (express: filter edits)")
    print(f"{verdict(pct(default['capture'], 99) <= 1000)}  p99 <= 1 s (express: filter edits)")
    print(f"{verdict(all(r['lost'] == 0 and not r['loss_records'] for r in results.values()))}  0 lost (every series)")
    print(f"{verdict(all(r['dup'] == 0 for r in results.values()))}  0 duplicated (every series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
