"""The wheel as a user installs it (issue 14): built from this tree, installed into a fresh venv
outside it, and `ecapture validate`, `render` and `plan` run from a directory outside the tree.
An installed validate used to fail with FileNotFoundError: the schema and the BPF C templates
were not in the wheel.

The fresh venv gets the wheel alone (--no-deps); its dependencies come from the project venv's
site-packages through a .pth line (no download), and bcc from Debian's through
--system-site-packages. A .pth line adds a folder without running the .pth files in it, so the
project's editable install is not active there: `orchestrator` can only come from the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "profiles" / "nginx-tls.yaml"
TEMPLATES = sorted(p.name for p in (ROOT / "orchestrator" / "templates" / "kern").iterdir())
UNKNOWN_FIELD = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: typo}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      max_byte: 4096
  sinks:
    - {type: stdout}
"""


def _run(args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tree so the build leaves nothing in it (build/, egg-info)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "orchestrator", src / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", ".compiled-digest"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "--no-index", "-w", out, src], cwd=src)
    (built,) = out.glob("ecapture-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv, outside the source tree, with the wheel installed."""
    venv = tmp_path_factory.mktemp("venv")
    assert not venv.is_relative_to(ROOT)
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=venv)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=venv).stdout.strip()
    Path(purelib, "ecapture-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--disable-pip-version-check",
          "--no-deps", "--no-index", wheel], cwd=venv)
    return venv


@pytest.fixture
def workdir(tmp_path) -> Path:
    shutil.copy2(EXAMPLE, tmp_path / EXAMPLE.name)
    return tmp_path


def test_wheel_holds_the_schema_and_every_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "orchestrator/schemas/profile.schema.json" in names
    assert {f"orchestrator/templates/kern/{t}" for t in TEMPLATES} <= names
    assert "probes.c.j2" in TEMPLATES and "common.h" in TEMPLATES


def test_installed_package_is_the_wheel_and_not_the_tree(venv, workdir):
    where = _run([venv / "bin" / "python", "-c", "import orchestrator.profile.load as l, orchestrator.bpf.render"
                  " as r; print(l.SCHEMA_PATH); print(r.KERN_DIR)"], cwd=workdir).stdout.split()
    assert len(where) == 2
    for path in map(Path, where):
        assert path.is_relative_to(venv) and path.exists(), where
    assert _run([venv / "bin" / "ecapture", "--version"], cwd=workdir).stdout.strip() == "ecapture 0.1.0"


def test_installed_validate_checks_the_schema(venv, workdir):
    ecapture = venv / "bin" / "ecapture"
    ok = _run([ecapture, "validate", EXAMPLE.name], cwd=workdir)
    assert f"{EXAMPLE.name}: ok (1 target(s))" in ok.stdout
    (workdir / "typo.yaml").write_text(UNKNOWN_FIELD)
    bad = _run([ecapture, "validate", "typo.yaml"], cwd=workdir, check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "typo.yaml:9" in bad.stdout + bad.stderr and "max_byte" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_installed_render_prints_the_program(venv, workdir):
    proc = _run([venv / "bin" / "ecapture", "render", EXAMPLE.name], cwd=workdir)
    # One entry and one return program per hook; event.h is pulled in by a Jinja include.
    for hook in range(5):
        assert f"int hook_{hook}_entry(struct pt_regs *ctx)" in proc.stdout
        assert f"int hook_{hook}_return(struct pt_regs *ctx)" in proc.stdout
    assert "static __always_inline struct event *event_start(" in proc.stdout
    assert '#include "shared.h"' in proc.stdout


def test_installed_plan_names_the_library(venv, workdir):
    proc = _run([venv / "bin" / "ecapture", "plan", EXAMPLE.name], cwd=workdir)
    assert "attach: /" in proc.stdout and "libssl.so" in proc.stdout
    assert "SSL_write" in proc.stdout
