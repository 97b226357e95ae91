"""The `ecapture` command without root: help, validate, render, plan (subprocesses, no BPF loaded)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ECAPTURE = ROOT / ".venv" / "bin" / "ecapture"
EXAMPLE = "profiles/nginx-tls.yaml"


def run(*args, cwd=ROOT):
    proc = subprocess.run([str(ECAPTURE), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_top_level_help_lists_every_command():
    proc = run("--help")
    assert proc.returncode == 0
    for command in ("apply", "validate", "render", "plan"):
        assert command in proc.stdout


def test_no_arguments_shows_help():
    proc = run()
    assert "Usage" in proc.stdout + proc.stderr
    assert proc.returncode in (0, 2)


@pytest.mark.parametrize("command, purpose", [
    ("validate", "Check profiles"),
    ("validate", "exits 1"),
    ("render", "exact BPF C"),
    ("plan", "would attach"),
    ("apply", "attach every target"),
    ("apply", "Needs root"),
])
def test_command_help(command, purpose):
    proc = run(command, "--help")
    assert proc.returncode == 0
    assert f"ecapture {command}" in proc.stdout
    assert purpose in _flat(proc.stdout)


def test_validate_examples_directory():
    proc = run("validate", "profiles/")
    assert proc.returncode == 0, proc.stderr
    assert f"{EXAMPLE}: ok" in proc.stdout


def test_validate_reports_every_bad_file_and_still_checks_the_good_ones(tmp_path):
    (tmp_path / "a_bad.yaml").write_text("apiVersion: ecapture/v1\n")
    (tmp_path / "b_good.yaml").write_text((ROOT / EXAMPLE).read_text())
    (tmp_path / "c_bad.yml").write_text("kind: [\n")
    (tmp_path / "notes.txt").write_text("not a profile")
    proc = run("validate", ".", cwd=tmp_path)
    assert proc.returncode == 1
    assert "a_bad.yaml:1:1: kind: missing required field 'kind'" in proc.stderr
    assert "c_bad.yml:2:1: invalid YAML" in proc.stderr
    assert "b_good.yaml: ok" in proc.stdout
    assert "notes.txt" not in proc.stdout + proc.stderr


def test_validate_missing_file():
    proc = run("validate", "profiles/does-not-exist.yaml")
    assert proc.returncode == 1
    assert "profiles/does-not-exist.yaml:1:1: no such file" in proc.stderr


def test_validate_empty_directory(tmp_path):
    proc = run("validate", str(tmp_path))
    assert proc.returncode != 0
    assert "no profiles found" in proc.stderr


def test_render_prints_the_c():
    proc = run("render", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    # The prelude (the target number) comes first: it is part of what bcc compiles.
    assert proc.stdout.startswith("#define ECAP_TARGET 0\n"
                                  "/* ecapture generated program: profile nginx-tls, target web")
    assert "int hook_0_entry(struct pt_regs *ctx)" in proc.stdout
    assert '#include "shared.h"' in proc.stdout
    assert "filter_gate" in proc.stdout and "fc->gen" in proc.stdout      # filters read from maps


def test_render_one_target():
    proc = run("render", EXAMPLE, "--target", "web")
    assert proc.returncode == 0
    assert "hook_0_entry" in proc.stdout and "===== target" not in proc.stdout


def test_render_unknown_target_is_a_usage_error():
    proc = run("render", EXAMPLE, "--target", "nope")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "no target named 'nope' (have: web)" in _flat(proc.stderr)


def test_render_invalid_profile_exits_1(tmp_path):
    (tmp_path / "bad.yaml").write_text("apiVersion: ecapture/v1\n")
    proc = run("render", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "bad.yaml:1:1:" in proc.stderr


def test_plan_names_the_library():
    proc = run("plan", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nginx-tls" in out and "web kind=openssl" in out
    assert "libssl" in out
    assert "SSL_read on return" in out and "SSL_write on return" in out
    assert "running now:" in out


def test_plan_invalid_profile_exits_1(tmp_path):
    (tmp_path / "bad.yaml").write_text("apiVersion: ecapture/v2\n")
    proc = run("plan", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "bad.yaml:1:13: apiVersion: must be 'ecapture/v1'" in proc.stderr


def test_unknown_command_is_a_usage_error():
    proc = run("frobnicate")
    assert proc.returncode == 2
