"""Help text reads as prose: paragraphs after the first are not broken where the source wraps."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="200", TERM="dumb", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--help"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_later_paragraphs_of_a_command_help_are_one_line_each():
    text = _help("plan")
    # The second paragraph wraps in the source after "(asked over its": it must not here.
    line = next(ln for ln in text.splitlines() if "Changes are per target" in ln)
    assert "control socket): targets to add, remove or replace." in line, text
