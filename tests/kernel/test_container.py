"""A container's TLS traffic, captured by a profile that names its files as the container sees them.

The container (tests/support/container.py) is built from namespaces, no Docker: a private root with
its own copies of python3.11, libssl and libcrypto (other inodes than the host's), entered with
unshare + chroot, in a cgroup of its own. The profile names `binary: /usr/bin/python3`, which in the
container is its copy: only by resolving it inside /proc/PID/root do the uprobes land in the
libssl the container runs. The host's python, talking to the same nginx at the same time, maps
the host's libssl and is outside the target's processes: none of its traffic may appear.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.kernel.conftest import ECAPTURE
from tests.support.container import NamespaceContainer

# Started before the capture (ssl imported, so libssl is mapped); one HTTPS request per path read
# from stdin, the status line of each answer printed.
CLIENT = r"""
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
port = int(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    path = line.strip()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    print(data.split(b"\r\n", 1)[0].decode(), flush=True)
"""

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: container}}
spec:
  targets:
    - name: contained
      kind: openssl
      binary: {binary}
      filters:
        {scope}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def _scope(ctr: NamespaceContainer, pid: int, by: str = "pids") -> str:
    return f"pids: [{pid}]" if by == "pids" else f"cgroups: [{ctr.cgroup}]"


@pytest.fixture
def container(tmp_path, nginx_server):
    """The container, its python client started and waiting for paths: (container, client, host pid)."""
    with NamespaceContainer(tmp_path / "ctr") as ctr:
        client = ctr.python("-c", CLIENT, str(nginx_server.port), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
        pid = ctr.wait_for_python()
        assert client.stdout.readline().strip() == "ready", client.stderr.read()
        yield ctr, client, pid


def _ask(client: subprocess.Popen, path: str) -> str:
    client.stdin.write(path + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def _host_python(port: int, paths: list[str]) -> subprocess.Popen:
    script = CLIENT.replace('print("ready", flush=True)\n', "")
    proc = subprocess.Popen(["/usr/bin/python3.11", "-I", "-S", "-c", script, str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdin.write("".join(p + "\n" for p in paths))
    proc.stdin.close()
    return proc


@pytest.mark.parametrize("by", ["pids", "cgroups"])
def test_plan_resolves_the_binary_in_the_containers_root(container, tmp_path, by):
    ctr, _client, pid = container
    path = tmp_path / "plan.yaml"
    path.write_text(PROFILE.format(binary="/usr/bin/python3", scope=_scope(ctr, pid, by))
                    .replace("{jsonl}", "out.jsonl"))
    out = subprocess.run([ECAPTURE, "plan", "--json", str(path)], capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    target = doc["profiles"][0]["targets"][0]
    assert target["ok"], target
    attach = target["attach"]
    assert attach["namespace"]["pid"] == pid
    assert attach["namespace"]["mnt"] == os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert attach["namespace"]["path"] == "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    assert attach["path"] == f"/proc/{pid}/root/usr/lib/x86_64-linux-gnu/libssl.so.3"
    copy = os.stat(ctr.root / "usr/lib/x86_64-linux-gnu/libssl.so.3")
    assert (os.stat(attach["path"]).st_ino, os.stat(attach["path"]).st_dev) == (copy.st_ino, copy.st_dev)
    assert copy.st_ino != os.stat("/usr/lib/x86_64-linux-gnu/libssl.so.3").st_ino
    assert ("uprobes attached for the listed pids only" if by == "pids" else
            "the uprobes fire in every process that maps this file") in attach["how"]
    assert "/usr/bin/python3" in target["scope"]       # the exec path the container's processes use
    text = subprocess.run([ECAPTURE, "plan", str(path)], capture_output=True, text=True, timeout=120).stdout
    assert f"resolved in the mount namespace of pid {pid}" in text


def test_a_path_missing_in_the_container_is_a_field_error(container, tmp_path):
    ctr, _client, pid = container
    path = tmp_path / "missing.yaml"
    path.write_text(PROFILE.format(binary="/usr/bin/python3", scope=_scope(ctr, pid)).replace(
        "      binary:", "      library: /opt/only-on-the-host/libssl.so.3\n      binary:").replace("{jsonl}", "o.jsonl"))
    out = subprocess.run([ECAPTURE, "plan", "--json", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    error = json.loads(out.stdout)["profiles"][0]["targets"][0]["error"]
    assert error["field"] == "spec.targets[0].library" and error["line"] == 9
    assert f"no such file in the mount namespace of pid {pid}" in error["message"]


@pytest.mark.parametrize("by", ["pids", "cgroups"])
def test_the_containers_tls_is_captured_and_the_hosts_python_is_not(container, apply_profile, nginx_server, by):
    ctr, client, pid = container
    profile = PROFILE.format(binary="/usr/bin/python3", scope=_scope(ctr, pid, by))
    with apply_profile(profile) as cap:
        host = _host_python(nginx_server.port, [f"/host/{i}" for i in range(3)])
        for i in range(3):
            assert _ask(client, f"/contained/{i}") == "HTTP/1.1 200 OK"
        assert host.wait(timeout=60) == 0
        # Last, after the host's python is done: one ordered ring buffer, so once its answer is in
        # the file, so would be any record of the host's requests.
        assert _ask(client, "/contained/last") == "HTTP/1.1 200 OK"
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 4, timeout=20), cap.stderr
    requests = cap.records("http.request")
    assert [r["path"] for r in requests] == [f"/contained/{i}" for i in range(3)] + ["/contained/last"]
    assert {r["pid"] for r in cap.records()} == {pid}
    assert {r["cgroup"] for r in cap.records()} == {ctr.cgroup}
    assert not [r for r in cap.records() if "/host/" in json.dumps(r)]


def test_a_scope_with_a_host_process_resolves_on_the_host_and_says_so(container, tmp_path):
    ctr, _client, pid = container
    path = tmp_path / "mixed.yaml"
    path.write_text(PROFILE.format(binary="/usr/bin/python3", scope=f"pids: [{pid}, {os.getpid()}]")
                    .replace("{jsonl}", "o.jsonl"))
    doc = json.loads(subprocess.run([ECAPTURE, "plan", "--json", str(path)], capture_output=True, text=True,
                                    timeout=120).stdout)
    attach = doc["profiles"][0]["targets"][0]["attach"]
    assert attach["namespace"] is None and not attach["path"].startswith("/proc/")
    assert f"resolved in this host's mount namespace, where pid {os.getpid()} runs" in attach["how"]
    assert f"1 other mount namespace(s) (pid {pid})" in attach["how"]


def test_two_containers_with_the_program_are_an_error_naming_filters(container, tmp_path, nginx_server):
    ctr, _client, pid = container
    with NamespaceContainer(tmp_path / "ctr2") as other:
        other.python("-c", "import sys; sys.stdin.read()", stdin=subprocess.PIPE)
        pid2 = other.wait_for_python()
        path = tmp_path / "two.yaml"
        path.write_text(PROFILE.format(binary="/usr/bin/python3", scope=f"pids: [{pid}, {pid2}]")
                        .replace("{jsonl}", "o.jsonl"))
        out = subprocess.run([ECAPTURE, "plan", "--json", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    error = json.loads(out.stdout)["profiles"][0]["targets"][0]["error"]
    assert error["field"] == "spec.targets[0].filters" and error["line"] == 11     # where its value starts
    assert "2 mount namespaces" in error["message"] and "one target attaches to one file" in error["message"]
