"""Files as a process in another mount namespace (a container) sees them, reached through /proc/PID/root.

Owns two decisions of discovery:
- which mount namespace a target's `binary:`/`library:` names a file in: the namespace of the
  processes the target is scoped to (`filters.pids`, `filters.cgroups`) when that is not ours;
  our own (the paths as this process sees them, as before) when the target is not scoped to
  processes, when its processes run in our namespace, or when none runs now;
- how a path is resolved inside such a root. Everything there is hostile: every component is
  opened relative to the directory fd before it with O_NOFOLLOW, symlinks are read and resolved
  by hand inside the root (an absolute target starts again at the container's root, `..` stops
  there), so no link reaches a host file. The result is a symlink-free path under
  /proc/PID/root whose identity (st_dev, st_ino) was checked against the walk.

The dynamic loader's cache of a root is parsed here (bounded), never by running its ldconfig.
"""
from __future__ import annotations

import os
import stat
import struct
import sysconfig
from dataclasses import dataclass

from orchestrator import cgroups

MAX_LINKS = 40                  # as the kernel's ELOOP limit
MAX_PATH = 4096
MAX_CACHE_BYTES = 16 << 20      # a real ld.so.cache is ~100 KB
MAX_CACHE_ENTRIES = 200_000
MAX_DIR_ENTRIES = 20_000        # entries of one bin folder looked at for exec aliases
MAX_CGROUP_PIDS = 100_000
BIN_DIRS = ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or ""
LIBRARY_DIRS = tuple(d for d in (f"/lib/{_MULTIARCH}" if _MULTIARCH else "", f"/usr/lib/{_MULTIARCH}" if _MULTIARCH
                                 else "", "/lib64", "/usr/lib64", "/lib", "/usr/lib") if d)
CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_CACHE_HEADER = struct.Struct("<20sIIB3xI12x")     # magic, nlibs, len_strings, flags, extension offset
_CACHE_ENTRY = struct.Struct("<iIIIQ")             # flags, key, value, osversion, hwcap


class RootError(Exception):
    """A path that cannot be used in a process's root; `field` names the profile field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Namespace:
    """A mount namespace other than ours, reached through one of its processes."""
    pid: int
    mnt: str            # "mnt:[4026532…]", as /proc/PID/ns/mnt reads

    @property
    def prefix(self) -> str:
        return f"/proc/{self.pid}/root"

    def host(self, inside: str) -> str:
        """The path by which this process reaches `inside` (a resolved path in the root)."""
        return self.prefix + inside

    def inside(self, host_path: str) -> str:
        """The path in the root of a path made by `host()`; others are returned unchanged."""
        if host_path == self.prefix:
            return "/"
        return host_path[len(self.prefix):] if host_path.startswith(self.prefix + "/") else host_path

    def describe(self) -> str:
        return f"the mount namespace of pid {self.pid} ({self.mnt})"


def mount_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


# ----------------------------------------------------------------------------- which namespace

def cgroup_pids(path: str, mount: str | None = None) -> list[int]:
    """Processes in cgroup `path` (relative to the cgroup2 mount) and every cgroup under it."""
    mount = mount or cgroups.mount()
    if mount is None:
        return []
    top = os.path.join(mount, path.strip("/")).rstrip("/")
    if os.path.normpath(top) != top or os.path.realpath(top) != top:
        return []       # no `..` and no link: nothing out of the hierarchy
    pids: list[int] = []
    for folder, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(folder, "cgroup.procs")) as f:
                    pids += [int(p) for p in f.read(1 << 20).split() if p.isdigit()]
            except OSError:
                continue
        if len(pids) > MAX_CGROUP_PIDS:
            break
    return pids


def scoped_pids(filters) -> list[int]:
    """The running processes a target is scoped to: its pids and the members of its cgroups."""
    pids = [p for p in filters.pids if os.path.exists(f"/proc/{p}")]
    for cg in filters.cgroups:
        pids += cgroup_pids(cg)
    return list(dict.fromkeys(pids))


def namespace_for(filters, paths: tuple[str, ...]) -> tuple[Namespace | None, str]:
    """(the mount namespace the target's `paths` name files in, a note for `plan`); None: ours, the
    paths as this process sees them.

    - no running process in scope, or one in our namespace: ours (a host's processes name host
      files; a note says which other namespaces are left out);
    - all in other namespaces: the one where every path exists (a pod's pause container has no
      python); several such namespaces are an error, as one target attaches to one file."""
    ours = mount_ns("self")
    by_ns: dict[str, list[int]] = {}
    for pid in scoped_pids(filters):
        ns = mount_ns(pid)
        if ns is not None:
            by_ns.setdefault(ns, []).append(pid)
    foreign = sorted((Namespace(min(pids), ns) for ns, pids in by_ns.items() if ns != ours), key=lambda n: n.pid)
    if not foreign:
        return None, ""
    if ours in by_ns:
        return None, (f"resolved in this host's mount namespace, where pid {min(by_ns[ours])} runs; the target's "
                      f"processes in {len(foreign)} other mount namespace(s) (pid "
                      f"{', '.join(str(n.pid) for n in foreign[:5])}) are captured only where they map these files")
    having = [n for n in foreign if all(try_locate(n, p) is not None for p in paths)]
    if len(having) == 1:
        skipped = [n for n in foreign if n != having[0]]
        return having[0], (f"{len(skipped)} other mount namespace(s) of the target's processes have no "
                            f"{' or '.join(paths)} (pid {', '.join(str(n.pid) for n in skipped[:5])})"
                            if skipped else "")
    if not having:
        return foreign[0], ""          # its resolution names what is missing there
    raise RootError("filters", f"the target's processes run in {len(having)} mount namespaces that each have "
                               f"{' and '.join(paths)} (pid {', '.join(str(n.pid) for n in having[:5])}): one target "
                               "attaches to one file: scope each target to the processes of one container")


# ----------------------------------------------------------------------------- resolution in a root

def locate(ns: Namespace, path: str, field: str) -> str:
    """`path` as the processes of `ns` see it → its symlink-free path through /proc/PID/root.
    Raises RootError (naming `field`) when it is missing there or not a regular file."""
    inside, identity, mode = walk(ns.prefix, path, field, ns)
    if not stat.S_ISREG(mode):
        raise RootError(field, f"{path}: not a regular file in {ns.describe()} ({inside} there)")
    host = ns.host(inside)
    try:
        st = os.stat(host)
    except OSError as exc:
        raise RootError(field, f"{path}: {inside} in {ns.describe()} cannot be opened ({exc.strerror})") from None
    if (st.st_dev, st.st_ino) != identity:
        raise RootError(field, f"{path}: {inside} in {ns.describe()} changed while it was resolved")
    return host


def walk(root: str, path: str, field: str = "", ns: Namespace | None = None) -> tuple[str, tuple[int, int], int]:
    """Resolve `path` inside the directory `root` as if it were `/`: (resolved path inside it,
    (st_dev, st_ino), st_mode). No symlink, absolute or relative, and no `..` leaves the root."""
    where = ns.describe() if ns else root
    if not path.startswith("/"):
        raise RootError(field, f"{path}: not an absolute path")
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise RootError(field, f"{path}: {where} cannot be entered ({exc.strerror}; has the process exited?)") \
            from None
    stack, names = [root_fd], []
    pending = list(reversed(path.split("/")))
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            if not stat.S_ISDIR(os.fstat(stack[-1]).st_mode):
                raise RootError(field, f"{path}: /{'/'.join(names)} is not a directory in {where}")
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except OSError as exc:
                missing = "/" + "/".join([*names, part])
                raise RootError(field, f"{path}: no such file in {where} ({missing}: {exc.strerror})") from None
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                os.close(fd)
                links += 1
                if links > MAX_LINKS:
                    raise RootError(field, f"{path}: more than {MAX_LINKS} symbolic links in {where}")
                try:
                    target = os.readlink(part, dir_fd=stack[-1])
                except OSError as exc:
                    raise RootError(field, f"{path}: a link cannot be read in {where} ({exc.strerror})") from None
                if len(target) > MAX_PATH or "\0" in target:
                    raise RootError(field, f"{path}: an unusable symbolic link in {where}")
                if target.startswith("/"):       # the container's `/`, never ours
                    while len(stack) > 1:
                        os.close(stack.pop())
                    names.clear()
                pending.extend(reversed(target.split("/")))
                continue
            stack.append(fd)
            names.append(part)
        st = os.fstat(stack[-1])
        return "/" + "/".join(names), (st.st_dev, st.st_ino), st.st_mode
    finally:
        for fd in stack:
            os.close(fd)


def try_locate(ns: Namespace, path: str) -> str | None:
    try:
        return locate(ns, path, "")
    except RootError:
        return None


# ----------------------------------------------------------------------------- the loader's view of a root

def ld_cache(ns: Namespace) -> dict[str, tuple[str, ...]]:
    """soname → its paths in the root's /etc/ld.so.cache (glibc's 1.1 format), in the cache's order
    (one per machine it has the library for)."""
    host = try_locate(ns, "/etc/ld.so.cache")
    if host is None:
        return {}
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}
            data = f.read(MAX_CACHE_BYTES + 1)
    except OSError:
        return {}
    return parse_ld_cache(data)


def parse_ld_cache(data: bytes) -> dict[str, tuple[str, ...]]:
    """Bounded parse of a glibc ld.so.cache: names and paths outside the file are ignored."""
    if len(data) > MAX_CACHE_BYTES:
        return {}
    start = data.find(CACHE_MAGIC)      # after the old-format part, when the file has one
    if start < 0 or len(data) < start + _CACHE_HEADER.size:
        return {}
    _magic, nlibs, _len_strings, _flags, _ext = _CACHE_HEADER.unpack_from(data, start)
    nlibs = min(nlibs, MAX_CACHE_ENTRIES, (len(data) - start - _CACHE_HEADER.size) // _CACHE_ENTRY.size)
    cache: dict[str, tuple[str, ...]] = {}
    for i in range(nlibs):
        _f, key, value, _os, _hw = _CACHE_ENTRY.unpack_from(data, start + _CACHE_HEADER.size + i * _CACHE_ENTRY.size)
        name, path = _c_string(data, start + key), _c_string(data, start + value)
        if name and path and path.startswith("/"):
            cache[name] = (*cache.get(name, ()), path)
    return cache


def _c_string(data: bytes, offset: int) -> str | None:
    if not 0 <= offset < len(data):
        return None
    end = data.find(b"\0", offset, offset + MAX_PATH)
    if end < 0:
        return None
    try:
        return data[offset:end].decode()
    except UnicodeDecodeError:
        return None


def find_library(ns: Namespace, soname: str, extra_dirs: tuple[str, ...], cache: dict[str, tuple[str, ...]],
                 library_dirs: tuple[str, ...] = LIBRARY_DIRS, accept=lambda host_path: True) -> str | None:
    """Where the root's loader finds `soname` (RUNPATH folders, its cache, its default folders),
    as a path through /proc/PID/root; `extra_dirs` are paths in the root or made by ns.host();
    `accept(path)` says whether a file found is one the program can load (its machine)."""
    if "/" in soname:
        return None
    candidates = [os.path.join(ns.inside(d), soname) for d in extra_dirs]
    candidates += cache.get(soname, ())
    candidates += [os.path.join(d, soname) for d in library_dirs]
    for inside in candidates:
        host = try_locate(ns, inside)
        if host is not None and accept(host):
            return host
    return None


def mapped_library(ns: Namespace, pid: int, prefixes: tuple[str, ...], cache: dict[str, tuple[str, ...]]) -> str | None:
    """A library whose name starts with one of `prefixes` that process `pid` maps, as a path through
    /proc/PID/root: the file the root's loader finds by that name, if it is the very file mapped
    (/proc/PID/maps shows paths as *we* would reach them, not as the container does)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read(16 << 20).splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or not os.path.basename(parts[5].strip()).startswith(prefixes):
            continue
        try:
            mapped = os.stat(f"/proc/{pid}/map_files/{parts[0]}")
        except OSError:
            continue
        host = find_library(ns, os.path.basename(parts[5].strip()), (), cache)
        if host is not None:
            st = os.stat(host)
            if (st.st_dev, st.st_ino) == (mapped.st_dev, mapped.st_ino):
                return host
    return None


def exec_aliases(ns: Namespace, host_path: str, given: str) -> tuple[str, ...]:
    """The paths by which the root's processes exec the program (`given`, its resolved path, and the
    links in the root's bin folders that resolve to it): what the kernel's exec tracepoint sees."""
    real = ns.inside(host_path)
    aliases = {given, real}
    for d in dict.fromkeys(BIN_DIRS + (os.path.dirname(given), os.path.dirname(real))):
        folder = try_locate_dir(ns, d)
        if folder is None:
            continue
        try:
            names = os.listdir(ns.host(folder))[:MAX_DIR_ENTRIES]
        except OSError:
            continue
        for name in names:
            if name != os.path.basename(given) and name != os.path.basename(real):
                try:
                    if not stat.S_ISLNK(os.lstat(os.path.join(ns.host(folder), name)).st_mode):
                        continue
                except OSError:
                    continue
            candidate = os.path.join(d, name)
            try:
                if walk(ns.prefix, candidate)[0] == real:
                    aliases.add(candidate)
            except RootError:
                continue
    return tuple(sorted(aliases))


def try_locate_dir(ns: Namespace, path: str) -> str | None:
    try:
        inside, _identity, mode = walk(ns.prefix, path)
    except RootError:
        return None
    return inside if stat.S_ISDIR(mode) else None
