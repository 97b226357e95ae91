"""`binary:` a program that loads libssl only at run time (python3's _ssl module) and is not
running when `apply` starts: it is captured from its first TLS write once it runs.

Before, planning failed ("no libssl* among its DT_NEEDED and no running instance maps one") and
the target stayed down until someone edited the profile. A private copy of the interpreter makes
sure no instance runs at start (pytest itself is a python3.11).
"""
from __future__ import annotations

import shutil
import subprocess

from tests.kernel.test_reload import GENERATOR, cert  # noqa: F401  (fixture)


def test_program_started_after_apply_is_captured_from_its_first_write(apply_profile, cert, tmp_path):  # noqa: F811
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    shutil.copy("/usr/bin/python3.11", python)
    text = f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: late}}
spec:
  targets:
    - name: py
      kind: openssl
      binary: {python}
  parsers: []
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""
    with apply_profile(text) as cap:
        assert "target not started" not in cap.stderr, cap.stderr
        out = subprocess.run([str(python), GENERATOR, "--comm", "late-py", "--count", "50", "--interval", "0",
                              "--cert", cert[0], "--key", cert[1]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert cap.wait_for(lambda rs: sum(r.get("comm") == "late-py" and r.get("direction") == "write"
                                           for r in rs) >= 50, 15), cap.stderr
    writes = [r["data"] for r in cap.records("data") if r["comm"] == "late-py" and r["direction"] == "write"]
    assert writes == [f"wlate-py:{i:08d}\n" for i in range(50)]      # from the very first one
