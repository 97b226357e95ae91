"""The TC classifier's place on network interfaces: clsact qdiscs and ecapture's cls_bpf filters.

Owns, over rtnetlink (pyroute2), everything ecapture adds to an interface's traffic control:

- a `clsact` qdisc, created only when the interface has none, and removed again only if an
  ecapture process created it and no filter at all (ours or anyone's) is left on it;
- one direct-action cls_bpf filter per (interface, direction) at preference PRIO with handle =
  the apply process's pid, named with a tag, `ecapture:<pid>:<start time>[:own-qdisc]`, saying
  which process added it and whether ecapture created the qdisc under it.

A filter holds its program, so it outlives the process that added it: the tag is how the next
start (`cleanup_stale`) recognises what a killed apply left and whether to remove its qdisc too.
The start time (from /proc/PID/stat) tells a reused pid from the process that added the filter.

Everything runs in the network namespace of the calling thread, on a netlink socket opened per
call. Callers serialise calls to one TcAttachment. Expected failures raise TcError (one line).
A leaf module: it imports nothing of the project.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

PRIO = 0xEC                  # `pref 236`: ahead of filters added with tc's default preferences
TAG_PREFIX = "ecapture"
OWN_QDISC = "own-qdisc"
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}   # TC_H_CLSACT major : TC_H_MIN_(IN|E)GRESS
DIRECTIONS = tuple(PARENTS)
_CLSACT_PARENT = 0xFFFFFFF1
_GONE = (errno.ENODEV, errno.ENOENT)     # the device, qdisc or filter is already gone


class TcError(Exception):
    """Attaching or detaching the classifier failed; `str()` is one line for the user."""


@dataclass(frozen=True)
class Tag:
    """Who added a filter: the apply process (pid and start time) and whether it created the qdisc."""
    pid: int
    start: int
    own_qdisc: bool = False

    def __str__(self) -> str:
        return f"{TAG_PREFIX}:{self.pid}:{self.start}" + (f":{OWN_QDISC}" if self.own_qdisc else "")


def parse_tag(name: str | None) -> Tag | None:
    """The Tag in a cls_bpf filter name, or None when the filter is not ecapture's."""
    parts = (name or "").split(":")
    if len(parts) not in (3, 4) or parts[0] != TAG_PREFIX or parts[3:] not in ([], [OWN_QDISC]):
        return None
    if not (parts[1].isdigit() and parts[2].isdigit()) or int(parts[1]) == 0:
        return None
    return Tag(int(parts[1]), int(parts[2]), len(parts) == 4)


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(tag: Tag) -> bool:
    """Whether the process that added a filter with `tag` still runs (not a reuse of its pid)."""
    return process_start(tag.pid) == tag.start


def _own_identity() -> tuple[int, int]:
    pid = os.getpid()
    return pid, process_start(pid)


@dataclass
class _Link:
    index: int
    own_qdisc: bool
    directions: set = field(default_factory=set)


class TcAttachment:
    """This process's filters: which interfaces and directions run the classifier."""

    def __init__(self):
        self._pid, self._start = _own_identity()
        self._links: dict[str, _Link] = {}

    def attach(self, ifname: str, prog_fd: int, directions=DIRECTIONS) -> None:
        """Run program `prog_fd` on `directions` of `ifname`; a direction already attached gets the
        new program in one atomic replace (no packet missed). Other directions are left as they
        are. All or nothing: on failure, what this call added is removed again."""
        directions = _directions(directions)
        with _ipr() as ipr:
            index = _index(ipr, ifname)
            link = self._links.get(ifname)
            if link is None or link.index != index:       # new, or the device was re-created
                link = _Link(index, own_qdisc=False)
            link.own_qdisc |= _ensure_clsact(ipr, index, ifname)
            tag = str(Tag(self._pid, self._start, link.own_qdisc))
            added = []
            try:
                for d in directions:
                    command = "replace-filter" if d in link.directions else "add-filter"
                    ipr.tc(command, "bpf", index, self._pid, parent=PARENTS[d], prio=PRIO,
                           fd=prog_fd, name=tag, direct_action=True)
                    if d not in link.directions:
                        added.append(d)
                        link.directions.add(d)
            except _netlink_error() as exc:
                self._roll_back(ipr, ifname, link, added)
                raise TcError(f"cannot attach the classifier to {ifname} {d}: {_reason(exc)}") from None
            self._links[ifname] = link

    def _roll_back(self, ipr, ifname: str, link: _Link, added: list[str]) -> None:
        try:
            for d in added:
                _delete_filter(ipr, link.index, d, self._pid, PRIO)
                link.directions.discard(d)
            if not link.directions:
                self._links.pop(ifname, None)
                _release_clsact(ipr, link.index, link.own_qdisc)
        except _netlink_error():
            pass      # best effort: the error that made us roll back is the one to report

    def detach(self, ifname: str, directions=DIRECTIONS) -> None:
        """Remove our filter from `directions` of `ifname`; when none is left there, the clsact
        qdisc too if ecapture created it and nothing else uses it. A vanished device is fine."""
        link = self._links.get(ifname)
        if link is None:
            return
        with _ipr() as ipr:
            for d in sorted(link.directions & set(_directions(directions))):
                try:
                    _delete_filter(ipr, link.index, d, self._pid, PRIO)
                except _netlink_error() as exc:
                    raise TcError(f"cannot detach the classifier from {ifname} {d}: {_reason(exc)}") from None
                link.directions.discard(d)
            if not link.directions:
                del self._links[ifname]
                try:
                    _release_clsact(ipr, link.index, link.own_qdisc)
                except _netlink_error() as exc:
                    raise TcError(f"cannot remove the clsact qdisc of {ifname}: {_reason(exc)}") from None

    def detach_all(self) -> None:
        """Detach from every interface; tries them all, then raises the first failure."""
        first = None
        for ifname in list(self._links):
            try:
                self.detach(ifname)
            except TcError as exc:
                first = first or exc
        if first is not None:
            raise first

    def interfaces(self) -> list[tuple[str, str]]:
        """(interface, direction) pairs this attachment has the classifier on, sorted."""
        return sorted((name, d) for name, link in self._links.items() for d in link.directions)


def attached() -> list[tuple[str, str]]:
    """(interface, direction) pairs where the kernel runs a filter of this process, sorted."""
    pid, start = _own_identity()
    with _ipr() as ipr:
        names = _names(ipr)
        return sorted((names.get(index, str(index)), d) for index in _clsact_indexes(ipr)
                      for d, _prio, _handle, tag in _tagged_filters(ipr, index)
                      if (tag.pid, tag.start) == (pid, start))


def cleanup_stale() -> list[str]:
    """Remove every filter whose apply process is gone, on every interface of this network
    namespace, and the clsact qdiscs ecapture created that nothing uses any more. What was
    removed, for a log line; filters of running processes are left alone."""
    removed = []
    with _ipr() as ipr:
        names = _names(ipr)
        for index in _clsact_indexes(ipr):
            ifname = names.get(index, f"ifindex {index}")
            stale = [(d, prio, handle, tag) for d, prio, handle, tag in _tagged_filters(ipr, index)
                     if not alive(tag)]
            try:
                for d, prio, handle, tag in stale:
                    _delete_filter(ipr, index, d, handle, prio)
                    removed.append(f"{ifname} {d} filter of pid {tag.pid}")
                if stale and any(tag.own_qdisc for *_, tag in stale) and _release_clsact(ipr, index, True):
                    removed.append(f"{ifname} clsact qdisc")
            except _netlink_error() as exc:
                raise TcError(f"cannot remove a stale classifier from {ifname}: {_reason(exc)}") from None
    return removed


# -- rtnetlink --------------------------------------------------------------------------------

@contextmanager
def _ipr():
    import pyroute2   # imported late: commands that never touch TC need not load it

    try:
        ipr = pyroute2.IPRoute()
    except OSError as exc:
        raise TcError(f"cannot open a netlink socket: {exc.strerror or exc}") from None
    try:
        yield ipr
    except pyroute2.NetlinkError as exc:      # one the steps above did not expect (a device gone)
        raise TcError(f"traffic control over netlink failed: {_reason(exc)}") from None
    finally:
        ipr.close()


def _netlink_error():
    import pyroute2
    return pyroute2.NetlinkError


def _reason(exc) -> str:
    code = getattr(exc, "code", 0)
    return os.strerror(code) if code else str(exc)


def _directions(directions) -> tuple[str, ...]:
    if isinstance(directions, str):
        directions = (directions,)
    if not directions:
        raise TcError("no direction given: ingress, egress or both")
    for d in directions:
        if d not in PARENTS:
            raise TcError(f"a direction must be ingress or egress, not {d!r}")
    return tuple(dict.fromkeys(directions))


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TcError(f"no network interface named {ifname!r}")
    return found[0]


def _names(ipr) -> dict[int, str]:
    return {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _clsact_indexes(ipr) -> list[int]:
    return sorted({q["index"] for q in ipr.get_qdiscs() if q.get_attr("TCA_KIND") == "clsact"})


def _ensure_clsact(ipr, index: int, ifname: str) -> bool:
    """Make sure `index` has a clsact qdisc; whether an ecapture process created the one there."""
    try:
        ipr.tc("add", "clsact", index)
        return True
    except _netlink_error() as exc:
        if exc.code != errno.EEXIST:
            raise TcError(f"cannot add a clsact qdisc to {ifname}: {_reason(exc)}") from None
    kinds = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index=index) if q["parent"] == _CLSACT_PARENT]
    if kinds != ["clsact"]:
        raise TcError(f"{ifname} has an {kinds[0] if kinds else 'unknown'!r} qdisc where the "
                      f"classifier needs clsact; remove it (`tc qdisc del dev {ifname} ingress`)")
    # Created by another ecapture process if one of them says so: whichever leaves last removes it.
    return any(tag.own_qdisc for *_, tag in _tagged_filters(ipr, index))


def _tagged_filters(ipr, index: int):
    """(direction, prio, handle, Tag) of every ecapture filter on `index`'s clsact qdisc."""
    for d, parent in PARENTS.items():
        for msg in ipr.get_filters(index=index, parent=parent):
            options = msg.get_attr("TCA_OPTIONS")
            if msg.get_attr("TCA_KIND") != "bpf" or not msg["handle"] or options is None:
                continue     # per-preference header rows carry no handle and no options
            tag = parse_tag(options.get_attr("TCA_BPF_NAME"))
            if tag is not None:
                yield d, msg["info"] >> 16, msg["handle"], tag


def _delete_filter(ipr, index: int, direction: str, handle: int, prio: int) -> None:
    try:
        ipr.tc("del-filter", "bpf", index, handle, parent=PARENTS[direction], prio=prio)
    except _netlink_error() as exc:
        # EINVAL is how the kernel says the qdisc is gone (deleted by someone, with our filters).
        if exc.code not in _GONE and not (exc.code == errno.EINVAL and index not in _clsact_indexes(ipr)):
            raise


def _release_clsact(ipr, index: int, own_qdisc: bool) -> bool:
    """Delete the clsact qdisc of `index` if ecapture created it and no filter is left; whether it did."""
    if not own_qdisc:
        return False
    try:
        if index not in _clsact_indexes(ipr) or any(
                True for parent in PARENTS.values() for _ in ipr.get_filters(index=index, parent=parent)):
            return False
        ipr.tc("del", "clsact", index)
        return True
    except _netlink_error() as exc:
        if exc.code not in _GONE:
            raise
        return False
