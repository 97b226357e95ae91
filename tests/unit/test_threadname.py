"""apply's threads carry names the OS shows (top -H, /proc/PID/task/TID/comm)."""
from __future__ import annotations

import threading

from orchestrator import threadname


def _comm_of(thread_id: int) -> str:
    with open(f"/proc/self/task/{thread_id}/comm") as f:
        return f.read().strip()


def test_the_os_sees_the_short_name_of_a_named_thread():
    seen = {}

    def body():
        threadname.name_this_thread()
        seen["comm"] = _comm_of(threading.get_native_id())

    t = threading.Thread(target=body, name="ecapture-dispatch")
    t.start()
    t.join()
    assert seen["comm"] == "ecap-dispatch"


def test_names_are_cut_to_the_kernels_fifteen_bytes_on_a_character_boundary():
    assert threadname.native("ecapture-lane-web@bench-overhead") == "ecap-lane-web@b"
    assert threadname.native("ecapture-lane-ééééé") == "ecap-lane-éé"     # 14 bytes: no half é
    assert len(threadname.native("x" * 40).encode()) == 15
