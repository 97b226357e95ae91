"""Give a thread of ours a name the OS shows (`top -H`, `ps -L`, /proc/PID/task/TID/comm), so a
user (and bench/overhead.py) can see which part of apply spends the CPU. Python 3.11 names its
threads for Python only."""
from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):       # not Linux
    _prctl = None


def native(name: str) -> str:
    """The OS name for a thread called `name`: "ecap-" and the rest, in the kernel's 15 bytes."""
    short = name.removeprefix("ecapture-")
    return ("ecap-" + short).encode("utf-8", "replace")[:15].decode("utf-8", "ignore")


def name_this_thread() -> None:
    """Call first thing in a thread's target; never fails."""
    if _prctl is not None:
        _prctl(PR_SET_NAME, native(threading.current_thread().name).encode())
