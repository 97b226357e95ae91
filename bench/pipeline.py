"""The consumer's cost per event: real ring-buffer records replayed through decode → connection →
parser → JSONL, with no kernel in the timed part (issue 12, target 1).

Recording (needs root; a few seconds): nginx (one worker, HTTP/1.1 and HTTP/2 over TLS) under
`wrk` (HTTP/1.1, keep-alive) and `curl --http2` (many requests per connection), captured by the
real lane of an nginx `openssl` target (in this process, through reconcile.runtime), every record
copied as the ring buffer held it.

Then each set is replayed `--repeat` times by each pipeline, each in its own process, timed with
the process's CPU clock (the fastest pass counts), rounds alternating between the pipelines:

  baseline   the pure-Python pipeline of --baseline REV (a `git archive` of it; default 2d1e8af,
             main before issue 12)
  python     this tree's pipeline as Python (ECAPTURE_PURE_PYTHON=1)
  compiled   this tree's pipeline as built by scripts/build_fast.py (mypyc), when built

Every pipeline must write the same JSONL, byte for byte (the clock offset is pinned, so the
timestamps agree); the bench stops otherwise. Prints events per CPU-second and the ratio to the
baseline per protocol.

    .venv/bin/python bench/pipeline.py [--seconds 3] [--repeat 3] [--rounds 2] [--keep DIR]
                                       [--baseline REV]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "2d1e8af"
PIPELINES = ("baseline", "python", "compiled")

PROFILE = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: bench-pipeline
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      max_bytes: 16384
      capture: [data]
      filters:
        pids: [{pid}]
  sinks:
    - type: jsonl
      path: {jsonl}
"""


def record(tmp: Path, seconds: float) -> tuple[object, dict[str, list[bytes]]]:
    """(the probe set, {"http1": raw records, "http2": raw records}) of real nginx traffic."""
    sys.path.insert(0, str(ROOT))
    from orchestrator.bpf import loader, state
    from orchestrator.pipeline import dispatch
    from orchestrator.plan import build
    from orchestrator.profile import load
    from orchestrator.reconcile import runtime
    from tests.support.nginx import NginxServer
    profile = tmp / "profile.yaml"
    raws: list[bytes] = []
    drain_all = loader.LoadedTarget.drain_all

    def recording_drain(self):
        got = drain_all(self)
        raws.extend(bytes(raw) for raw in got)
        return got

    loader.LoadedTarget.drain_all = recording_drain
    d = dispatch.Dispatcher(lambda _p: [])
    d.start()
    rt_ = runtime.Runtime(d)
    sets: dict[str, list[bytes]] = {}
    try:
        with NginxServer(workers=1, http2=True) as srv:
            # Only this nginx: other nginx processes on the machine would mix their traffic in.
            profile.write_text(PROFILE.format(jsonl=tmp / "unused.jsonl", pid=srv.worker_pids()[0]))
            (ps,), failed = build.plan_profile(load.load_file(str(profile)))
            assert not failed, failed
            rt = rt_.start(ps)
            if rt.state != "running":
                raise SystemExit(f"pipeline: cannot load the target: {rt.last_error}")
            for name, run in (("http1", lambda: subprocess.run(
                                  ["wrk", "-t1", "-c8", f"-d{seconds:g}s", srv.url + "/"], capture_output=True)),
                              ("http2", lambda: _curl_http2(srv.url, seconds))):
                time.sleep(0.5)
                rt.lane.flush()
                raws.clear()
                run()
                time.sleep(0.5)
                rt.lane.flush()
                sets[name] = list(raws)
            rt_.stop_all()
    finally:
        loader.LoadedTarget.drain_all = drain_all
        d.stop()
        state.close()
    return ps, sets


def _curl_http2(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    urls = [f"{url}/h2/{i}" for i in range(50)]
    while time.monotonic() < deadline:
        subprocess.run(["curl", "-sk", "--http2", *urls], capture_output=True, timeout=60)


def replay(ps, raws: list[bytes], out: Path, repeat: int, batch: int = 256) -> tuple[float, int, str]:
    """(CPU seconds of the fastest pass, records written per pass, sha256 of the JSONL: every pass
    must write the same bytes, else the replay is not a fair comparison and this raises).
    Runs in a worker process, with the pipeline's tree first on sys.path."""
    from orchestrator.pipeline import dispatch, events
    from orchestrator.sinks import jsonl
    if hasattr(dispatch, "tune_gc"):
        dispatch.tune_gc()      # as Dispatcher.start() does in apply (the baseline has no such step)
    best, digests = None, set()
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        sink = jsonl.JsonlSink(str(out))
        counter = RecordCounter()
        d = dispatch.Dispatcher(lambda _p: [sink, counter])
        t0 = time.process_time()
        for i in range(0, len(raws), batch):
            d.process([events.decode(r, ps) for r in raws[i:i + batch]])
        d.flush_all()
        dt = time.process_time() - t0
        sink.close()
        best = dt if best is None else min(best, dt)
        if not os.environ.get("ECAP_BENCH_COUNTING"):     # (under valgrind only the pipeline is counted)
            digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    if not digests:
        return best, counter.n, ""
    if len(digests) != 1:
        raise SystemExit(f"pipeline: passes over the same records wrote different JSONL ({len(digests)} digests)")
    return best, counter.n, digests.pop()


def worker(tree: str, records: str, out_dir: str, repeat: int, only: str = "") -> None:
    """One pipeline's replay of every recorded set (or of `only`); prints one JSON line of results."""
    sys.path.insert(0, tree)
    from orchestrator.pipeline import events
    from orchestrator.plan import build
    from orchestrator.profile import load
    saved = pickle.loads(Path(records).read_bytes())
    events.MONO_TO_EPOCH_NS = saved["mono_to_epoch_ns"]     # the same timestamps in every process
    (ps,), failed = build.plan_profile(load.load_file(saved["profile"]))
    assert not failed, failed
    mode = "python"
    try:
        from orchestrator import fastpath
        mode = fastpath.mode
    except ImportError:
        pass
    result = {"mode": mode, "sets": {}}
    from orchestrator.bpf import layout
    for name, raws in saved["sets"].items():
        if raws and only in ("", name):
            raws = same_records_for(raws, saved.get("header_size", CGROUP_AT), layout.HEADER_SIZE)
            cpu, n, digest = replay(ps, raws, Path(out_dir) / f"{name}.jsonl", repeat)
            result["sets"][name] = {"cpu": cpu, "events": len(raws), "records": n, "digest": digest}
    print(json.dumps(result))


# The ring record's header grew a u64 cgroup id at offset 168 (issue 14). A pipeline from before
# reads 168-byte headers: it gets the records without those 8 bytes; the others get them zeroed
# (no cgroup named), so every pipeline writes the same JSONL from the same records.
CGROUP_AT = 168


def same_records_for(raws: list, recorded: int, reads: int) -> list:
    """`raws` (recorded with `recorded`-byte headers) as a pipeline reading `reads`-byte ones
    gets them."""
    if recorded == reads == CGROUP_AT:
        return raws
    if recorded == reads:
        return [r[:CGROUP_AT] + bytes(reads - CGROUP_AT) + r[reads:] for r in raws]
    if recorded > reads:
        return [r[:reads] + r[recorded:] for r in raws]
    return [r[:recorded] + bytes(reads - recorded) + r[recorded:] for r in raws]


def baseline_tree(rev: str, tmp: Path) -> Path:
    """A copy of the repository's `orchestrator/` (and schemas, templates) at `rev`."""
    tree = tmp / f"baseline-{rev}"
    if not tree.exists():
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "orchestrator", "schemas", "templates"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


class RecordCounter:
    def __init__(self):
        self.n = 0

    def write(self, records) -> None:
        self.n += len(records)


def run_worker(pipeline: str, tree: Path, records: Path, out: Path, repeat: int, only: str = "",
               prefix: tuple = ()) -> dict:
    env = dict(os.environ, ECAPTURE_PURE_PYTHON="1" if pipeline != "compiled" else "0")
    if prefix:
        env["ECAP_BENCH_COUNTING"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*prefix, sys.executable, __file__, "--worker", str(tree), str(records), str(out), str(repeat),
                           only], capture_output=True, text=True, env=env, cwd=str(tree))
    if proc.returncode != 0:
        raise SystemExit(f"pipeline: the {pipeline} replay failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["stderr"] = proc.stderr
    return result


def instructions_per_event(pipeline: str, tree: Path, records: Path, out: Path, name: str, events: int) -> float:
    """Instructions one warm pass over set `name` executes, per event, counted by valgrind
    (callgrind): a run of two passes minus a run of one, so start-up and the first pass's warm-up
    cancel out (the passes skip the JSONL digest there). Unlike CPU time, the count does not move
    with the machine's load; the kernel's share (the file writes) is not in it."""
    counts = []
    for passes in (1, 2):
        res = run_worker(pipeline, tree, records, out, passes, name,
                         prefix=("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"))
        found = [line for line in res["stderr"].splitlines() if "Collected :" in line]
        if not found:
            raise SystemExit(f"pipeline: no instruction count from valgrind:\n{res['stderr'][-2000:]}")
        counts.append(int(found[-1].rsplit(":", 1)[1].replace(",", "").strip()))
    return (counts[1] - counts[0]) / events


def main(argv=None) -> int:
    if argv is None and len(sys.argv) in (6, 7) and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] if len(sys.argv) == 7 else "")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic recorded per protocol")
    ap.add_argument("--repeat", type=int, default=3, help="replays per protocol and round (the fastest counts)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the pipelines, alternated")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline pipeline")
    ap.add_argument("--instructions", action="store_true",
                    help="also count each pipeline's instructions per event with valgrind (slow: about a "
                         "minute per pipeline and protocol), a ratio the machine's load does not move")
    ap.add_argument("--keep", metavar="DIR", help="keep the recorded records and JSONL output here; "
                    "if DIR already holds records, replay those instead of recording")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("pipeline: recording needs root (it loads the real lane)")
        return 0
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ecap-pipeline-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        saved = tmp / "records.pickle"
        if args.keep and saved.exists():
            print(f"pipeline: replaying the records kept in {saved}")
        else:
            profile = tmp / "profile.yaml"
            ps, sets = record(tmp, args.seconds)
            from orchestrator.bpf import layout
            from orchestrator.pipeline import events
            saved.write_bytes(pickle.dumps({"profile": str(profile), "sets": sets,
                                            "mono_to_epoch_ns": events.MONO_TO_EPOCH_NS,
                                            "header_size": layout.HEADER_SIZE}))
        sets = pickle.loads(saved.read_bytes())["sets"]
        print(f"pipeline: {', '.join(f'{k} {len(v)} records' for k, v in sets.items())}; each replayed "
              f"{args.repeat} times per round by each pipeline, {args.rounds} rounds, fastest pass counts")
        trees = {"baseline": baseline_tree(args.baseline, tmp), "python": ROOT, "compiled": ROOT}
        sys.path.insert(0, str(ROOT))
        from orchestrator import fastpath
        pipelines = [p for p in PIPELINES if p != "compiled" or fastpath.mode == "compiled"]
        if "compiled" not in pipelines:
            print(f"pipeline: no compiled pipeline ({fastpath.reason})")
        best: dict = {}
        digests: dict = {}
        for _ in range(args.rounds):
            for p in pipelines:
                res = run_worker(p, trees[p], saved, tmp / p, args.repeat)
                if p == "compiled" and res["mode"] != "compiled":
                    raise SystemExit("pipeline: the compiled pipeline did not load its extensions")
                for name, r in res["sets"].items():
                    key = (p, name)
                    if key not in best or r["cpu"] < best[key]["cpu"]:
                        best[key] = r
                    digests.setdefault(name, set()).add(r["digest"])
        for name, ds in digests.items():
            if len(ds) != 1:
                raise SystemExit(f"pipeline: the pipelines wrote different JSONL for {name}: {sorted(ds)}")
        print(f"{'protocol':<8} {'pipeline':<9} {'events':>7} {'records':>7} {'CPU s':>7} {'events/CPU-s':>13} "
              f"{'µs/event':>9} {'× baseline':>10}  jsonl sha256")
        for name in sets:
            if (pipelines[0], name) not in best:
                print(f"{name:<8} nothing recorded")
                continue
            base = best[("baseline", name)]
            for p in pipelines:
                r = best[(p, name)]
                rate = r["events"] / r["cpu"]
                print(f"{name:<8} {p:<9} {r['events']:>7} {r['records']:>7} {r['cpu']:>7.3f} {rate:>13.0f} "
                      f"{r['cpu'] / r['events'] * 1e6:>9.2f} {base['cpu'] / r['cpu']:>10.2f}  {r['digest'][:16]}")
        print("pipeline: every pipeline wrote the same JSONL (byte for byte) for each protocol")
        if args.instructions:
            if not shutil.which("valgrind"):
                print("pipeline: --instructions needs valgrind (make setup installs it)")
                return 1
            print(f"{'protocol':<8} {'pipeline':<9} {'instructions/event':>18} {'× baseline':>10}")
            for name, raws in sets.items():
                if not raws:
                    continue
                counts = {p: instructions_per_event(p, trees[p], saved, tmp / p, name, len(raws)) for p in pipelines}
                for p in pipelines:
                    print(f"{name:<8} {p:<9} {counts[p]:>18.0f} {counts['baseline'] / counts[p]:>10.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
