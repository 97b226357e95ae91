"""`apply` on a folder that also holds hostile files: they are reported, never stop the start, and
the good profile beside them captures. (Before, one such file raised in the first, unguarded
reconcile pass, under the runtime lock, and `apply` did not start.)"""
from __future__ import annotations

import os

from tests.kernel.test_reload import Generator, _wait_file_has, apply_dir, cert, profile  # noqa: F401


def test_hostile_files_beside_a_good_profile(cert, tmp_path, apply_dir):  # noqa: F811
    d = tmp_path / "profiles"
    d.mkdir()
    out = tmp_path / "good.jsonl"
    (d / "good.yaml").write_text(profile("good", ["hostile-ok"], jsonl=str(out)))
    (d / "big.yaml").write_bytes(b"# " + b"x" * (2 << 20))                        # over the size cap
    (d / "deep.yaml").write_text("a: " + "[" * 500 + "]" * 500 + "\n")          # RecursionError before
    (d / "bell.yaml").write_bytes(b"apiVersion: ecapture/v1\x07\x1b[2J\n")        # ReaderError before
    (d / "octal.yaml").write_text(profile("octal", ["x"], ", ports: [0443]", jsonl=str(tmp_path / "o.jsonl")))
    (d / "wide.yaml").write_text(profile("wide", ["x"], jsonl=str(tmp_path / "w.jsonl")))
    os.chmod(d / "wide.yaml", 0o666)                                              # untrusted
    os.mkfifo(d / "fifo.yaml")                                                    # hung forever before
    (d / "shadow.yaml").symlink_to("/etc/shadow")
    gen = Generator(cert, "hostile-ok", 0, 0.002)
    try:
        with apply_dir(d) as cap:
            assert _wait_file_has(out, "whostile-ok:"), cap.stderr
            err = cap.stderr
        assert "Traceback" not in err and "\x1b" not in err and "\x07" not in err
        for name, message in (("big.yaml", "file too large"), ("deep.yaml", "nested too deeply"),
                              ("octal.yaml", "0443"), ("wide.yaml", "writable by"),
                              ("shadow.yaml", "not a *.yaml/*.yml file")):
            assert any(name in ln and message in ln for ln in err.splitlines()), (name, err)
        assert "root:" not in err                   # nothing of /etc/shadow
        assert "stopped after" in cap.stderr and cap.returncode == 0
    finally:
        gen.kill()
