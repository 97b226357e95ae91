"""The profile watcher on real inotify: a profile's save, rename, chmod and removal each reload;
a sink writing next to the profile wakes nothing."""
from __future__ import annotations

import os
import threading
import time

import pytest

from orchestrator.reconcile import watcher


@pytest.fixture
def watched(tmp_path, monkeypatch):
    seen: list = []
    original = watcher._Handler.on_any_event

    def counting(self, event):
        seen.append(event)
        original(self, event)

    monkeypatch.setattr(watcher._Handler, "on_any_event", counting)
    profile = tmp_path / "p.yaml"
    profile.write_text("a: 1\n")
    changes = threading.Semaphore(0)
    w = watcher.Watcher([str(profile)], changes.release, debounce_s=0.02)
    w.start()
    yield profile, changes, seen
    w.stop()


def _changed(changes, timeout=5.0) -> bool:
    return changes.acquire(timeout=timeout)


def _quiet(changes, seen, seconds=0.4) -> bool:
    time.sleep(seconds)
    return not changes.acquire(blocking=False) and not seen


def test_writes_to_a_sink_file_next_to_the_profile_wake_nothing(watched):
    profile, changes, seen = watched
    fd = os.open(profile.parent / "out.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    time.sleep(0.3)                      # its creation is an event (for a name that is not a profile)
    assert not changes.acquire(blocking=False)
    seen.clear()
    try:
        for _ in range(200):
            os.write(fd, b'{"type":"http.request"}\n')
        assert _quiet(changes, seen), [e.event_type for e in seen]
    finally:
        os.close(fd)


def test_a_profile_saved_in_place_reloads(watched):
    profile, changes, _ = watched
    with open(profile, "w") as f:
        f.write("a: 2\n")
    assert _changed(changes)


def test_a_profile_replaced_by_rename_reloads(watched):
    profile, changes, _ = watched
    tmp = profile.parent / ".p.yaml.swp"
    tmp.write_text("a: 3\n")
    os.replace(tmp, profile)
    assert _changed(changes)


def test_a_chmod_reloads_so_a_refused_profile_can_be_fixed(watched):
    profile, changes, _ = watched
    os.chmod(profile, 0o666)
    assert _changed(changes)
    os.chmod(profile, 0o644)
    assert _changed(changes)


def test_a_removed_profile_reloads(watched):
    profile, changes, _ = watched
    profile.unlink()
    assert _changed(changes)


def test_reading_a_profile_wakes_nothing(watched):
    profile, changes, seen = watched
    for _ in range(20):
        profile.read_bytes()
    assert _quiet(changes, seen), [e.event_type for e in seen]
