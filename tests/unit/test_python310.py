"""ecapture supports Python 3.10 (pyproject's requires-python; Ubuntu 22.04's python3), and this
machine has only 3.11: vermin reads every module and names the oldest Python that has each
module, function, keyword argument and syntax it uses (issue 14).

--eval-annotations: most modules say `from __future__ import annotations`, yet typer and msgspec
evaluate the annotations of CLI commands and Structs at run time, so they must work on 3.10 too.
A use that is guarded for 3.10 carries a `# novermin` comment saying so (cli.py: tomllib).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLDEST = (3, 10)


def test_code_and_tests_run_on_python_310():
    vermin = Path(sys.executable).parent / "vermin"
    proc = subprocess.run([str(vermin), "--no-tips", "--eval-annotations", "--violations",
                           f"--target={OLDEST[0]}.{OLDEST[1]}-", "orchestrator", "tests", "scripts"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"uses newer than Python {OLDEST}:\n{proc.stdout}{proc.stderr}"
    found = re.search(r"^Minimum required versions: (\d+)\.(\d+)$", proc.stdout, re.M)
    assert found, proc.stdout + proc.stderr
    assert (int(found[1]), int(found[2])) <= OLDEST
    # vermin really read the tree (a wrong folder would also be "compatible").
    files = int(re.search(r"^Analyzing (\d+) files", proc.stdout, re.M)[1])
    assert files >= len(list((ROOT / "orchestrator").rglob("*.py")))


def test_pyproject_says_310():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^requires-python = ">=3\.10"', text, re.M)
