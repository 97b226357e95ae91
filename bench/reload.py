"""bench/reload: how fast a profile edit takes effect under load, and what it loses or duplicates.

Three TLS write generators run (tests/support/tls_generator.py, SSL_write_ex over memory
BIOs): gen-c is selected by every version of the profile, gen-a and gen-b alternately. Each
reload rewrites the profile's comm filter to select the other one of gen-a/gen-b, and
measures the time from the file write to (1) the kernel timestamp of the first record from
the newly selected generator (when capture switched) and (2) when that record reached the
JSONL file (when a user sees it). gen-c's records must be exactly its writes: any gap is a
lost event, any repeat a duplicate.

Three series run one after the other, each with its own `ecapture apply` (see SERIES):
express (the default set-up, edits 0.3 s apart), settled (edits 1.6 s apart, so the filters
get compiled in between and each edit starts from a compiled generation) and compiled
(`--no-express-lanes`: every edit compiles).

    .venv/bin/python bench/reload.py [--reloads 30] [--interval 0.002] [--pause 0.3] [--series express,...]
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


def profile(selected: str, jsonl: str) -> str:
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: reload-bench}}
spec:
  targets:
    - name: gen
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
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
    # name: (apply arguments, pause between reloads, what it shows)
    "express": ((), None, "edits in quick succession: each is a gate flip in the live express lane"),
    "settled": ((), 1.6, "edits after the filters settled: compiled filters live, each edit switches to the lane"),
    "compiled": (("--no-express-lanes",), None, "no express lanes: every edit compiles a generation"),
}


def run_series(name: str, args, cert: tuple[str, str], tmp: Path) -> dict | None:
    apply_args, pause, _ = SERIES[name]
    pause = args.pause if pause is None else pause
    tmp = tmp / name
    tmp.mkdir()
    jsonl, prof, ready = tmp / "out.jsonl", tmp / "profile.yaml", tmp / "ready"
    stop_c = tmp / "stop-c"
    prof.write_text(profile("gen-a", str(jsonl)))
    apply = subprocess.Popen([ECAPTURE, "apply", str(prof), "--ready-file", str(ready), *apply_args],
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
            written = time.time_ns()
            prof.write_text(profile(selected, str(jsonl)))
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
        "specialised": stderr.count("has its filters compiled in"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reloads", type=int, default=30)
    ap.add_argument("--interval", type=float, default=0.002, help="seconds between a generator's writes")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between a reload landing and the next edit "
                                                              "(the settled series waits longer)")
    ap.add_argument("--series", default=",".join(SERIES), help=f"comma-separated subset of {','.join(SERIES)}")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ecap-reload-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(tmp / "k.pem"), "-out", str(tmp / "c.pem")],
                   check=True, capture_output=True)
    cert = (str(tmp / "c.pem"), str(tmp / "k.pem"))
    results = {}
    for name in args.series.split(","):
        result = run_series(name, args, cert, tmp)
        if result is None:
            return 1
        results[name] = result
    print(f"reload: {args.reloads} reloads of a comm filter per series, under 3 generators x "
          f"{1 / args.interval:.0f} writes/s; file written -> first record under the new filter")
    print(f"{'series':9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'visible p50':>11} {'via lane':>8} "
          f"{'compiled in after':>17}  gen-c writes (lost, duplicated, order)")
    for name, r in results.items():
        c, v = r["capture"], r["visible"]
        print(f"{name:9} {statistics.median(c):7.0f} {pct(c, 99):7.0f} {max(c):7.0f} {statistics.median(v):11.0f} "
              f"{r['express']:>4}/{r['reloads']:<3} {r['specialised']:>17}  {r['captured_c']}/"
              f"{r['written_c'] - r['first_c']} ({r['lost']}, {r['dup']}, {'ok' if r['ordered'] else 'BROKEN'})"
              f"{'; loss records: %d' % r['loss_records'] if r['loss_records'] else ''}")
    for name, r in results.items():
        print(f"  {name}: {SERIES[name][2]}")
    if "express" in results and "compiled" in results:
        ratio = statistics.median(results["compiled"]["capture"]) / statistics.median(results["express"]["capture"])
        print(f"express lane vs compiling, p50: {ratio:.1f}x faster")
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    default = results.get("express") or next(iter(results.values()))
    print(f"{verdict(statistics.median(default['capture']) <= 300)}  p50 <= 300 ms (default: express lanes)")
    print(f"{verdict(pct(default['capture'], 99) <= 1000)}  p99 <= 1 s (default: express lanes)")
    print(f"{verdict(all(r['lost'] == 0 and not r['loss_records'] for r in results.values()))}  0 lost (every series)")
    print(f"{verdict(all(r['dup'] == 0 for r in results.values()))}  0 duplicated (every series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
