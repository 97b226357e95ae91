"""Invalid profiles: each file in invalid_profiles/ states the issues it must produce.

Header lines of a corpus file:

    # expect: LINE[:COL] FIELD.PATH: message substring     (one per issue; FIELD `-` = no field path)
    # xfail: reason          the loader test is a known product bug (strict: flips when fixed)
    # xfail-cli: reason      the `ecapture validate` test is a known product bug

A file must produce exactly the expected issues: extra (spurious) issues fail the test too.

Some checks need the file system or ELF contents (binary exists, is ELF, has the symbol) and run at
plan time rather than load time, so a profile for a program not installed yet still loads. The loader
test accepts either stage: when `load_file` succeeds, the expected issues must come out of
`plan.build.plan_profile` as failed targets (matched by field path and message; their positions are
checked through `ecapture validate`).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.plan import build
from orchestrator.profile import errors, load

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "invalid_profiles"
ECAPTURE = ROOT / ".venv" / "bin" / "ecapture"
EXPECT = re.compile(r"^# expect: (\d+)(?::(\d+))? (\S+): ?(.*)$")


@dataclass(frozen=True)
class Expect:
    line: int
    col: int | None
    field: str          # "" for none
    message: str

    def matches(self, issue: errors.Issue) -> bool:
        return (issue.line == self.line and (self.col is None or issue.col == self.col)
                and issue.field == self.field and self.message in issue.message)

    def __str__(self) -> str:
        col = f":{self.col}" if self.col is not None else ""
        return f"{self.line}{col} {self.field or '-'}: {self.message}"


def parse_header(path: Path):
    expects, xfail, xfail_cli = [], None, None
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.startswith("#"):
            break
        m = EXPECT.match(raw)
        if m:
            line, col, field, message = m.groups()
            expects.append(Expect(int(line), int(col) if col else None, "" if field == "-" else field,
                                  message.strip()))
        elif raw.startswith("# xfail-cli:"):
            xfail_cli = raw.split(":", 1)[1].strip()
        elif raw.startswith("# xfail:"):
            xfail = raw.split(":", 1)[1].strip()
    return expects, xfail, xfail_cli


FILES = sorted(CORPUS.glob("*.yaml"))


def _params(cli: bool):
    out = []
    for path in FILES:
        _, xfail, xfail_cli = parse_header(path)
        reason = xfail_cli if cli else xfail
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


def _display(path: Path) -> str:
    """The file name as the loader reports it (relative to the working directory when below it)."""
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


def test_corpus_is_big_enough():
    assert len(FILES) >= 35


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_every_file_states_its_expectations(path):
    expects, _, _ = parse_header(path)
    assert expects, f"{path.name}: no `# expect:` line"


@pytest.mark.parametrize("path", _params(cli=False))
def test_loader_reports_expected_issues(path):
    expects, _, _ = parse_header(path)
    try:
        profile = load.load_file(str(path))
    except errors.ProfileError as exc:
        _check_load_issues(path, expects, exc)
    else:
        _check_plan_failures(profile, expects)


def _check_load_issues(path, expects, exc):
    issues = exc.issues
    shown = "\n".join(f"  {i.line}:{i.col} {i.field or '-'}: {i.message}" for i in issues)
    for e in expects:
        assert any(e.matches(i) for i in issues), f"missing issue {e}\n got:\n{shown}"
    assert len(issues) == len(expects), f"expected {len(expects)} issue(s), got:\n{shown}"
    for i in issues:
        assert i.file == _display(path)
    # The exception text is the CLI's line format.
    assert str(exc).splitlines() == [str(i) for i in issues]


def _check_plan_failures(profile, expects):
    _, failed = build.plan_profile(profile)
    names = [t.name for t in profile.targets]
    got = [(f"spec.targets[{names.index(f.target.name)}].{f.field}", f.message) for f in failed]
    assert got, "the profile loaded and planned without any issue"
    for e in expects:
        assert any(field == e.field and e.message in message for field, message in got), \
            f"missing plan-time issue {e}; got {got}"
    assert len(got) == len(expects), f"expected {len(expects)} issue(s), got {got}"


@pytest.mark.parametrize("path", _params(cli=True))
def test_validate_command_reports_expected_issues(path):
    expects, _, _ = parse_header(path)
    rel = path.relative_to(ROOT).as_posix()
    proc = subprocess.run([str(ECAPTURE), "validate", rel], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    for e in expects:
        want = f"{rel}:{e.line}:" + (f"{e.col}:" if e.col is not None else "")
        hits = [ln for ln in lines if ln.startswith(want) and (not e.field or f" {e.field}: " in ln)]
        assert hits, f"no stderr line starting {want!r} naming {e.field!r}:\n{proc.stderr}"
        assert any(e.message in ln for ln in hits), f"{e.message!r} not in {hits}"
    assert rel + ": ok" not in proc.stdout


def test_expect_parser():
    e = EXPECT.match("# expect: 9:7 spec.targets[0].symbol: only allowed with kind: uprobe").groups()
    assert e == ("9", "7", "spec.targets[0].symbol", "only allowed with kind: uprobe")
    assert EXPECT.match("# expect: 3 -: ").groups() == ("3", None, "-", "")


def test_truly_empty_file(tmp_path):
    """A 0-byte file (the corpus files cannot be: their expectations are comments)."""
    (tmp_path / "empty.yaml").write_bytes(b"")
    with pytest.raises(errors.ProfileError) as info:
        load.load_file(str(tmp_path / "empty.yaml"))
    (issue,) = info.value.issues
    assert (issue.line, issue.col, issue.field) == (1, 1, "")
    assert "must be of type object" in issue.message
    proc = _run("validate", "empty.yaml", cwd=tmp_path)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1 and proc.stderr.startswith("empty.yaml:1:1: ")


# ------------------------------------------------------------------ plan-time (semantic) checks

MISSING_SYMBOL = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: demo
spec:
  targets:
  - name: shell
    kind: bash
  - name: fn
    kind: uprobe
    binary: /bin/true
    symbol: no_such_function_xyz
"""
SYMBOL_LINE, SYMBOL_COL = 12, 13      # where `no_such_function_xyz` is


def _run(*args, cwd):
    return subprocess.run([str(ECAPTURE), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture
def missing_symbol(tmp_path):
    (tmp_path / "fn.yaml").write_text(MISSING_SYMBOL)
    return tmp_path


def test_missing_symbol_loads_but_fails_validate(missing_symbol):
    load.load_file(str(missing_symbol / "fn.yaml"))       # the ELF symbol check is not a load-time check
    proc = _run("validate", "fn.yaml", cwd=missing_symbol)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fn.yaml:")]
    assert any(" spec.targets[1].symbol: " in ln and "no_such_function_xyz" in ln for ln in lines), proc.stderr


def test_missing_symbol_points_at_the_symbol(missing_symbol):
    proc = _run("validate", "fn.yaml", cwd=missing_symbol)
    assert f"fn.yaml:{SYMBOL_LINE}:{SYMBOL_COL}: spec.targets[1].symbol: " in proc.stderr, proc.stderr


def test_render_names_the_field_path_of_a_missing_symbol(missing_symbol):
    proc = _run("render", "fn.yaml", "--target", "fn", cwd=missing_symbol)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "spec.targets[1].symbol" in proc.stderr, proc.stderr
