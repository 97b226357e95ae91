"""safefile: files written as root are never reached through links, FIFOs, shared folders or /proc."""
from __future__ import annotations

import os
import stat

import pytest

from orchestrator import safefile
from orchestrator.sinks import jsonl
from tests.support.files import assert_untouched, victim  # noqa: F401 (victim: a fixture)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _refused(path, fragment: str) -> None:
    with pytest.raises(safefile.UnsafePathError) as info:
        safefile.open_private(str(path))
    assert fragment in str(info.value)
    assert isinstance(info.value, OSError)   # the reconciler catches (OSError, ValueError) for sinks
    assert any(fragment in p for p in safefile.problems(str(path)))


def test_symlink_at_the_path_is_refused_and_its_target_untouched(tmp_path, victim):
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim)
    _refused(link, "symbolic link")
    with pytest.raises(OSError):
        jsonl.JsonlSink(str(link))
    assert_untouched(victim)


def test_symlink_in_a_parent_folder_is_refused(tmp_path, victim):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "logs").symlink_to(tmp_path / "real")
    _refused(tmp_path / "logs" / "out.jsonl", "symbolic link")
    assert not (tmp_path / "real" / "out.jsonl").exists()
    (tmp_path / "dir").symlink_to(tmp_path)
    _refused(tmp_path / "dir" / "victim", "symbolic link")
    assert_untouched(victim)


def test_fifo_at_the_path_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "out.jsonl"
    os.mkfifo(fifo, 0o600)
    _refused(fifo, "FIFO")


def test_hard_link_is_refused(tmp_path):
    private = tmp_path / "private"
    private.write_text("secret\n")
    os.chmod(private, 0o600)
    os.link(private, tmp_path / "out.jsonl")
    _refused(tmp_path / "out.jsonl", "hard links")
    assert private.read_text() == "secret\n"


def test_folder_writable_by_others_and_not_sticky_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    _refused(shared / "out.jsonl", "writable by group or others")
    _refused(shared / "deeper" / "out.jsonl", "writable by group or others")
    assert os.listdir(shared) == []


def test_proc_sys_dev_are_refused():
    _refused("/proc/self/fd/1", "under /proc")
    _refused("/sys/kernel/x", "under /sys")
    _refused("/dev/null", "under /dev")


def test_existing_file_wider_than_0600_is_refused_and_not_chmodded(tmp_path, victim):
    _refused(victim, "chmod 600")
    assert_untouched(victim)


def test_fresh_path_in_new_nested_folders_is_created_0600_with_folders_0700(tmp_path):
    path = tmp_path / "a" / "b" / "out.jsonl"
    assert safefile.problems(str(path)) == []
    fd = safefile.open_private(str(path))
    os.write(fd, b"one\n")
    os.close(fd)
    assert _mode(path) == 0o600
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    assert path.read_bytes() == b"one\n"


def test_existing_0600_file_we_own_is_appended_and_can_be_truncated(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o600)
    assert safefile.problems(str(path)) == []
    fd = safefile.open_private(str(path))
    os.write(fd, b"new\n")
    os.close(fd)
    assert path.read_bytes() == b"old\nnew\n"
    fd = safefile.open_private(str(path), truncate=True)
    os.write(fd, b"ready\n")
    os.close(fd)
    assert path.read_bytes() == b"ready\n" and _mode(path) == 0o600


def test_jsonl_sink_reruns_append_to_the_file_it_created(tmp_path):
    path = tmp_path / "logs" / "out.jsonl"
    jsonl.JsonlSink(str(path)).close()
    jsonl.JsonlSink(str(path)).close()
    assert _mode(path) == 0o600


def test_problems_creates_nothing(tmp_path):
    path = tmp_path / "x" / "y" / "out.jsonl"
    assert safefile.problems(str(path)) == []
    assert not (tmp_path / "x").exists()
