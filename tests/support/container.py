"""A container without Docker, for capture tests: a private root holding its own copies of python3.11
and of every library it loads (libssl and libcrypto among them: other files, other inodes than the
host's), entered with `unshare --mount --pid --fork` and `chroot`, in a cgroup v2 group of its own.

It shares the host's network namespace, so 127.0.0.1 reaches servers on the host's loopback. The
standard library is bind-mounted read-only inside its private mount namespace (its own copies are
not the point: the interpreter and its TLS library are). Python in it is PID 1 of its PID
namespace and ignores SIGTERM: it is stopped with cgroup.kill (or SIGKILL to every member).

Usage::

    with NamespaceContainer(tmp_path / "ctr") as ctr:
        proc = ctr.python("-c", SCRIPT, "arg", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pid = ctr.wait_for_python()          # its pid as the host sees it
        ctr.cgroup                           # its cgroup, relative to the cgroup2 mount
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sysconfig
import time
import uuid
from pathlib import Path

PYTHON = "/usr/bin/python3.11"
STDLIB = "/usr/lib/python3.11"
MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"


def cgroup2_mount() -> Path:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    raise RuntimeError("no cgroup2 mount in /proc/self/mountinfo")


def shared_libraries(*files: str) -> set[str]:
    """The libraries `ldd` says these ELF files load, the dynamic loader included."""
    libs: set[str] = set()
    for f in files:
        out = subprocess.run(["ldd", f], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(parts[2])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])
    return libs


class NamespaceContainer:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.root = self.base / "root"
        mount = cgroup2_mount()
        self.cgroup = f"/ecapture-test-{uuid.uuid4().hex[:12]}"
        self.cgroup_dir = mount / self.cgroup.lstrip("/")
        self.procs: list[subprocess.Popen] = []

    # ------------------------------------------------------------------ the root
    def build(self) -> None:
        r = self.root
        for d in ("usr/bin", f"usr/lib/{MULTIARCH}", "usr/lib64", "etc", "tmp", STDLIB.lstrip("/")):
            (r / d).mkdir(parents=True, exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            os.symlink(target, r / link)                     # merged /usr, as Debian lays it out
        shutil.copy2(PYTHON, r / "usr/bin/python3.11")
        os.symlink("python3.11", r / "usr/bin/python3")
        modules = [str(p) for p in Path(STDLIB, "lib-dynload").glob("*.so")]
        for lib in shared_libraries(PYTHON, *modules):
            name = os.path.basename(lib)
            folder = "usr/lib64" if lib.startswith("/lib64/") else f"usr/lib/{MULTIARCH}"
            shutil.copy2(os.path.realpath(lib), r / folder / name)
        # The container's own loader cache (its ld.so reads it; ecapture parses it to find libssl).
        (r / "etc/ld.so.conf").write_text(f"/usr/lib/{MULTIARCH}\n")
        subprocess.run(["ldconfig", "-r", str(r)], check=True, capture_output=True, timeout=60)

    # ------------------------------------------------------------------ processes
    def python(self, *args: str, **popen) -> subprocess.Popen:
        """Run the container's python (isolated: -I -S) with `args`, in the container's namespaces,
        root and cgroup. The shell moves itself into the cgroup before it execs anything."""
        inner = ('echo 0 > "$1/cgroup.procs" && mount --bind "$2" "$3$2" && '
                 'mount -o remount,bind,ro "$3$2" && shift 3 && exec chroot "$ROOT" /usr/bin/python3 -I -S "$@"')
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ROOT": str(self.root)}
        proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                                 "/bin/sh", "-c", inner, "sh", str(self.cgroup_dir), STDLIB, str(self.root), *args],
                                env=env, **popen)
        self.procs.append(proc)
        return proc

    def members(self) -> list[int]:
        try:
            return [int(p) for p in (self.cgroup_dir / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def wait_for_python(self, timeout: float = 20.0) -> int:
        """The host pid of the container's python, once it runs the container's own interpreter."""
        copy = os.stat(self.root / "usr/bin/python3.11")
        deadline = time.time() + timeout
        while time.time() < deadline:
            for pid in self.members():
                try:
                    exe = os.stat(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if (exe.st_dev, exe.st_ino) == (copy.st_dev, copy.st_ino):
                    return pid
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"the container exited {proc.returncode} before its python ran")
            time.sleep(0.05)
        raise RuntimeError(f"no python in cgroup {self.cgroup} after {timeout:g} s")

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "NamespaceContainer":
        self.base.mkdir(parents=True, exist_ok=True)
        self.cgroup_dir.mkdir()
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill everything in the cgroup (its mounts go with its mount namespace), remove the cgroup
        and the root. Safe to call more than once."""
        kill = self.cgroup_dir / "cgroup.kill"
        deadline = time.time() + 10
        while self.cgroup_dir.exists() and time.time() < deadline:
            members = self.members()
            if not members:
                try:
                    self.cgroup_dir.rmdir()
                except OSError:
                    time.sleep(0.05)     # the last member is still exiting
                continue
            try:
                kill.write_text("1")
            except OSError:
                for pid in members:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            time.sleep(0.05)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.base, ignore_errors=True)
