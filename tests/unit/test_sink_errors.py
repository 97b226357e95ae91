"""A sink that cannot write (disk full, ...) costs only its own records: they are counted as losses
per stage `sink.<kind>`, reported as `loss` records to the profile's other sinks and, once the
sink writes again, to the sink itself; warnings are rate-limited; the exit summary lists the loss.
The JSONL sink writes each batch whole or not at all (no root needed: RLIMIT_FSIZE makes the
short write and the EFBIG that a full disk would)."""
from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rich.console import Console

from orchestrator import cli
from orchestrator.pipeline import dispatch, events

ROOT = Path(__file__).resolve().parents[2]
SEC = 1_000_000_000


def _recs(n, target="web", profile="prof", start=0):
    return [events.Record("bash.command", None, {"profile": profile, "target": target, "command": f"c{start + i}"})
            for i in range(n)]


class ListSink:
    def __init__(self):
        self.records = []

    def write(self, records):
        self.records += [r.to_dict() for r in records]


class FlakySink:
    """Fails with ENOSPC while `full` is set, like a JSONL file on a full disk."""
    kind = "jsonl"
    path = "/full/disk/out.jsonl"

    def __init__(self):
        self.full = True
        self.records = []

    def write(self, records):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.records += [r.to_dict() for r in records]


class Clock:
    def __init__(self):
        self.now = 1_000 * SEC

    def __call__(self):
        return self.now


def _dispatcher(*sinks, clock=None):
    warnings = []
    d = dispatch.Dispatcher(lambda _p: list(sinks), clock=clock or Clock(), warn=warnings.append)
    return d, warnings


def _summary_text(d) -> str:
    """What `ecapture apply` prints at exit for this dispatcher (the session's summary, through the CLI)."""
    st = d.stats
    summary = {"events": dict(st.events), "records": dict(st.records), "losses": dict(st.losses),
               "failed_targets": [], "sink_errors": d.sink_errors[:5], "seconds": 1.0}
    buf = io.StringIO()
    saved = cli.err
    cli.err = Console(file=buf, highlight=False, soft_wrap=True, no_color=True, width=300)
    try:
        cli._print_summary(summary)
    finally:
        cli.err = saved
    return buf.getvalue()


def test_failing_sink_loses_only_its_records_and_the_others_get_loss_records():
    clock = Clock()
    bad, good = FlakySink(), ListSink()
    d, _ = _dispatcher(bad, good, clock=clock)
    for i in range(50):
        d.process(_recs(3, start=3 * i))
        clock.now += SEC // 10
    d.stop()
    data = [r for r in good.records if r["type"] != "loss"]
    assert [r["command"] for r in data] == [f"c{i}" for i in range(150)]      # nothing missing elsewhere
    losses = [r for r in good.records if r["type"] == "loss"]
    assert losses and all(r["stage"] == "sink.jsonl" and r["target"] == "web" and r["profile"] == "prof"
                          for r in losses)
    assert sum(r["count"] for r in losses) == 150
    assert all(r.get("sink") == "jsonl /full/disk/out.jsonl" for r in losses)
    # about one loss record a second, not one per failed batch
    assert len(losses) <= 7
    assert "loss: prof/web sink.jsonl: 150" in _summary_text(d)


def test_losses_are_counted_per_target():
    bad, good = FlakySink(), ListSink()
    d, _ = _dispatcher(bad, good)
    d.process(_recs(2, target="a") + _recs(5, target="b"))
    d.stop()
    counts = {r["target"]: r["count"] for r in good.records if r["type"] == "loss"}
    assert counts == {"a": 2, "b": 5}
    text = _summary_text(d)
    assert "loss: prof/a sink.jsonl: 2" in text and "loss: prof/b sink.jsonl: 5" in text


def test_warnings_are_rate_limited_and_say_how_many_failed_since_the_last_one():
    clock = Clock()
    bad, good = FlakySink(), ListSink()
    d, warnings = _dispatcher(bad, good, clock=clock)
    for _ in range(1000):                 # 1000 failed batches within 1 s
        d.process(_recs(1))
        clock.now += SEC // 1000
    assert len(warnings) == 1
    assert "jsonl /full/disk/out.jsonl" in warnings[0] and "No space left on device" in warnings[0]
    clock.now += 10 * SEC
    d.process(_recs(1))
    assert len(warnings) == 2
    assert "1000 failed write(s)" in warnings[1] and "1000 record(s) lost" in warnings[1]
    # the summary has one bounded line per sink and error kind, however many failures there were
    lines = [ln for ln in _summary_text(d).splitlines() if "sink" in ln and "ENOSPC" in ln]
    assert len(lines) == 1 and "1001" in lines[0]
    assert len(d.sink_errors) == 1


def test_recovered_sink_gets_one_loss_record_before_its_new_records():
    clock = Clock()
    bad, good = FlakySink(), ListSink()
    d, warnings = _dispatcher(bad, good, clock=clock)
    for i in range(4):
        d.process(_recs(5, start=5 * i))
        clock.now += SEC // 10
    bad.full = False
    d.process(_recs(2, start=20))
    d.process(_recs(1, start=22))
    d.stop()
    assert [r["type"] for r in bad.records] == ["loss", "bash.command", "bash.command", "bash.command"]
    loss = bad.records[0]
    assert loss["stage"] == "sink.jsonl" and loss["count"] == 20 and loss["target"] == "web"
    assert [r["command"] for r in bad.records[1:]] == ["c20", "c21", "c22"]
    # the other sink had everything, and was told about the 20
    assert sum(r["count"] for r in good.records if r["type"] == "loss") == 20
    assert len([r for r in good.records if r["type"] != "loss"]) == 23


def test_recovery_is_said_once_space_is_back():
    clock = Clock()
    bad = FlakySink()
    d, warnings = _dispatcher(bad, ListSink(), clock=clock)
    d.process(_recs(3))
    bad.full = False
    clock.now += 11 * SEC
    d.process(_recs(1))
    assert len(warnings) == 2 and "writes again" in warnings[1] and "3 record(s) lost" in warnings[0] + warnings[1]


def test_a_new_failure_after_a_quiet_recovery_is_warned_again():
    clock = Clock()
    bad, good = FlakySink(), ListSink()
    d, warnings = _dispatcher(bad, good, clock=clock)
    d.process(_recs(1))
    bad.full = False
    for _ in range(30):                    # healthy for 30 s
        clock.now += SEC
        d.process(_recs(1))
    bad.full = True
    d.process(_recs(2))
    assert [("cannot write" in w, "writes again" in w) for w in warnings] == [(True, False), (False, True),
                                                                             (True, False)]
    assert "2 record(s) lost so far" in warnings[-1]
    d.stop()
    # the file that failed twice got one loss record each time it came back (here: once, it is still full)
    assert [r["count"] for r in bad.records if r["type"] == "loss"] == [1]


def test_a_sink_failing_alone_still_counts_its_losses():
    bad = FlakySink()
    d, _ = _dispatcher(bad)
    d.process(_recs(4))
    d.stop()
    assert "loss: prof/web sink.jsonl: 4" in _summary_text(d)


def test_non_os_errors_are_counted_by_exception_name():
    class Broken:
        def write(self, records):
            raise ValueError("I/O operation on closed file.")

    good = ListSink()
    d, warnings = _dispatcher(Broken(), good)
    d.process(_recs(2))
    d.stop()
    assert [r["stage"] for r in good.records if r["type"] == "loss"] == ["sink.broken"]
    assert "ValueError" in d.sink_errors[0] and "ValueError" in warnings[0]


# ---- the JSONL sink itself: a batch is written whole or not at all

_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, {root!r})
    from orchestrator.pipeline import events
    from orchestrator.sinks import jsonl
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # over the limit: EFBIG, like ENOSPC on a full disk
    path = {path!r}
    sink = jsonl.JsonlSink(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, hard))
    out = []
    def batch(i, n):
        return [events.Record("data", None, {{"profile": "p", "target": "t", "i": i, "k": k, "data": "x" * 90}})
                for k in range(n)]
    for i in range(40):
        try:
            sink.write(batch(i, 3))
            out.append([i, "ok", os.path.getsize(path)])
        except OSError as exc:
            out.append([i, exc.errno, os.path.getsize(path)])
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))   # "space freed"
    sink.write(batch(99, 2))
    sink.close()
    print(json.dumps(out))
""")


def test_jsonl_write_is_whole_or_nothing_and_resumes(tmp_path):
    path = tmp_path / "o.jsonl"
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)
    assert any(s[1] == "ok" for s in steps) and any(s[1] == errno.EFBIG for s in steps)
    text = path.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]   # every line whole JSON
    written = [i for i, how, _ in steps if how == "ok"]
    assert [(r["i"], r["k"]) for r in lines] == [(i, k) for i in written + [99] for k in range(3 if i != 99 else 2)]
    sizes = [size for _, how, size in steps if how != "ok"]
    assert all(size <= 3000 and size == sizes[0] for size in sizes)     # a failed batch left nothing behind
