"""Opening the files ecapture writes as root (sinks, --ready-file) without being led elsewhere.

Owns one rule: a file is written only if every folder on its path is a real folder
(no symbolic link), owned by root or by us and not writable by group/others (a
root-owned sticky folder such as /tmp aside), and the file itself is a regular file
we own with a single link and mode 0600 or narrower. Missing folders are created
0700 one at a time. The walk holds each folder open (O_PATH) and opens the next
name relative to it with O_NOFOLLOW, so nothing can be swapped between a check and
its use.

An existing file wider than 0600 is refused, never chmod'ed: it is not ours to change,
and files ecapture creates are 0600, so re-runs keep appending to them.

`open_private` opens (raising `UnsafePathError`); `problems` only looks, for `validate`.
"""
from __future__ import annotations

import errno
import os
import stat

from orchestrator import workdir

REFUSED_TREES = ("proc", "sys", "dev")
_DIR_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path ecapture refuses to write to; the message says what is wrong and how to fix it."""


def open_private(path: str, truncate: bool = False) -> int:
    """Open `path` for appending (created 0600 if missing, folders 0700) and return the fd.

    `truncate` empties it after the checks (for a --ready-file). Raises `UnsafePathError`
    for anything unsafe or impossible, never follows a link, never blocks on a FIFO.
    """
    full = _absolute(path)
    parent = _walk_folders(full, create=True)
    try:
        fd, created = _open_in(parent, full)
    finally:
        os.close(parent)
    try:
        _check_file(os.fstat(fd), full, created)
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_whole(fd: int, data) -> None:
    """Append all of `data` to a file opened by open_private, or, on a short write or an error
    (ENOSPC, EFBIG, EIO, ...), none of it: the file is cut back to its size before, then the
    error is raised. A reader never finds half a record or half a block."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            n = os.write(fd, view[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
    except BaseException:
        if done:
            # The offset sits right after our bytes (O_APPEND or not): cut them off again.
            start = os.lseek(fd, 0, os.SEEK_CUR) - done
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        raise


def problems(path: str) -> list[str]:
    """Why `open_private(path)` would refuse `path`, without creating or opening anything.

    Returns [] when the path looks writable (missing folders and a missing file are fine:
    they will be created). Each message names the offending path and how to fix it. Files
    and folders owned by root count as ours, since `validate` may run unprivileged for a
    profile that `apply` runs as root; folders it cannot read are not reported.
    """
    try:
        full = _absolute(path)
        parent = _walk_folders(full, create=False)
        if parent is None:
            return []
        try:
            st = os.stat(os.path.basename(full), dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)
        _check_file(st, full, created=False, owners=(0, os.geteuid()))
    except UnsafePathError as exc:
        return [str(exc)]
    except (FileNotFoundError, PermissionError):
        pass
    return []


def _absolute(path: str) -> str:
    if not path or str(path).endswith("/"):
        raise UnsafePathError(f"{path!r} is not a file path: name a file, e.g. /var/log/ecapture/out.jsonl")
    full = workdir.absolute(path)
    top = full.split("/")[1]
    if top in REFUSED_TREES:
        raise UnsafePathError(f"{full} is under /{top}: ecapture writes regular files only, "
                              f"choose a path outside {', '.join('/' + t for t in REFUSED_TREES)}")
    return full


def _walk_folders(full: str, create: bool) -> int | None:
    """An O_PATH fd of the folder holding `full`, every folder on the way checked.

    With `create` missing folders are made 0700; without, None when one is missing.
    """
    fd = os.open("/", _DIR_FLAGS)
    here = "/"
    try:
        _check_folder(os.fstat(fd), here)
        for name in full.split("/")[1:-1]:
            here = os.path.join(here, name)
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise UnsafePathError(f"cannot create folder {here}: {exc.strerror}") from None
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create:
                    raise UnsafePathError(f"folder {here} vanished while it was being created") from None
                os.close(fd)
                return None
            except PermissionError:
                if create:
                    raise UnsafePathError(f"cannot open folder {here}: permission denied") from None
                os.close(fd)
                return None   # root (apply) may see more than the unprivileged `validate`
            except OSError as exc:
                raise _not_a_folder(fd, name, here, exc) from None
            os.close(fd)
            fd = nxt
            _check_folder(os.fstat(fd), here)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _not_a_folder(parent: int, name: str, here: str, exc: OSError) -> UnsafePathError:
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link:
        return UnsafePathError(f"{here} is a symbolic link: ecapture does not follow links on the way to a file "
                               f"it writes as root; use the real folder's path")
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return UnsafePathError(f"{here} is not a folder: choose another path")
    return UnsafePathError(f"cannot open folder {here}: {exc.strerror}")


def _check_folder(st: os.stat_result, here: str) -> None:
    if not stat.S_ISDIR(st.st_mode):   # O_PATH|O_NOFOLLOW opens a link itself when O_DIRECTORY is ignored
        raise UnsafePathError(f"{here} is not a folder (a symbolic link?): use the real folder's path")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePathError(f"folder {here} is owned by uid {st.st_uid}, who could swap what ecapture writes "
                              f"there: use a folder owned by root")
    sticky_root = st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_root:
        raise UnsafePathError(f"folder {here} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                              f"run `chmod go-w {here}` or choose another folder")


def _open_in(parent: int, full: str) -> tuple[int, bool]:
    """(fd, created): create the file 0600, or open the existing one if it is a regular file."""
    name = os.path.basename(full)
    try:
        return os.open(name, _FILE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=parent), True
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafePathError(f"cannot create {full}: {exc.strerror}") from None
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError as exc:
        raise UnsafePathError(f"cannot open {full}: {exc.strerror}") from None
    _check_file(st, full, created=False)   # before opening: never open a FIFO, device or link
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise UnsafePathError(f"cannot open {full}: {exc.strerror}") from None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise UnsafePathError(f"{full} was replaced while it was being opened: try again")
    return fd, False


def _check_file(st: os.stat_result, full: str, created: bool, owners: tuple = ()) -> None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        raise UnsafePathError(f"{full} is a symbolic link: ecapture does not follow links when it writes as root; "
                              f"point the sink at the real file")
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a folder", stat.S_IFSOCK: "a socket",
                stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}.get(stat.S_IFMT(mode), "not a regular file")
        raise UnsafePathError(f"{full} is {kind}, not a regular file: remove it or choose another path")
    if st.st_uid not in (owners or (os.geteuid(),)):
        raise UnsafePathError(f"{full} is owned by uid {st.st_uid}, not by uid {os.geteuid()} that writes it: "
                              f"remove it or choose another path")
    if st.st_nlink != 1:
        raise UnsafePathError(f"{full} has {st.st_nlink} hard links, so writing it would change another file too: "
                              f"remove it or choose another path")
    if not created and stat.S_IMODE(mode) & 0o077:
        raise UnsafePathError(f"{full} has mode {stat.S_IMODE(mode):04o}; captured plaintext goes only to files "
                              f"of mode 0600 or narrower: run `chmod 600 {full}` or choose another path")
