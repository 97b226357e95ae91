"""A library replaced on disk (new inode, as a package upgrade writes it) is re-attached by itself.

Uprobes live on an inode: after `dpkg` renames a new libssl over the old one, processes started
since map the new file and an untouched apply would capture none of them. Here a copy of libssl
is the target's `library:`; writers load it through LD_LIBRARY_PATH; the copy is replaced by
rename while apply runs; a writer started afterwards must be captured without any edit, and
`status` must show the new inode.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests.kernel.test_reload import GENERATOR, LIBSSL, PYTHON, _target_status, _wait_for, cert  # noqa: F401


def _writer(cert, comm: str, libdir: str) -> subprocess.Popen:  # noqa: F811
    proc = subprocess.Popen([PYTHON, GENERATOR, "--comm", comm, "--count", "0", "--interval", "0.01",
                             "--cert", cert[0], "--key", cert[1]],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "LD_LIBRARY_PATH": libdir})
    assert proc.stdout.readline().startswith("ready ")
    return proc


def _maps(pid: int, path: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return path in f.read()


def test_library_replaced_on_disk_is_reattached(apply_profile, cert, tmp_path):  # noqa: F811
    libdir = tmp_path / "lib"
    libdir.mkdir()
    lib = libdir / "libssl.so.3"
    shutil.copy(LIBSSL, lib)
    text = f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: upgrade}}
spec:
  targets:
    - name: gen
      kind: openssl
      library: {lib}
      filters: {{comm: [old-lib, new-lib]}}
  parsers: []
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""
    writers = []
    try:
        with apply_profile(text) as cap:
            writers.append(_writer(cert, "old-lib", str(libdir)))
            assert _maps(writers[0].pid, str(lib))
            assert cap.wait_for(lambda rs: any(r.get("comm") == "old-lib" for r in rs), 20), cap.stderr
            before = _target_status("upgrade")
            shutil.copy(LIBSSL, libdir / "libssl.so.3.dpkg-new")
            os.rename(libdir / "libssl.so.3.dpkg-new", lib)          # what the package manager does
            new_inode = os.stat(lib).st_ino
            assert new_inode != before["library_inode"]
            assert _wait_for(lambda: _target_status("upgrade")["library_inode"] == new_inode, 20), cap.stderr
            writers.append(_writer(cert, "new-lib", str(libdir)))
            assert cap.wait_for(lambda rs: any(r.get("comm") == "new-lib" for r in rs), 20), cap.stderr
            assert "replaced gen" in cap.stderr
            time.sleep(0.2)
        assert "Traceback" not in cap.stderr
    finally:
        for w in writers:
            w.kill()
            w.wait()
