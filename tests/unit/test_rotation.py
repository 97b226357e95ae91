"""Rotation of JSONL files (when, names, keep, compress, 0600, no links followed, no record split)
and `reopen` of every file sink (SIGHUP, for logrotate)."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess

import pytest

from orchestrator import safefile
from orchestrator.pipeline import events
from orchestrator.reconcile import reconciler
from orchestrator.sinks import jsonl, keylog, pcapng_sink, rotate, stdout
from tests.unit.test_pcapng import parse_blocks
from tests.unit.test_reconciler import FakeDispatcher, FakeRuntime
from tests.support.files import assert_untouched, victim  # noqa: F401 (victim: a fixture)

SEC = 1_000_000_000
SHB, IDB, EPB, DSB = 0x0A0D0D0A, 1, 6, 0x0A


class Clock:
    def __init__(self):
        self.now = 1_700_000_000 * SEC

    def __call__(self):
        return self.now


def _records(start: int, n: int, pad: int = 0) -> list:
    """Records made outside the event path (like loss records), each with its number in `count`."""
    return [events.Record("loss", None, {"ts": 1_600_000_000 * SEC + i, "profile": "p", "target": "t",
                                         "stage": "test", "count": i, "pad": "x" * ((i * 7) % 50 + pad)})
            for i in range(start, start + n)]


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _lines(path) -> list[dict]:
    """Every line of a file (gzip or not) parsed whole: a split record fails here."""
    data = gzip.decompress(path.read_bytes()) if str(path).endswith(".gz") else path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in the middle of a line"
    return [json.loads(line) for line in data.splitlines()]


def _counts(path) -> list[int]:
    return [r["count"] for r in _lines(path)]


def _sink(path, clock=None, warnings=None, **policy) -> jsonl.JsonlSink:
    return jsonl.JsonlSink(str(path), rotation=rotate.Policy(**policy), clock=clock or Clock(),
                           warn=(warnings.append if warnings is not None else None))


# ---- the policy

def test_size_rotation_is_due_before_a_batch_that_would_pass_max_bytes():
    p = rotate.Policy(max_bytes=100)
    assert not p.due(size=0, started_ns=0, incoming=500, now_ns=0)      # an empty file takes any batch whole
    assert not p.due(size=60, started_ns=0, incoming=40, now_ns=0)      # exactly max_bytes fits
    assert p.due(size=60, started_ns=0, incoming=41, now_ns=0)


def test_age_rotation_counts_from_the_first_record():
    p = rotate.Policy.from_options({"max_age": "1h"})
    assert p.max_age_ns == 3600 * SEC and p.max_bytes is None and p.keep == 5 and not p.compress
    assert not p.due(size=10, started_ns=0, incoming=1, now_ns=3600 * SEC - 1)
    assert p.due(size=10, started_ns=0, incoming=1, now_ns=3600 * SEC)
    assert not p.due(size=0, started_ns=0, incoming=1, now_ns=10 * 3600 * SEC)   # never an empty file


@pytest.mark.parametrize("value, seconds", [(90, 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800),
                                            ("2w", 1209600)])
def test_durations(value, seconds):
    assert rotate.parse_duration(value) == seconds


@pytest.mark.parametrize("value", [0, -1, "1x", "h", "1.5h", "", True, None])
def test_bad_durations_are_refused(value):
    with pytest.raises(ValueError):
        rotate.parse_duration(value)


def test_no_rotate_block_no_rotation():
    assert rotate.Policy.from_options(None) is None
    assert rotate.Policy.from_options({}) is None


# ---- names, keep, no split

def test_logrotate_names_newest_first_and_keep_bounds_the_old_files(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=1, keep=2)       # every batch after the first rotates
    for i in range(5):
        sink.write(_records(i * 10, 10))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    assert _counts(path) == list(range(40, 50))
    assert _counts(tmp_path / "out.jsonl.1") == list(range(30, 40))
    assert _counts(tmp_path / "out.jsonl.2") == list(range(20, 30))
    assert sink.rotations == 4
    assert all(_mode(p) == 0o600 for p in tmp_path.iterdir())


def test_many_rotations_keep_every_record_whole_and_in_order(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=4000, keep=1000)
    sizes = [1, 3, 17, 2, 40, 1, 9, 25, 5, 60] * 6
    start, batches = 0, []
    for n in sizes:
        sink.write(_records(start, n))
        batches.append(list(range(start, start + n)))
        start += n
    sink.close()
    olds = sorted((p for p in tmp_path.iterdir() if p.name != "out.jsonl"),
                  key=lambda p: -int(p.name.rsplit(".", 1)[1]))            # oldest first
    assert len(olds) >= 10
    seen = [c for p in olds + [path] for c in _counts(p)]
    assert seen == list(range(start))                        # none lost, none twice, in order
    for p in olds:
        # A file is full when the next batch would not fit; only a batch alone may exceed max_bytes.
        assert p.stat().st_size <= 4000 or _counts(p) in batches


def test_a_batch_larger_than_max_bytes_goes_whole_into_a_fresh_file(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=200, keep=5)
    sink.write(_records(0, 1))
    sink.write(_records(1, 30))
    sink.write(_records(31, 1))
    sink.close()
    assert _counts(tmp_path / "out.jsonl.2") == [0]
    assert _counts(tmp_path / "out.jsonl.1") == list(range(1, 31))
    assert _counts(path) == [31]


def test_keep_zero_deletes_at_rotation(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=1, keep=0)
    sink.write(_records(0, 3))
    sink.write(_records(3, 3))
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert _counts(path) == [3, 4, 5]


def test_age_rotation_and_age_kept_across_a_restart(tmp_path):
    path, clock = tmp_path / "out.jsonl", Clock()
    sink = _sink(path, clock=clock, max_age_ns=60 * SEC)
    recs = _records(0, 2)
    for r in recs:
        r.fields["ts"] = clock.now
    sink.write(recs)
    clock.now += 30 * SEC
    sink.write(_records(2, 1))
    sink.close()
    clock.now += 29 * SEC
    sink = _sink(path, clock=clock, max_age_ns=60 * SEC)     # restarted: the file's first record is 59 s old
    sink.write(_records(3, 1))
    assert not (tmp_path / "out.jsonl.1").exists()
    clock.now += 1 * SEC
    sink.write(_records(4, 1))
    sink.close()
    assert _counts(tmp_path / "out.jsonl.1") == [0, 1, 2, 3]
    assert _counts(path) == [4]


def test_old_files_of_an_earlier_run_move_up_and_past_keep_go(tmp_path):
    path = tmp_path / "out.jsonl"
    for name, count in (("out.jsonl.1", 1), ("out.jsonl.2.gz", 2), ("out.jsonl.3", 3)):
        data = (json.dumps({"count": count}) + "\n").encode()
        (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    (tmp_path / "out.jsonl.x").write_text("not ours\n")
    path.write_text(json.dumps({"count": 0}) + "\n")
    os.chmod(path, 0o600)
    sink = _sink(path, max_bytes=1, keep=3)
    sink.write(_records(10, 1))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.1", "out.jsonl.2",
                                                          "out.jsonl.3.gz", "out.jsonl.x"]
    assert [_counts(tmp_path / n) for n in ("out.jsonl", "out.jsonl.1", "out.jsonl.2", "out.jsonl.3.gz")] == \
        [[10], [0], [1], [2]]


def test_old_files_removed_or_added_by_someone_else_do_not_stop_rotation(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=1, keep=4)
    for i in range(3):
        sink.write(_records(i, 1))
    os.unlink(tmp_path / "out.jsonl.2")                  # a person cleaning up
    (tmp_path / "out.jsonl.3").write_text(json.dumps({"count": 99}) + "\n")   # or restoring one
    sink.write(_records(3, 1))
    sink.close()
    assert sink.rotate_failures == 0
    assert [_counts(tmp_path / n) for n in ("out.jsonl", "out.jsonl.1", "out.jsonl.2", "out.jsonl.4")] == \
        [[3], [2], [1], [99]]
    assert not (tmp_path / "out.jsonl.3").exists()


def test_a_file_renamed_away_without_sighup_is_not_retired_again(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=1, keep=4)
    sink.write(_records(0, 1))
    os.rename(path, tmp_path / "taken.jsonl")           # logrotate without postrotate
    sink.write(_records(1, 1))                           # rotation: a new file at the path, nothing retired
    sink.close()
    assert _counts(tmp_path / "taken.jsonl") == [0] and _counts(path) == [1]
    assert not (tmp_path / "out.jsonl.1").exists()


def test_a_sink_rebuilt_by_a_reload_shares_the_old_files(tmp_path):
    path = tmp_path / "out.jsonl"
    first = _sink(path, max_bytes=1, keep=2, compress=True)
    second = _sink(path, max_bytes=1, keep=3, compress=False)     # the edited profile, same path
    assert second.old_files is first.old_files and first.old_files.keep == 3 and not first.old_files.compress
    first.close()
    second.close()


# ---- compression

def test_compressed_old_files_are_gzip_0600_and_whole(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = _sink(path, max_bytes=2000, keep=50, compress=True)
    start = 0
    for n in [7, 13, 1, 29, 3] * 8:
        sink.write(_records(start, n, pad=20))
        start += n
    sink.close()
    assert sink.old_files.join(30)
    names = sorted(p.name for p in tmp_path.iterdir())
    olds = [n for n in names if n != "out.jsonl"]
    assert olds and all(n.endswith(".gz") for n in olds), names        # no plain old file, no partial left
    assert all(_mode(tmp_path / n) == 0o600 for n in names)
    ordered = sorted(olds, key=lambda n: -int(n.split(".")[2]))
    assert [c for n in ordered + ["out.jsonl"] for c in _counts(tmp_path / n)] == list(range(start))
    assert sink.old_files.compressed == len(olds) and sink.old_files.compress_failures == 0


def test_a_failed_compression_leaves_the_plain_file_counted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(rotate, "COMPRESS_LEVEL", 42)        # zlib refuses the level: compression fails
    path, warnings = tmp_path / "out.jsonl", []
    sink = _sink(path, warnings=warnings, max_bytes=1, keep=5, compress=True)
    sink.write(_records(0, 2))
    sink.write(_records(2, 2))
    sink.close()
    assert sink.old_files.join(30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.1"]
    assert _counts(tmp_path / "out.jsonl.1") == [0, 1]
    assert sink.old_files.compress_failures == 1
    assert len(warnings) == 1 and "could not compress" in warnings[0] and "stays uncompressed" in warnings[0]


# ---- links

def test_links_where_old_files_go_are_replaced_never_followed(tmp_path, victim):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    path = logs / "out.jsonl"
    (logs / "out.jsonl.1").symlink_to(victim)
    (logs / "out.jsonl.1.gz").symlink_to(victim)
    sink = _sink(path, max_bytes=1, keep=5, compress=True)
    sink.write(_records(0, 2))
    sink.write(_records(2, 2))
    sink.close()
    assert sink.old_files.join(30)
    assert_untouched(victim)
    for name in ("out.jsonl.1.gz", "out.jsonl.2"):       # the old link moved up as .2: a link, still untouched
        assert os.path.lexists(logs / name)
    gz = logs / "out.jsonl.1.gz"
    assert stat.S_ISREG(os.lstat(gz).st_mode) and _mode(gz) == 0o600 and _counts(gz) == [0, 1]


def test_a_link_at_the_new_file_stops_rotation_not_the_records(tmp_path, victim):
    path, warnings = tmp_path / "out.jsonl", []
    (tmp_path / ".out.jsonl.next").symlink_to(victim)     # where the next file is made
    clock = Clock()
    sink = _sink(path, clock=clock, warnings=warnings, max_bytes=1, keep=5)
    sink.write(_records(0, 2))
    sink.write(_records(2, 2))                            # rotation refused: the batch goes to the current file
    sink.write(_records(4, 2))                            # no new attempt before ROTATE_RETRY_NS, no new warning
    assert _counts(path) == list(range(6)) and not (tmp_path / "out.jsonl.1").exists()
    assert sink.rotate_failures == 1 and len(warnings) == 1 and "symbolic link" in warnings[0]
    assert_untouched(victim)
    os.unlink(tmp_path / ".out.jsonl.next")
    clock.now += jsonl.ROTATE_RETRY_NS
    sink.write(_records(6, 1))
    sink.close()
    assert _counts(tmp_path / "out.jsonl.1") == list(range(6)) and _counts(path) == [6]
    assert "rotates again" in warnings[-1]


# ---- reopen (SIGHUP)

def test_jsonl_reopen_after_a_rename_starts_a_new_0600_file(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = jsonl.JsonlSink(str(path))
    sink.write(_records(0, 3))
    os.rename(path, tmp_path / "renamed.jsonl")
    sink.write(_records(3, 1))               # still the open file, whatever its name now
    sink.reopen()
    sink.write(_records(4, 2))
    sink.close()
    assert _counts(tmp_path / "renamed.jsonl") == [0, 1, 2, 3]
    assert _counts(path) == [4, 5] and _mode(path) == 0o600


def test_reopen_refused_keeps_the_current_file(tmp_path, victim):
    path = tmp_path / "out.jsonl"
    sink = jsonl.JsonlSink(str(path))
    sink.write(_records(0, 1))
    os.rename(path, tmp_path / "renamed.jsonl")
    path.symlink_to(victim)
    with pytest.raises(safefile.UnsafePathError, match="symbolic link"):
        sink.reopen()
    sink.write(_records(1, 1))
    sink.close()
    assert _counts(tmp_path / "renamed.jsonl") == [0, 1]
    assert_untouched(victim)


def test_keylog_reopen(tmp_path):
    path = tmp_path / "keys.log"
    sink = keylog.KeylogSink(str(path))

    def secret(n):
        return events.Record("tls.secret", None, {"label": "CLIENT_RANDOM", "client_random": f"{n:064x}",
                                                  "secret": "ab" * 48})
    sink.write([secret(1)])
    os.rename(path, tmp_path / "keys.log.1")
    sink.reopen()
    sink.write([secret(2)])
    sink.close()
    assert (tmp_path / "keys.log.1").read_text().split()[1] == f"{1:064x}"
    assert path.read_text().split()[1] == f"{2:064x}" and _mode(path) == 0o600


def _tshark_count(path) -> int:
    tshark = shutil.which("tshark")
    if tshark is None:
        return -1
    out = subprocess.run([tshark, "-n", "-r", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return len(out.stdout.splitlines())


def test_packet_writer_reopen_starts_a_section_with_its_interface_and_recent_secrets(tmp_path):
    path = tmp_path / "out.pcapng"
    w = pcapng_sink.PacketPcapngWriter(str(path))
    if_id = w.add_interface("lo")
    w.write_secrets(["CLIENT_RANDOM " + "01" * 32 + " " + "ab" * 48])
    w.write_packet(if_id, 1_000, b"\x00" * 60)
    w.flush()
    os.rename(path, tmp_path / "old.pcapng")
    w.reopen()
    w.write_packet(if_id, 2_000, b"\x01" * 60)
    w.close()
    old = [t for t, _ in parse_blocks((tmp_path / "old.pcapng").read_bytes())]
    new = parse_blocks(path.read_bytes())
    assert old == [SHB, DSB, IDB, EPB]
    assert [t for t, _ in new] == [SHB, DSB, IDB, EPB]       # readable alone, and still decrypts
    assert b"01" * 32 in new[1][1]
    assert _mode(path) == 0o600
    assert _tshark_count(path) in (1, -1)


def test_plaintext_pcapng_reopen_starts_a_section(tmp_path):
    path = tmp_path / "plain.pcapng"
    sink = pcapng_sink.PlaintextPcapngSink(str(path))
    os.rename(path, tmp_path / "old.pcapng")
    sink.reopen()
    sink.close()
    assert [t for t, _ in parse_blocks(path.read_bytes())] == [SHB, IDB] and _mode(path) == 0o600
    assert [t for t, _ in parse_blocks((tmp_path / "old.pcapng").read_bytes())] == [SHB, IDB]


def test_reconciler_reopens_every_file_sink_and_reports_the_ones_it_cannot(tmp_path, victim):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    rec = reconciler.Reconciler([str(tmp_path)], FakeRuntime(), FakeDispatcher(), print, print)
    good_sink, bad_sink = jsonl.JsonlSink(str(good)), jsonl.JsonlSink(str(bad))
    rec.sinks = {"a": [stdout.StdoutSink(color="never"), good_sink], "b": [bad_sink]}   # stdout: no file
    os.rename(good, tmp_path / "good.jsonl.1")
    os.rename(bad, tmp_path / "bad.jsonl.1")
    bad.symlink_to(victim)
    reopened, failed = rec.reopen_files()
    assert reopened == 1
    assert len(failed) == 1 and failed[0].startswith(f"b: jsonl {bad}: ") and "symbolic link" in failed[0]
    good_sink.write(_records(0, 1))
    bad_sink.write(_records(1, 1))
    for s in (good_sink, bad_sink):
        s.close()
    assert _counts(good) == [0] and _counts(tmp_path / "bad.jsonl.1") == [1]
    assert_untouched(victim)
