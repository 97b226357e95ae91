"""The cgroup v2 hierarchy as ecapture sees it: where it is mounted, the ids of the cgroups a
profile selects (`filters.cgroups`), the path a record's cgroup id names, and the container a
path names.

A cgroup's v2 id, as the kernel reports it (bpf_get_current_cgroup_id) and as the filter maps
hold it, is the inode number of its directory under the cgroup2 mount. The mount is found in
/proc/self/mountinfo: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid
one (v1 controllers beside it), anything else where an administrator put it.
"""
from __future__ import annotations

import functools
import os
import re
import stat
import threading
import time

MOUNTINFO = "/proc/self/mountinfo"
NAME_SCAN_INTERVAL_S = 1.0      # a miss rescans the hierarchy at most this often
NAMES_KEPT = 65536              # cgroups named at most (a scan past it keeps the first ones)

_ESCAPE = re.compile(r"\\([0-7]{3})")


def cgroup2_mount(mountinfo: str) -> str | None:
    """The mount point of the cgroup2 file system in a /proc/PID/mountinfo text that shows the
    whole hierarchy, or None when there is none. A mount's root is relative to the reader's
    cgroup namespace: `/` outside one; inside one (a pod given the host's /sys/fs/cgroup) the
    hierarchy's root is `/..`, `/../..`, ... and `/` is only the namespace's own subtree, so the
    mount whose root climbs highest wins (the first of equals); a subtree (`/kubepods.slice/x`)
    never does."""
    best, best_up = None, -1
    for line in mountinfo.splitlines():
        mount, sep, fs = line.partition(" - ")
        fields, fs_fields = mount.split(), fs.split()
        if not (sep and len(fields) >= 5 and fs_fields[:1] == ["cgroup2"]):
            continue
        parts = [p for p in fields[3].split("/") if p]
        if all(p == ".." for p in parts) and len(parts) > best_up:
            best, best_up = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]), len(parts)   # "\040": space
    return best


@functools.lru_cache(maxsize=1)
def _mount_cached() -> str | None:
    try:
        with open(MOUNTINFO) as f:
            return cgroup2_mount(f.read())
    except OSError:
        return None


def mount() -> str | None:
    """This host's cgroup2 mount point (looked up once it is found), or None."""
    found = _mount_cached()
    if found is None:
        _mount_cached.cache_clear()      # not mounted yet: look again next time
    return found


def _full(root: str, path: str) -> str | None:
    """`path` (relative to the mount, starting with /) under `root`, or None if it would leave it."""
    full = os.path.normpath(os.path.join(root, path.lstrip("/")))
    return full if full == root or full.startswith(root.rstrip("/") + "/") else None


def resolve(paths, root: str | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(ids of the cgroups of `paths` that exist now, the paths that do not). A path is relative to
    the cgroup2 mount; `root` is the mount (default: this host's)."""
    root = root or mount()
    ids: list[int] = []
    missing: list[str] = []
    for path in paths:
        full = _full(root, path) if root else None
        try:
            st = os.stat(full) if full else None
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            missing.append(path)
        elif st.st_ino not in ids:
            ids.append(st.st_ino)
    return tuple(ids), tuple(missing)


# The container a cgroup path names (its innermost one): systemd's scope units of docker,
# containerd (CRI), CRI-O and podman, and the cgroupfs drivers' plain id folders (docker's
# /docker/<id>, podman's /libpod_parent/libpod-<id>, the kubelet's /kubepods/.../<id>).
_SCOPE = re.compile(r"(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{64})(?:\.scope)?")
_ID = re.compile(r"[0-9a-f]{64}")


def container_id(path: str | None) -> str | None:
    """The 64-hex container id `path` names, or None."""
    if not path:
        return None
    found = None
    parts = path.split("/")
    for i, part in enumerate(parts):
        m = _SCOPE.fullmatch(part)
        if m:
            found = m.group(1)
        elif _ID.fullmatch(part) and (parts[i - 1] == "docker" or any(p.startswith("kubepods") for p in parts[:i])):
            found = part
    return found


class Names:
    """cgroup id → path relative to the mount, for records. A miss asks the process's
    /proc/PID/cgroup (checked against the id: the process may have moved), then rescans the
    hierarchy, at most once per `interval_s`; an id still unknown is not asked again before that.
    Ids of cgroups that were removed stay named until the scan after next."""

    def __init__(self, root: str | None = None, interval_s: float = NAME_SCAN_INTERVAL_S,
                 limit: int = NAMES_KEPT, clock=time.monotonic, proc: str = "/proc"):
        self._root = root
        self.interval_s, self.limit, self.clock, self.proc = interval_s, limit, clock, proc
        self._paths: dict[int, str] = {}
        self._previous: dict[int, str] = {}       # the scan before: removed cgroups, kept briefly
        self._unknown: dict[int, float] = {}      # id → when it was last looked for in vain
        self._scanned_at: float | None = None
        self._lock = threading.Lock()
        self.scans = 0

    @property
    def root(self) -> str | None:
        if self._root is None:
            self._root = mount()
        return self._root

    def path(self, cgroup_id: int, pid: int = 0) -> str | None:
        found = self._paths.get(cgroup_id) or self._previous.get(cgroup_id)
        if found is not None:
            return found
        now = self.clock()
        failed_at = self._unknown.get(cgroup_id)
        if failed_at is not None and now - failed_at < self.interval_s:
            return None
        root = self.root
        if root is None:
            return None
        with self._lock:
            found = (self._from_process(root, cgroup_id, pid) if pid else None) or self._from_scan(root, cgroup_id, now)
            if found is None:
                if len(self._unknown) >= self.limit:
                    self._unknown.clear()
                self._unknown[cgroup_id] = now
            else:
                self._unknown.pop(cgroup_id, None)
            return found

    def _from_process(self, root: str, cgroup_id: int, pid: int) -> str | None:
        try:
            with open(f"{self.proc}/{pid}/cgroup") as f:
                text = f.read()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                path = line[3:] or "/"
                full = _full(root, path)
                try:
                    if full is None or os.stat(full).st_ino != cgroup_id:
                        return None
                except OSError:
                    return None
                self._remember(cgroup_id, path)
                return path
        return None

    def _remember(self, cgroup_id: int, path: str) -> None:
        if len(self._paths) >= self.limit:
            self._paths.pop(next(iter(self._paths)))
        self._paths[cgroup_id] = path

    def _from_scan(self, root: str, cgroup_id: int, now: float) -> str | None:
        if self._scanned_at is not None and now - self._scanned_at < self.interval_s:
            return None
        self._scanned_at = now
        self.scans += 1
        try:
            found: dict[int, str] = {os.stat(root).st_ino: "/"}
        except OSError:
            return None
        stack = [(root, "")]
        while stack and len(found) < self.limit:
            full, rel = stack.pop()
            try:
                with os.scandir(full) as it:
                    entries = [e for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue        # removed meanwhile
            for e in entries[:max(0, self.limit - len(found))]:
                found[e.inode()] = f"{rel}/{e.name}"     # a directory entry's inode number is the cgroup's id
                stack.append((e.path, f"{rel}/{e.name}"))
        self._previous, self._paths = self._paths, found
        return found.get(cgroup_id)


NAMES = Names()


@functools.lru_cache(maxsize=4096)
def _container(path: str) -> str | None:
    return container_id(path)


def describe(cgroup_id: int, pid: int = 0) -> tuple[str | None, str | None]:
    """(the path of cgroup `cgroup_id`, or None when it is gone unnamed; the container it names, or
    None). `pid`: a process that was in it, asked first."""
    path = NAMES.path(cgroup_id, pid)
    return path, (_container(path) if path is not None else None)
