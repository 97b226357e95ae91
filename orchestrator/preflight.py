"""Start-up checks for commands that touch the kernel: each failure is one line saying how to fix it."""
from __future__ import annotations

import os
import platform


def problems() -> list[str]:
    out = []
    if os.geteuid() != 0:
        out.append("not running as root: BPF programs need root (run with sudo)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        out.append("bcc is not importable: `apt-get install python3-bpfcc` and use a venv made with "
                   "--system-site-packages (`make setup` does both)")
    build = f"/lib/modules/{platform.release()}/build"
    if not os.path.exists(os.path.join(build, "include")):
        out.append(f"kernel headers missing at {build}: install linux-headers-{platform.release()} "
                   "or run `make setup` to link Debian's cloud headers")
    if not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        out.append("tracefs is not mounted: `mount -t tracefs nodev /sys/kernel/tracing`")
    return out
