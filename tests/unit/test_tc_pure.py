"""The pure parts of orchestrator/bpf/tc.py: the filter tag, and telling a running apply process
from a gone one (a reused pid, a zombie). No root, no netlink."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.bpf import tc


@pytest.mark.parametrize("tag, text", [
    (tc.Tag(1234, 987654), "ecapture:1234:987654"),
    (tc.Tag(1234, 987654, own_qdisc=True), "ecapture:1234:987654:own-qdisc"),
])
def test_a_tag_formats_and_parses_back(tag, text):
    assert str(tag) == text
    assert tc.parse_tag(text) == tag


@pytest.mark.parametrize("name", [
    None, "", "ecapture", "ecapture:1234", "ecapture:1234:", "ecapture::5", "ecapture:0:5",
    "ecapture:-1:5", "ecapture:12a:5", "ecapture:1:5:own", "ecapture:1:5:own-qdisc:x",
    "ecapture:1:5:", "xcapture:1:5", "ECAPTURE:1:5", "cls_ecapture", "ecapture:1:5 ",
])
def test_a_name_that_is_not_exactly_a_tag_is_not_ours(name):
    assert tc.parse_tag(name) is None


def test_this_process_is_alive_under_its_own_start_time_only():
    start = tc.process_start(os.getpid())
    assert isinstance(start, int) and start > 0
    assert tc.alive(tc.Tag(os.getpid(), start))
    assert not tc.alive(tc.Tag(os.getpid(), start + 1))      # the pid reused by another process


def test_a_process_with_a_parenthesis_and_spaces_in_its_name_is_read_right():
    proc = subprocess.Popen([sys.executable, "-c",
                             "import ctypes, time; ctypes.CDLL(None).prctl(15, b'a) b (c', 0, 0, 0); time.sleep(30)"])
    try:
        deadline = time.time() + 5
        while b"a) b (c" not in open(f"/proc/{proc.pid}/stat", "rb").read() and time.time() < deadline:
            time.sleep(0.01)
        start = tc.process_start(proc.pid)
        assert start is not None and tc.alive(tc.Tag(proc.pid, start))
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_process_is_gone_even_before_it_is_reaped():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    start = tc.process_start(proc.pid)
    assert tc.alive(tc.Tag(proc.pid, start))
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.time() + 5
    while tc.process_start(proc.pid) is not None and time.time() < deadline:
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{proc.pid}")        # a zombie still, not reaped
    assert not tc.alive(tc.Tag(proc.pid, start))
    proc.wait()
    assert not tc.alive(tc.Tag(proc.pid, start))


def test_directions_are_checked_before_any_netlink_call():
    with pytest.raises(tc.TcError, match="ingress or egress, not 'in'"):
        tc.TcAttachment().attach("lo", 3, ["in"])
    with pytest.raises(tc.TcError, match="no direction given"):
        tc.TcAttachment().attach("lo", 3, [])
