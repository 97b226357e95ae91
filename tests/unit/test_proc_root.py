"""Paths resolved inside a process's root (orchestrator/bpf/procroot.py): a temp dir stands in for a
container's root; its symlinks are hostile and must never lead to this host's files. No root needed."""
from __future__ import annotations

import os
import struct
import subprocess

import pytest

from orchestrator.bpf import discovery, procroot
from orchestrator.profile import models


@pytest.fixture
def root(tmp_path):
    """A small container root: merged /usr, a versioned library, and a host file of the same name
    next to it that no path inside may reach."""
    r = tmp_path / "root"
    for d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "etc", "data"):
        (r / d).mkdir(parents=True)
    os.symlink("usr/bin", r / "bin")
    os.symlink("usr/lib", r / "lib")
    (r / "usr/bin/python3.11").write_text("inside python")
    os.symlink("python3.11", r / "usr/bin/python3")
    (r / "usr/lib/x86_64-linux-gnu/libssl.so.3").write_text("inside libssl")
    (tmp_path / "secret").write_text("host file")
    (r / "etc/passwd").write_text("inside passwd")
    return r


def test_relative_links_and_merged_usr_resolve_inside(root):
    inside, identity, _ = procroot.walk(str(root), "/bin/python3")
    assert inside == "/usr/bin/python3.11"
    st = os.stat(root / "usr/bin/python3.11")
    assert identity == (st.st_dev, st.st_ino)
    assert procroot.walk(str(root), "/lib/x86_64-linux-gnu/../x86_64-linux-gnu/./libssl.so.3")[0] == \
        "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def test_an_absolute_link_names_the_containers_file_never_the_hosts(root):
    os.symlink("/etc/passwd", root / "data/passwd")
    inside, identity, _ = procroot.walk(str(root), "/data/passwd")
    assert inside == "/etc/passwd"
    st = os.stat(root / "etc/passwd")
    assert identity == (st.st_dev, st.st_ino) != (os.stat("/etc/passwd").st_dev, os.stat("/etc/passwd").st_ino)


def test_dot_dot_stops_at_the_root(root, tmp_path):
    os.symlink("../../../../secret", root / "data/up")
    with pytest.raises(procroot.RootError) as exc:
        procroot.walk(str(root), "/data/up", "library")
    assert exc.value.field == "library" and "/secret" in exc.value.message and "no such file" in exc.value.message
    (root / "secret").write_text("the container's own")
    inside, identity, _ = procroot.walk(str(root), "/../../data/up")
    assert inside == "/secret" and identity[1] == os.stat(root / "secret").st_ino != os.stat(tmp_path / "secret").st_ino


def test_a_link_to_a_host_path_that_exists_only_on_the_host_is_missing_inside(root, tmp_path):
    os.symlink(str(tmp_path / "secret"), root / "data/host")       # absolute: means the container's own path
    with pytest.raises(procroot.RootError, match="no such file"):
        procroot.walk(str(root), "/data/host", "binary")


def test_link_loops_end_with_an_error_not_a_hang(root):
    os.symlink("b", root / "data/a")
    os.symlink("a", root / "data/b")
    with pytest.raises(procroot.RootError, match="more than 40 symbolic links"):
        procroot.walk(str(root), "/data/a", "binary")


def test_a_file_used_as_a_folder_is_reported(root):
    with pytest.raises(procroot.RootError, match="not a directory"):
        procroot.walk(str(root), "/etc/passwd/x", "binary")
    with pytest.raises(procroot.RootError, match="not an absolute path"):
        procroot.walk(str(root), "usr/bin/python3", "binary")


def test_locate_through_our_own_root_gives_a_path_under_proc_pid_root():
    ns = procroot.Namespace(os.getpid(), procroot.mount_ns("self"))
    host = procroot.locate(ns, "/usr/bin/python3", "binary")
    assert host == f"/proc/{os.getpid()}/root" + os.path.realpath("/usr/bin/python3")
    assert ns.inside(host) == os.path.realpath("/usr/bin/python3")
    with pytest.raises(procroot.RootError) as exc:
        procroot.locate(ns, "/usr/bin", "binary")
    assert "not a regular file" in exc.value.message
    with pytest.raises(procroot.RootError) as exc:
        procroot.locate(procroot.Namespace(2 ** 22 + 7, "mnt:[0]"), "/usr/bin/python3", "binary")
    assert "has the process exited?" in exc.value.message


def test_the_hosts_loader_cache_parses_as_ldconfig_prints_it():
    with open("/etc/ld.so.cache", "rb") as f:
        cache = procroot.parse_ld_cache(f.read())
    printed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    listed = [line.strip().partition(" ") for line in printed.splitlines() if "=>" in line]
    assert len(listed) > 50
    for name, _, rest in listed:
        assert name in cache, name
    every: dict = {}
    for name, _, rest in listed:
        every.setdefault(name, []).append(rest.split("=>", 1)[1].strip())
    assert every == {name: list(paths) for name, paths in cache.items()}
    assert "libc.so.6" in cache and os.path.exists(cache["libc.so.6"][0])


def test_a_hostile_loader_cache_yields_nothing_out_of_bounds():
    header = struct.pack("<20sIIB3xI12x", procroot.CACHE_MAGIC, 1_000_000, 0, 0, 0)
    entry = struct.pack("<iIIIQ", 0x303, 10_000_000, 2, 0, 0)       # name offset far past the end
    assert procroot.parse_ld_cache(header + entry + b"\0" * 8) == {}
    strings = b"libx.so.1\0/lib/libx.so.1\0"
    base = len(header) + 24
    good = struct.pack("<iIIIQ", 0x303, base, base + 10, 0, 0)
    assert procroot.parse_ld_cache(header + good + strings) == {"libx.so.1": ("/lib/libx.so.1",)}
    assert procroot.parse_ld_cache(b"garbage") == {}


def test_a_target_of_processes_in_our_namespace_resolves_as_before():
    target = models.Target("py", "openssl", binary="/usr/bin/python3",
                           filters=models.Filters(pids=(os.getpid(),)))
    assert procroot.namespace_for(target.filters, ("/usr/bin/python3",)) == (None, "")
    res = discovery.resolve(target)
    assert res.namespace is None and not res.attach_path.startswith("/proc/")


def test_resolution_inside_a_root_attaches_through_proc_pid_root():
    # Our own root through /proc/PID/root: the machinery a container's target goes through.
    ns = procroot.Namespace(os.getpid(), procroot.mount_ns("self"))
    res = discovery._resolve_in_root(models.Target("py", "openssl", binary="/usr/bin/python3"), ns)
    assert res.attach_path.startswith(f"/proc/{os.getpid()}/root/") and res.attach_path.endswith("/libssl.so.3")
    assert res.inside_path == ns.inside(res.attach_path) and os.path.samefile(res.inside_path, res.attach_path)
    assert res.namespace == ns and f"pid {os.getpid()}" in res.how and "every process that maps" in res.how
    assert "/usr/bin/python3" in res.scope_paths and os.path.realpath("/usr/bin/python3") in res.scope_paths
    assert not any(p.startswith("/proc/") for p in res.scope_paths)    # what the container's exec sees
    assert os.path.samefile(res.scope_real, "/usr/bin/python3")


def test_a_path_missing_inside_the_root_names_the_field():
    ns = procroot.Namespace(os.getpid(), procroot.mount_ns("self"))
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery._resolve_in_root(models.Target("py", "openssl", binary="/usr/bin/python3",
                                                 library="/nowhere/libssl.so.3"), ns)
    assert exc.value.field == "library" and "no such file in the mount namespace of pid" in exc.value.message


def test_a_cgroups_processes_include_those_of_every_cgroup_under_it(tmp_path):
    mount = tmp_path / "cgroup2"
    (mount / "kubepods.slice/pod-a").mkdir(parents=True)
    (mount / "other").mkdir()
    (mount / "kubepods.slice/cgroup.procs").write_text("10\n")
    (mount / "kubepods.slice/pod-a/cgroup.procs").write_text("11\n12\n")
    (mount / "other/cgroup.procs").write_text("99\n")
    assert sorted(procroot.cgroup_pids("/kubepods.slice", str(mount))) == [10, 11, 12]
    assert procroot.cgroup_pids("/kubepods.slice/../other", str(mount)) == []     # no way out by `..`
    assert procroot.cgroup_pids("/absent", str(mount)) == []
