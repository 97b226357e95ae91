"""The command line for scripts and CI: --version, shell completion, `validate --json/--offline`,
`plan --json/--detailed-exitcode`, and help without Python type names (subprocesses, no root).

`plan` compares with the running apply over its control socket: here a real ControlServer, in
this process, answers `running` as an apply running the given targets would."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from importlib import metadata

import pytest

from orchestrator.plan import build, diff
from orchestrator.profile import load
from orchestrator.reconcile import control
from tests.unit.test_cli_pure import EXAMPLE, ROOT, run

ISSUE_KEYS = {"file", "line", "col", "field", "message"}
FILE_KEYS = {"file", "ok", "profile", "targets", "errors", "warnings"}
MISSING_BINARY = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: missing-bin}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /opt/no-such-dir/nginx
  sinks:
    - {type: jsonl, path: out/capture.jsonl}
"""


def _json(proc) -> dict:
    """stdout is one JSON document and nothing else."""
    return json.loads(proc.stdout)


@pytest.fixture
def no_apply(tmp_path, monkeypatch):
    """No `ecapture apply` answers (whatever else runs on this machine)."""
    monkeypatch.setenv("ECAPTURE_SOCKET", str(tmp_path / "nobody" / "apply.sock"))


@pytest.fixture
def running_apply(tmp_path, monkeypatch):
    """A control socket answering `running` with the Running views it is given."""
    views: list = []
    server = control.ControlServer({"running": lambda: [dataclasses.asdict(v) for v in views]},
                                   path=str(tmp_path / "run" / "apply.sock"))
    assert server.start() is None
    monkeypatch.setenv("ECAPTURE_SOCKET", server.path)
    yield views
    server.close()


def _running_view(ps, **changed) -> diff.Running:
    """What runtime.view reports for a running probe set."""
    view = diff.Running(ps.key, ps.digest, ps.kernel_digest, ps.attach_identity, ps.program_key)
    return dataclasses.replace(view, **changed)


# ---------------------------------------------------------------- --version, completion, help

def test_version_is_the_installed_distributions():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"ecapture {metadata.version('ecapture')}\n"


def test_shell_completion_is_offered_and_completes_commands_and_options():
    assert "--install-completion" in run("--help").stdout
    script = run("--show-completion", "bash")
    assert script.returncode == 0 and "_ecapture_completion" in script.stdout, script.stdout + script.stderr
    env = {"_ECAPTURE_COMPLETE": "complete_bash", "COMP_WORDS": "ecapture plan --d", "COMP_CWORD": "2"}
    import subprocess
    from tests.unit.test_cli_pure import ECAPTURE
    proc = subprocess.run([str(ECAPTURE)], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["--detailed-exitcode"]


@pytest.mark.parametrize("command", [(), ("validate",), ("plan",), ("apply",), ("render",), ("status",)])
def test_help_names_no_python_types(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0
    for python_type in ("list[", "List[", "<bool>", "<float>", "<path>", "<str>", "FLOAT", "PATH", "TEXT", "BOOLEAN"):
        assert python_type not in proc.stdout, (python_type, proc.stdout)
    if command == ("apply",):
        flat = " ".join(proc.stdout.split())
        assert "--duration SECONDS" in flat and "--ready-file FILE" in flat and "PROFILE" in flat


# ---------------------------------------------------------------- validate --json

def test_validate_json_examples_all_ok():
    proc = run("validate", "--json", "profiles/")
    doc = _json(proc)
    assert proc.returncode == 0, proc.stdout
    assert set(doc) == {"format", "command", "offline", "ok", "errors", "files"}
    assert (doc["format"], doc["command"], doc["offline"], doc["ok"], doc["errors"]) == (1, "validate", False, True, [])
    assert all(set(f) == FILE_KEYS and f["ok"] for f in doc["files"])
    entry = next(f for f in doc["files"] if f["file"] == EXAMPLE)
    del entry["warnings"]          # about the checkout's permissions, not the profile
    assert entry == {"file": EXAMPLE, "ok": True, "profile": "nginx-tls", "targets": 1, "errors": []}


def test_validate_json_names_file_line_col_field_message(tmp_path):
    (tmp_path / "a_bad.yaml").write_text("apiVersion: ecapture/v1\n")
    (tmp_path / "b_good.yaml").write_text((ROOT / EXAMPLE).read_text())
    proc = run("validate", "--json", ".", cwd=tmp_path)
    assert proc.returncode == 1
    doc = _json(proc)
    assert doc["ok"] is False
    bad, good = doc["files"]
    assert bad["ok"] is False and bad["profile"] is None and bad["targets"] is None
    assert {"file": "a_bad.yaml", "line": 1, "col": 1, "field": "kind",
            "message": "missing required field 'kind'"} in bad["errors"]
    assert all(set(i) == ISSUE_KEYS for i in bad["errors"])
    assert good["ok"] is True and good["profile"] == "nginx-tls"


def test_validate_json_without_profiles(tmp_path):
    proc = run("validate", "--json", str(tmp_path))
    assert proc.returncode == 1
    doc = _json(proc)
    assert doc["files"] == [] and doc["errors"][0]["message"] == "no profiles found"


# ---------------------------------------------------------------- validate --offline

def test_offline_validation_passes_where_the_binary_is_missing_and_the_normal_one_reports_it(tmp_path, no_apply):
    (tmp_path / "p.yaml").write_text(MISSING_BINARY)
    normal = run("validate", "p.yaml", cwd=tmp_path)
    assert normal.returncode == 1
    assert "p.yaml:8:15: spec.targets[0].binary: /opt/no-such-dir/nginx: no such file" in normal.stderr

    offline = run("validate", "--offline", "p.yaml", cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("p.yaml: ok (1 target(s); offline:") and offline.stderr == ""

    doc = _json(run("validate", "--offline", "--json", "p.yaml", cwd=tmp_path))
    assert doc["ok"] is True and doc["offline"] is True and doc["files"][0]["errors"] == []

    plan = run("plan", "--json", "p.yaml", cwd=tmp_path)
    assert plan.returncode == 1
    doc = _json(plan)
    expected = {"file": "p.yaml", "line": 8, "col": 15, "field": "spec.targets[0].binary",
                "message": "/opt/no-such-dir/nginx: no such file"}
    assert doc["ok"] is False and doc["files"][0]["errors"] == [expected]
    assert doc["profiles"][0]["targets"] == [{"target": "web", "kind": "openssl", "ok": False, "error": expected}]
    assert run("plan", "--detailed-exitcode", "p.yaml", cwd=tmp_path).returncode == 1


def test_offline_validation_leaves_permissions_and_output_paths_alone(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)                                  # apply would refuse a profile in here
    (shared / "p.yaml").write_text(MISSING_BINARY.replace("out/capture.jsonl", "/proc/self/nope/x.jsonl"))
    (shared / "p.yaml").chmod(0o644)
    normal = _json(run("validate", "--json", str(shared / "p.yaml")))
    messages = [i["message"] for i in normal["files"][0]["errors"] + normal["files"][0]["warnings"]]
    assert any("writable by group and others" in m for m in messages), messages
    assert any(i["field"] == "spec.sinks[0].path" for i in normal["files"][0]["errors"]), normal
    offline = run("validate", "--offline", "--json", str(shared / "p.yaml"))
    assert offline.returncode == 0 and _json(offline)["files"][0]["warnings"] == []


def test_offline_validation_still_checks_schema_and_semantics(tmp_path):
    (tmp_path / "p.yaml").write_text(MISSING_BINARY.replace("kind: openssl", "kind: opensssl") +
                                     "    - {type: jsonl, path: out/capture.jsonl}\n")
    doc = _json(run("validate", "--offline", "--json", "p.yaml", cwd=tmp_path))
    fields = {i["field"] for i in doc["files"][0]["errors"]}
    assert doc["ok"] is False and "spec.targets[0].kind" in fields
    (tmp_path / "p.yaml").write_text(MISSING_BINARY + "    - {type: jsonl, path: out/capture.jsonl}\n")
    doc = _json(run("validate", "--offline", "--json", "p.yaml", cwd=tmp_path))
    assert [(i["field"], i["message"]) for i in doc["files"][0]["errors"]] == \
           [("spec.sinks[1].path", "same file as sinks[0]")]


# ---------------------------------------------------------------- plan --json, --detailed-exitcode

def _example_plan():
    sets, failed = build.plan_profile(load.load_file(str(ROOT / EXAMPLE)))
    assert not failed
    return sets


def test_plan_json_shape_with_no_apply_running(no_apply):
    proc = run("plan", "--json", EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    doc = _json(proc)
    assert {"format", "command", "ok", "errors", "files", "profiles", "running", "changes",
            "changes_pending"} <= set(doc)
    assert (doc["format"], doc["command"], doc["ok"]) == (1, "plan", True)
    (profile,) = doc["profiles"]
    assert profile["profile"] == "nginx-tls" and profile["file"] == EXAMPLE
    (target,) = profile["targets"]
    assert target["target"] == "web" and target["kind"] == "openssl" and target["ok"] is True
    assert re.search(r"libssl\.so", target["attach"]["path"]) and target["attach"]["how"]
    assert {"symbol": "SSL_read", "on": "return"} in target["hooks"]
    assert set(target["filters"]) == {"pids", "uids", "comm", "ports", "cgroups"}
    assert isinstance(target["running_now"], list) and target["change"] == "add"
    assert target["digest"] == _example_plan()[0].digest
    assert doc["running"]["compared"] is False and "no running" in doc["running"]["reason"]
    # Nothing to compare with: everything planned is a change.
    assert doc["changes"] == {"add": ["nginx-tls/web"], "remove": [], "replace": [], "unchanged": []}
    assert doc["changes_pending"] is True
    assert run("plan", "--json", "--detailed-exitcode", EXAMPLE).returncode == 2


def test_detailed_exitcode_0_when_the_running_apply_runs_exactly_this(running_apply):
    running_apply += [_running_view(ps) for ps in _example_plan()]
    doc = _json(run("plan", "--json", EXAMPLE))
    assert doc["running"] == {"compared": True, "reason": None}
    assert doc["changes"] == {"add": [], "remove": [], "replace": [], "unchanged": ["nginx-tls/web"]}
    assert doc["changes_pending"] is False and doc["profiles"][0]["targets"][0]["change"] == "unchanged"
    assert run("plan", "--json", "--detailed-exitcode", EXAMPLE).returncode == 0
    text = run("plan", "--detailed-exitcode", EXAMPLE)
    assert text.returncode == 0 and "unchanged nginx-tls/web" in " ".join(text.stdout.split())


def test_detailed_exitcode_2_when_a_target_would_change_or_go(running_apply):
    (ps,) = _example_plan()
    running_apply += [_running_view(ps, digest="old", kernel_digest="old"),
                      diff.Running(("nginx-tls", "gone"), "d", "k", "a", "p"),
                      diff.Running(("another-profile", "x"), "d", "k", "a", "p")]   # not planned here: left alone
    proc = run("plan", "--json", "--detailed-exitcode", EXAMPLE)
    assert proc.returncode == 2
    doc = _json(proc)
    assert doc["changes"] == {"add": [], "remove": ["nginx-tls/gone"], "unchanged": [],
                              "replace": [{"target": "nginx-tls/web", "how": "express",
                                           "words": diff.WORDS["express"]}]}
    assert doc["changes_pending"] is True
    text = run("plan", "--detailed-exitcode", EXAMPLE)
    assert text.returncode == 2 and "remove nginx-tls/gone" in text.stdout
    assert run("plan", EXAMPLE).returncode == 0           # without the option: 0 unless an error


def test_plan_json_invalid_profile_exits_1(tmp_path, no_apply):
    (tmp_path / "bad.yaml").write_text("apiVersion: ecapture/v2\n")
    for args in (("plan", "--json"), ("plan", "--json", "--detailed-exitcode")):
        proc = run(*args, "bad.yaml", cwd=tmp_path)
        assert proc.returncode == 1
        doc = _json(proc)
        assert doc["ok"] is False and doc["profiles"] == []
        assert {"file": "bad.yaml", "line": 1, "col": 13, "field": "apiVersion",
                "message": "must be 'ecapture/v1' (got 'ecapture/v2')"} in doc["files"][0]["errors"]
