"""The consumer's cost per event: real ring-buffer records replayed through decode → connection →
parser → JSONL, with no kernel in the timed part (issue 12, target 1).

Recording (needs root; a few seconds): nginx (one worker, HTTP/1.1 and HTTP/2 over TLS) under
`wrk` (HTTP/1.1, keep-alive) and `curl --http2` (many requests per connection), captured by the
real lane of `profiles/nginx-tls.yaml` (in this process, through reconcile.runtime), every record
copied as the ring buffer held it. Then each set is replayed `--repeat` times through a fresh
Dispatcher with a JSONL sink (a temporary file), timed with the process's CPU clock.

Prints events and records per CPU-second for each protocol, and the SHA-256 of the JSONL each
pipeline wrote (the pipelines to compare must write the same bytes). The pure-Python pipeline
is the baseline; a faster one is measured beside it in the same run.

    .venv/bin/python bench/pipeline.py [--seconds 3] [--repeat 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.bpf import loader, state  # noqa: E402
from orchestrator.pipeline import dispatch, events  # noqa: E402
from orchestrator.plan import build  # noqa: E402
from orchestrator.profile import load  # noqa: E402
from orchestrator.reconcile import runtime  # noqa: E402
from orchestrator.sinks import jsonl  # noqa: E402
from tests.support.nginx import NginxServer  # noqa: E402

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
  sinks:
    - type: jsonl
      path: {jsonl}
"""


def record(tmp: Path, seconds: float) -> tuple[object, dict[str, list[bytes]]]:
    """(the probe set, {"http1": raw records, "http2": raw records}) of real nginx traffic."""
    profile = tmp / "profile.yaml"
    profile.write_text(PROFILE.format(jsonl=tmp / "unused.jsonl"))
    (ps,), failed = build.plan_profile(load.load_file(str(profile)))
    assert not failed, failed
    raws: list[bytes] = []
    drain = loader.LoadedTarget.drain

    def recording_drain(self, take):
        return drain(self, lambda raw: (raws.append(bytes(raw)), take(raw)))

    loader.LoadedTarget.drain = recording_drain
    d = dispatch.Dispatcher(lambda _p: [])
    d.start()
    rt_ = runtime.Runtime(d)
    sets: dict[str, list[bytes]] = {}
    try:
        with NginxServer(workers=1, http2=True) as srv:
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
        loader.LoadedTarget.drain = drain
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
    must write the same bytes, else the replay is not a fair comparison and this raises)."""
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
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    if len(digests) != 1:
        raise SystemExit(f"pipeline: passes over the same records wrote different JSONL ({len(digests)} digests)")
    return best, counter.n, digests.pop()


class RecordCounter:
    def __init__(self):
        self.n = 0

    def write(self, records) -> None:
        self.n += len(records)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic recorded per protocol")
    ap.add_argument("--repeat", type=int, default=3, help="replays per protocol (the fastest counts)")
    ap.add_argument("--keep", metavar="DIR", help="keep the recorded records and JSONL output here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("pipeline: recording needs root (it loads the real lane)")
        return 0
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ecap-pipeline-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        ps, sets = record(tmp, args.seconds)
        print(f"pipeline: recorded {', '.join(f'{k} {len(v)} records' for k, v in sets.items())} "
              f"({args.seconds:g} s each); replaying each {args.repeat} times, fastest pass counts")
        print(f"{'protocol':<8} {'events':>8} {'records':>8} {'CPU s':>7} {'events/CPU-s':>13} "
              f"{'records/CPU-s':>14}  jsonl sha256")
        for name, raws in sets.items():
            if not raws:
                print(f"{name:<8} nothing recorded")
                continue
            cpu, n, digest = replay(ps, raws, tmp / f"{name}.jsonl", args.repeat)
            print(f"{name:<8} {len(raws):>8} {n:>8} {cpu:>7.3f} {len(raws) / cpu:>13.0f} {n / cpu:>14.0f}  "
                  f"{digest[:16]}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
