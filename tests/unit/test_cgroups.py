"""cgroups without root: the cgroup2 mount in mountinfo, container ids in cgroup paths, the
id → path cache (on a directory tree standing for the hierarchy: a directory's inode number is
its cgroup id), filters.cgroups from the profile to the filter configuration, and the cgroup in
the event header and in every record. The kernel side is tests/kernel/test_cgroups.py."""
from __future__ import annotations

import dataclasses
import os
import textwrap

import msgspec
import pytest

from orchestrator import cgroups
from orchestrator.bpf import layout
from orchestrator.pipeline import events
from orchestrator.plan import build
from orchestrator.profile import errors, load, models
from tests.unit.test_plan_diff import WEB, _profile, fake_resolve
from tests.unit.test_pipeline import _probe_set

HEX = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4

UNIFIED = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = textwrap.dedent("""\
    25 22 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
    26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
    27 25 0:25 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,name=systemd
""")


@pytest.mark.parametrize("text, expected", [
    (UNIFIED, "/sys/fs/cgroup"),
    (HYBRID, "/sys/fs/cgroup/unified"),
    # a container's view of its own cgroup only (root not "/") comes before the real one
    ("40 30 0:26 /kubepods.slice/x /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
     "41 30 0:26 / /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "/host/sys/fs/cgroup"),
    ("50 30 0:26 / /mnt/cgroup\\040v2 rw - cgroup2 cgroup2 rw\n", "/mnt/cgroup v2"),   # mountinfo escapes
    # in a cgroup namespace (a pod): its own view is "/", the host's hierarchy climbs above it
    ("40 30 0:26 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
     "41 30 0:26 /../../.. /host/cgroup ro - cgroup2 cgroup2 rw\n", "/host/cgroup"),
    ("25 22 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
    ("", None),
])
def test_the_cgroup2_mount_is_read_from_mountinfo(text, expected):
    assert cgroups.cgroup2_mount(text) == expected


@pytest.mark.parametrize("path, expected", [
    (f"/system.slice/docker-{HEX}.scope", HEX),                                   # docker, systemd driver
    (f"/docker/{HEX}", HEX),                                                      # docker, cgroupfs driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-{HEX}.scope", HEX),
    (f"/kubepods/burstable/pod0f1e2d3c-aaaa-bbbb-cccc-000000000000/{HEX}", HEX),     # kubelet, cgroupfs driver
    (f"/kubepods.slice/kubepods-pod1.slice/crio-{HEX}.scope", HEX),               # CRI-O
    (f"/machine.slice/libpod-{HEX}.scope", HEX),                                 # podman
    (f"/machine.slice/libpod-{HEX}.scope/container", HEX),                       # ... with its own sub-cgroup
    (f"/libpod_parent/libpod-{HEX}", HEX),                                        # podman, cgroupfs driver
    (f"/system.slice/docker-{HEX}.scope/kubepods/besteffort/pod1/{OTHER}", OTHER),   # nested: the innermost
    (f"/kubepods.slice/kubepods-pod1.slice/crio-conmon-{HEX}.scope", None),       # the monitor, not the container
    (f"/machine.slice/libpod-conmon-{HEX}.scope", None),
    (f"/system.slice/{HEX}", None),                                               # a bare id elsewhere: no
    (f"/system.slice/docker-{HEX[:-1]}.scope", None),                             # 63 digits
    (f"/system.slice/docker-{HEX.upper()}.scope", None),
    ("/system.slice/nginx.service", None),
    ("/", None),
    (None, None),
])
def test_container_ids_in_cgroup_paths(path, expected):
    assert cgroups.container_id(path) == expected


@pytest.fixture
def tree(tmp_path):
    """A directory tree standing for a cgroup2 mount, and a fake /proc."""
    root = tmp_path / "cg"
    for rel in ("system.slice/nginx.service", f"system.slice/docker-{HEX}.scope", "user.slice"):
        (root / rel).mkdir(parents=True)
    proc = tmp_path / "proc"
    proc.mkdir()
    return root, proc


def _id(root, rel: str) -> int:
    return os.stat(f"{root}{rel}").st_ino


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_resolve_gives_ids_of_paths_that_exist_and_names_the_others(tree):
    root, _ = tree
    ids, missing = cgroups.resolve(("/system.slice", "/nope", "/system.slice/nginx.service", "/"), str(root))
    assert ids == (_id(root, "/system.slice"), _id(root, "/system.slice/nginx.service"), _id(root, ""))
    assert missing == ("/nope",)
    (root / "afile").write_text("")
    assert cgroups.resolve(("/afile",), str(root)) == ((), ("/afile",))      # not a cgroup (directory)


def test_names_scan_on_a_miss_at_most_once_per_interval(tree):
    root, proc = tree
    clock = Clock()
    names = cgroups.Names(str(root), interval_s=1.0, clock=clock, proc=str(proc))
    nginx = _id(root, "/system.slice/nginx.service")
    assert names.path(nginx) == "/system.slice/nginx.service" and names.scans == 1
    assert names.path(_id(root, "")) == "/"
    assert names.path(_id(root, f"/system.slice/docker-{HEX}.scope")) == f"/system.slice/docker-{HEX}.scope"
    assert names.scans == 1                               # all known from the one scan
    (root / "late").mkdir()
    late = _id(root, "/late")
    assert names.path(late) is None and names.scans == 1  # too soon after the last scan
    clock.now += 0.5
    assert names.path(late) is None and names.scans == 1
    clock.now += 0.6
    assert names.path(late) == "/late" and names.scans == 2
    assert names.path(999_999_999) is None and names.scans == 2    # unknown: not looked for again so soon
    clock.now += 1.1
    assert names.path(999_999_999) is None and names.scans == 3


def test_names_of_removed_cgroups_are_kept_until_the_scan_after_next(tree):
    root, proc = tree
    clock = Clock()
    names = cgroups.Names(str(root), interval_s=1.0, clock=clock, proc=str(proc))
    user = _id(root, "/user.slice")
    assert names.path(user) == "/user.slice"
    (root / "user.slice").rmdir()
    for expected in ("/user.slice", None):     # still named after the next scan, forgotten after the one after
        clock.now += 2
        names.path(123_456_789)                             # a miss: a rescan
        assert names.path(user) == expected


def test_names_ask_the_process_first_and_check_its_answer(tree):
    root, proc = tree
    clock = Clock()
    names = cgroups.Names(str(root), interval_s=1.0, clock=clock, proc=str(proc))
    (proc / "42").mkdir()
    (proc / "42" / "cgroup").write_text("9:name=systemd:/\n0::/system.slice/nginx.service\n")
    assert names.path(_id(root, "/system.slice/nginx.service"), 42) == "/system.slice/nginx.service"
    assert names.scans == 0                                       # the process said where: no scan
    # the process moved since (its answer names another cgroup): the scan decides
    assert names.path(_id(root, "/user.slice"), 42) == "/user.slice" and names.scans == 1


def test_names_keep_at_most_their_limit(tree):
    root, proc = tree
    for i in range(20):
        (root / f"many-{i}").mkdir()
    names = cgroups.Names(str(root), interval_s=1.0, limit=8, clock=Clock(), proc=str(proc))
    names.path(1)
    assert len(names._paths) <= 8


# ------------------------------------------------------------------ the profile

PROFILE = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: p}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      filters:
        cgroups:
          - /system.slice
          - {bad}
"""


@pytest.mark.parametrize("bad", ["system.slice", "/a/../b", "/a/./b", "/x/", "//y", "''", "/" + "/a" * 32,
                                 "/a//b"])
def test_bad_cgroup_paths_are_errors_naming_file_line_and_field(bad):
    with pytest.raises(errors.ProfileError) as exc:
        load.load_text(PROFILE.format(bad=bad), "p.yaml")
    (issue,) = exc.value.issues
    assert (issue.file, issue.line, issue.field) == ("p.yaml", 12, "spec.targets[0].filters.cgroups[1]")
    assert "cgroup path" in issue.message


def test_good_cgroup_paths_load_with_their_places():
    p = load.load_text(PROFILE.format(bad="/kubepods.slice/kubepods-pod1.slice"), "p.yaml")
    t = p.targets[0]
    assert t.filters.cgroups == ("/system.slice", "/kubepods.slice/kubepods-pod1.slice")
    assert t.mark("filters.cgroups[1]") == (12, 13)


def _cg_target(*paths):
    return dataclasses.replace(WEB, filters=models.Filters(cgroups=paths))


def test_plan_resolves_the_paths_and_a_missing_one_matches_nothing(tree):
    root, _ = tree
    resolve = lambda paths: cgroups.resolve(paths, str(root))      # noqa: E731
    (ps,), failed = build.plan_profile(_profile(_cg_target("/system.slice", "/later")), resolve=fake_resolve,
                                       resolve_cgroups=resolve)
    assert not failed
    assert ps.cgroups == (_id(root, "/system.slice"),) and ps.cgroups_missing == ("/later",)
    (none,), _ = build.plan_profile(_profile(_cg_target("/later")), resolve=fake_resolve, resolve_cgroups=resolve)
    assert '"cgroups": []' in none.filter_conf                     # on, with nothing to match yet
    (off,), _ = build.plan_profile(_profile(WEB), resolve=fake_resolve, resolve_cgroups=resolve)
    assert '"cgroups": null' in off.filter_conf
    (everything,), _ = build.plan_profile(_profile(_cg_target("/")), resolve=fake_resolve, resolve_cgroups=resolve)
    assert '"cgroups": null' in everything.filter_conf               # the root holds every task
    # the cgroup filter is map values: the same program runs every value of it
    assert ps.program_key == off.program_key == none.program_key and ps.kernel_digest != none.kernel_digest


def test_cgroup_paths_never_reach_the_c():
    """The program is the same text with or without the filter: the ids are map values."""
    from orchestrator.bpf import hooks, render
    filtered = render.render("p", _cg_target("/system.slice/evil */ #include <x>", "/kubepods.slice"),
                             hooks.BUILTIN["openssl"][:5])
    plain = render.render("p", WEB, hooks.BUILTIN["openssl"][:5])
    assert filtered.text == plain.text and filtered.digest == plain.digest
    assert "kubepods" not in filtered.text and "evil" not in filtered.text
    assert "if (fc->cgroups && !cgroup_wanted(fc)) return 0;" in filtered.text
    assert "bpf_get_current_ancestor_cgroup_id(level)" in filtered.text
    with pytest.raises(ValueError):
        render.lane_values(_cg_target("/a"), ("12",))              # ids are ints, nothing else
    with pytest.raises(ValueError):
        render.lane_values(_cg_target("/a"), (1 << 64,))


def test_a_cgroup_that_appears_changes_the_probe_set(tree, monkeypatch):
    root, _ = tree
    monkeypatch.setattr(cgroups, "mount", lambda: str(root))
    (ps,), _ = build.plan_profile(_profile(_cg_target("/later")), resolve=fake_resolve)
    assert not ps.cgroups_changed()
    (root / "later").mkdir()
    assert ps.cgroups_changed()
    (again,), _ = build.plan_profile(_profile(_cg_target("/later")), resolve=fake_resolve)
    assert again.cgroups == (_id(root, "/later"),) and not again.cgroups_changed()
    assert again.kernel_digest != ps.kernel_digest                    # the reconciler switches to it


# ------------------------------------------------------------------ header and records

def _raw(cgroup: int, *, tid=100, payload=b"hello") -> bytes:
    addr = b"\x7f\0\0\x01" + b"\0" * 12
    return layout.HEADER.pack(
        1_000, 0, 0xabc, 0, *(0,) * 6, 100, tid, 33, 5, len(payload), len(payload), 1, layout.RECORD_DATA,
        layout.DIR_READ, 0, 1, 2, 443, 40000, 0, addr, addr, b"nginx".ljust(16, b"\0"), cgroup) + payload


def test_the_header_ends_with_the_cgroup_id():
    assert layout.C_OFFSETS["cgroup"] == 168 and layout.HEADER_SIZE == 176
    big = (1 << 64) - 1
    ev = events.decode(_raw(big), None)            # compiled or Python, whichever runs here
    assert ev.cgroup == big and ev.payload == b"hello" and ev.comm == "nginx"
    saved = events._NATIVE_READS
    events._NATIVE_READS = False        # the struct path too (the compiled one is the first, when built)
    try:
        assert events.decode(_raw(12345), None).cgroup == 12345
    finally:
        events._NATIVE_READS = saved


@pytest.fixture
def named(tree, monkeypatch):
    root, proc = tree
    monkeypatch.setattr(cgroups, "NAMES", cgroups.Names(str(root), proc=str(proc), clock=Clock()))
    return root


def test_records_carry_the_cgroup_path_and_container_id(named):
    root = named
    encode = msgspec.json.Encoder().encode
    ps = _probe_set()
    conn = (("127.0.0.1", 443), ("127.0.0.1", 40000))
    plain = events.Record("data", events.decode(_raw(_id(root, "/system.slice/nginx.service")), ps), {"a": 1}, conn)
    d = plain.to_dict()
    assert d["cgroup"] == "/system.slice/nginx.service" and "container_id" not in d
    assert list(d)[:11] == ["type", "ts", "seq", "profile", "target", "pid", "tid", "comm", "uid", "cgroup", "conn"]
    docker = events.decode(_raw(_id(root, f"/system.slice/docker-{HEX}.scope")), ps)
    d = events.Record("data", docker, {"a": 1}, conn).to_dict()
    assert (d["cgroup"], d["container_id"]) == (f"/system.slice/docker-{HEX}.scope", HEX)
    gone = events.Record("data", events.decode(_raw(987_654_321), ps), {"a": 1}, conn).to_dict()
    assert "cgroup" in gone and gone["cgroup"] is None and "container_id" not in gone
    unknown = events.Record("data", events.decode(_raw(0), ps), {"a": 1}, conn).to_dict()
    assert "cgroup" not in unknown                  # the kernel reported none
    # to_json's per-connection prefix: the same bytes as the dict, and the cgroup is part of its key
    for r in (plain, events.Record("data", docker, {"a": 1}, conn)):
        assert r.to_json(encode) == encode(r.to_dict())
    assert b'"container_id"' in events.Record("data", docker, {"a": 2}, conn).to_json(encode)
    assert b'"container_id"' not in events.Record("data", plain.event, {"a": 2}, conn).to_json(encode)


def test_a_thread_that_moves_between_cgroups_gets_its_new_cgroup(named):
    """The connection's prefix memo (ConnectionWorker._prefix) keys on the cgroup too."""
    from orchestrator.pipeline import dispatch
    root = named
    encode = msgspec.json.Encoder().encode
    lines = []

    class Sink:
        def write(self, records):
            lines.extend(r.to_json(encode) for r in records)

    d = dispatch.Dispatcher(lambda _p: [Sink()])
    ps = _probe_set()
    first, second = _id(root, "/user.slice"), _id(root, f"/system.slice/docker-{HEX}.scope")
    request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    d.process([events.decode(_raw(first, payload=request), ps), events.decode(_raw(second, payload=request), ps)])
    d.flush_all()
    got = [msgspec.json.decode(line) for line in lines]
    assert [r["type"] for r in got] == ["http.request", "http.request"]
    assert [r["cgroup"] for r in got] == ["/user.slice", f"/system.slice/docker-{HEX}.scope"]
    assert [r.get("container_id") for r in got] == [None, HEX]
