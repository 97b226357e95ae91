"""Self-checks for the test helpers (needs root, nginx, curl, openssl, bash)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .nginx import BIG_SIZE, POST_BODY, ROOT_BODY, NginxServer, curl, pid_alive
from .pty_shell import PtyShell

needs_nginx = pytest.mark.skipif(
    not (os.path.exists("/usr/sbin/nginx") and shutil.which("curl") and shutil.which("openssl")),
    reason="nginx, curl and openssl are required",
)


@needs_nginx
@pytest.mark.parametrize("workers", [1, 2])
def test_nginx_basic(workers):
    with NginxServer(workers=workers) as srv:
        tmp = srv.tmpdir
        assert (tmp.stat().st_mode & 0o777) == 0o700
        assert srv.url == f"https://127.0.0.1:{srv.port}"
        assert srv.cert_path.exists()

        r = curl(srv.url + "/", "-w", "%{http_code}")
        assert r.returncode == 0, r.stderr
        assert r.stdout == ROOT_BODY + "200"

        r = curl(srv.url + "/big", "-o", "/dev/null", "-w", "%{http_code} %{size_download}")
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"200 {BIG_SIZE}"
        r = curl(srv.url + "/big", text=False)
        assert len(r.stdout) == BIG_SIZE

        r = curl(srv.url + "/static/hello.txt", "-w", "%{http_code}")
        assert r.stdout == "static hello\n200"

        r = curl(srv.url + "/post", "-d", "a=1&b=" + "x" * 5000, "-w", "%{http_code}")
        assert r.returncode == 0, r.stderr
        assert r.stdout == POST_BODY + "200"

        r = curl(srv.url + "/echo?q=1", "-w", "%{http_code}")
        assert r.stdout == "GET /echo?q=1 HTTP/1.1\n200"

        # keep-alive: five requests in one curl run, one TLS connection
        u = srv.url + "/"
        r = curl(u, u, u, u, u, "-w", "%{http_code} %{num_connects}\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout.count(ROOT_BODY) == 5
        codes = [line for line in r.stdout.splitlines() if line.startswith("200 ")]
        assert len(codes) == 5
        assert sum(int(c.split()[1]) for c in codes) == 1  # only the first connects

        workers_pids = srv.worker_pids()
        assert len(workers_pids) == workers
        for w in workers_pids:
            assert Path(f"/proc/{w}/comm").read_text().strip() == "nginx"
        master = srv.master_pid
        assert pid_alive(master)

    assert not pid_alive(master)
    assert all(not pid_alive(w) for w in workers_pids)
    assert not tmp.exists()


@needs_nginx
def test_nginx_http2_and_ec_key_and_access_log():
    with NginxServer(http2=True, key_type="ec", access_log=True) as srv:
        r = curl(srv.url + "/", "-w", "%{http_version}", http2=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == ROOT_BODY + "2"
        r = curl(srv.url + "/big", "-o", "/dev/null", "-w", "%{http_version} %{size_download}",
                 http2=True)
        assert r.stdout == f"2 {BIG_SIZE}"
        # http2=False forces HTTP/1.1 even against an h2-capable server
        r = curl(srv.url + "/", "-w", "%{http_version}")
        assert r.stdout == ROOT_BODY + "1.1"
        assert "GET / HTTP/2.0" in srv.access_log_path.read_text()


@needs_nginx
def test_nginx_restart_same_port_new_pids():
    with NginxServer() as srv:
        port, master, workers = srv.port, srv.master_pid, srv.worker_pids()
        srv.restart()
        assert srv.port == port and srv.master_pid != master
        assert not pid_alive(master) and all(not pid_alive(w) for w in workers)
        assert not set(srv.worker_pids()) & set(workers)
        r = curl(srv.url + "/", "-w", "%{http_code}")
        assert r.returncode == 0 and r.stdout == ROOT_BODY + "200", r.stderr


@needs_nginx
def test_nginx_fixed_port_conflict_reports_error_log():
    with NginxServer() as a:
        with pytest.raises(RuntimeError, match="error.log"):
            with NginxServer(port=a.port, startup_timeout=3):
                pass


def test_pty_shell_runs_commands():
    with PtyShell() as sh:
        pid = sh.pid
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "bash"
        out = sh.run("echo hello")
        assert "hello" in out
        assert out == "hello\n"
        assert sh.last_status == 0
        sh.run("false")
        assert sh.last_status == 1
        assert sh.run("tty").startswith("/dev/pts/")
        assert sh.run("echo $HISTFILE") == "/dev/null\n"
        # interactive shell with a controlling terminal, readline in use
        assert "i" in sh.run("echo $-")
        assert sh.run("[[ -o emacs ]] && echo rl") == "rl\n"
        # raw typing
        sh.send_line("echo raw-$((40+2))")
        sh.read_until(b"raw-42", timeout=5)
    assert not pid_alive(pid)


@needs_nginx
def test_nginx_retries_when_picked_port_is_taken(monkeypatch):
    from . import nginx as nginx_mod

    with NginxServer() as a:
        real = nginx_mod.free_port
        ports = iter([a.port])
        monkeypatch.setattr(nginx_mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host))
        with NginxServer() as b:
            assert b.port != a.port
            assert curl(b.url + "/").stdout == ROOT_BODY


def test_jsonl_reader_keeps_a_line_being_written_out_until_the_writer_stopped(tmp_path):
    from . import jsonl
    path = tmp_path / "out.jsonl"
    assert jsonl.read(path, finished=False) == []
    path.write_bytes(b'{"type":"data","seq":1}\n{"type":"data","se')
    assert jsonl.read(path, finished=False) == [{"type": "data", "seq": 1}]
    with pytest.raises(AssertionError, match="ends inside a line"):
        jsonl.read(path, finished=True)
    assert jsonl.parse('{"a":1}\n{"a":2}\n', finished=True) == [{"a": 1}, {"a": 2}]
