"""`make demo` end to end: nginx over TLS captured in plaintext, then two live profile edits."""
from __future__ import annotations

import os
import re
import subprocess

from tests.kernel.conftest import ROOT


def test_demo_captures_and_applies_live_edits():
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "demo" / "run.py")],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for path in ("GET / HTTP/1.1", "POST /post HTTP/1.1", "GET /echo?keep=alive", "GET /static/hello.txt",
                 "GET /captured-again HTTP/1.1"):
        assert path in out, path
    assert "GET /not-captured" not in out          # served while the comm filter matched nothing
    # Both edits are map writes in the running program (no compile).
    assert len(re.findall(r"replaced web \(gen \d+, express lane, no compile\)", out)) == 2, out
    assert "losses: 0" in out and "Traceback" not in out
