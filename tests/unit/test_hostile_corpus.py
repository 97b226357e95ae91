"""The loader and planner are total over hostile input (issue 8, item 6).

Every file of tests/unit/hostile/ (written by make_corpus.py), and the odd files, big files and
crafted ELF programs made at test time, must end in a loaded profile or `file:line:col:` issues:
no other exception, no hang (each within 5 s: a bound, not a benchmark), no traceback from
`ecapture validate`.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.bpf import discovery
from orchestrator.plan import build
from orchestrator.profile import errors, load

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = Path(__file__).resolve().parent / "hostile"
ECAPTURE = ROOT / ".venv" / "bin" / "ecapture"
BOUND_S = 5.0

_spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)

CORPUS = sorted(HOSTILE.glob("*.yaml"))
PAYLOAD_MARKERS = ("evil()", "7*7", "include '/etc/passwd'", "$(reboot)", "`id`", "rm -rf", "nc 1.2.3.4",
                   "%s%n", "/etc/shadow", "{{config}}")


@pytest.fixture(autouse=True)
def _short_elf_budget(monkeypatch):
    """The ELF time cap is 5 s; a shorter one keeps the sparse-symbols case inside the 5 s bound."""
    monkeypatch.setattr(discovery, "MAX_ELF_SECONDS", 1.0)
    discovery._elf_info.cache_clear()


def survive(path) -> tuple[list[errors.Issue], list]:
    """Load and (if it loads) plan `path`; returns (issues, probe sets) and checks the contract."""
    start = time.monotonic()
    sets = []
    try:
        profile = load.load_file(str(path))
    except errors.ProfileError as exc:
        issues = exc.issues
        assert str(exc).splitlines() == [str(i) for i in issues]
    else:
        sets, failed = build.plan_profile(profile)
        issues = [f.issue() for f in failed]
    elapsed = time.monotonic() - start
    assert elapsed < BOUND_S, f"{path}: took {elapsed:.1f} s"
    for issue in issues:
        text = str(issue)
        assert issue.line >= 1 and issue.col >= 1, text
        assert re.match(rf"^{re.escape(issue.file)}:\d+:\d+: \S", text), text
        assert "Traceback" not in text
    return issues, sets


def test_corpus_is_big_enough_and_small():
    assert len(CORPUS) >= 100
    assert all(p.stat().st_size <= 64 << 10 for p in CORPUS), "committed corpus files must stay small"


def test_corpus_is_what_the_generator_writes(tmp_path):
    make_corpus.write_corpus(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.yaml")) == [p.name for p in CORPUS]
    for p in CORPUS:
        assert (tmp_path / p.name).read_bytes() == p.read_bytes(), f"{p.name}: run make_corpus.py"


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in CORPUS])
def test_hostile_file_is_an_issue_or_a_clean_profile(path):
    issues, sets = survive(path)
    for ps in sets:      # whatever loaded rendered no payload into the C
        for marker in PAYLOAD_MARKERS:
            assert marker not in ps.rendered.text, (path.name, marker)


def test_injections_into_checked_fields_are_refused():
    """Names, comm, symbols and arg names have strict patterns; paths may be odd but real file names
    (they are checked against the file system), labels are free text."""
    checked = tuple(f"inj_{f}_" for f in ("name", "target", "comm", "symbol", "arg"))
    for path in CORPUS:
        name = path.stem
        if name.startswith(checked):
            issues, _ = survive(path)
            assert issues, f"{name}: an injection into a checked field was accepted"


@pytest.mark.parametrize("name, message", [
    ("yaml_bel_byte", "character U+0007 is not allowed"),
    ("yaml_nul_byte", "character U+0000 is not allowed"),
    ("yaml_esc_byte", "character U+001B is not allowed"),
    ("yaml_del_byte", "character U+007F is not allowed"),
    ("yaml_nesting_500_flow", "nested too deeply"),
    ("yaml_nesting_500_map", "nested too deeply"),
    ("yaml_billion_laughs", "document too large"),
    ("yaml_recursive_alias", "an alias refers to the node that contains it"),
    ("yaml_tag_python_object", "unsupported tag"),
    ("yaml_tag_custom", "unsupported tag '!foo'"),
    ("yaml_invalid_utf8", "not UTF-8 text"),
    ("yaml_utf16_le", "not UTF-8 text"),
    ("num_max_bytes_digits_5000", "number too large"),
    ("num_max_bytes_leading_zero", "ambiguous number '01024'"),
    ("yaml_escaped_controls", "control character"),
    ("inj_comm_newline", "is not allowed"),
])
def test_hostile_file_messages(name, message):
    issues, _ = survive(HOSTILE / f"{name}.yaml")
    assert any(message in i.message for i in issues), [str(i) for i in issues]


@pytest.fixture
def specials(tmp_path):
    d = Path(os.path.realpath(tmp_path))
    return make_corpus.special_files(d)


def test_special_files(specials):
    expected = {"fifo": "not a regular file", "directory": "not a regular file", "dev_zero": "not a regular file",
                "char_device": "not a regular file", "symlink_dangling": "no such file",
                "socket": "not a regular file", "symlink_shadow": "not a *.yaml/*.yml file",
                "huge_2mib": "file too large", "sparse_huge": "file too large"}
    for name, path in specials.items():
        issues, _ = survive(path)
        assert issues, name
        if name in expected:
            assert len(issues) == 1, (name, [str(i) for i in issues])
            (issue,) = issues
            assert (issue.line, issue.col, issue.field) == (1, 1, ""), (name, str(issue))
            assert expected[name] in issue.message, (name, str(issue))


@pytest.fixture
def elves(tmp_path):
    d = Path(os.path.realpath(tmp_path))
    bins = make_corpus.elf_files(d)
    profiles = {}
    for name, path in bins.items():
        profiles[name] = d / f"{name}.yaml"
        profiles[name].write_text(make_corpus.elf_profile(path))
    return profiles


ELF_MESSAGES = {
    "claims_5m_symbols": "past the end of the file",
    "claims_1m_sections": "claims 1000000 sections",
    "claims_65535_sections": "more than fit",
    "section_past_eof": "past the end of the file",
    "section_size_overflow": "past the end of the file",
    "symtab_entsize_zero": "symbol entries of 0 bytes",
    "symtab_link_missing": "does not exist",
    "shstrndx_out_of_range": "section-name table index",
    "shentsize_zero": "section header size 0",
    "shoff_past_eof": "starts past the end of the file",
    "truncated": "more than fit",
    "header_only": "not",
    "not_elf": "not an ELF file",
    "empty": "not an ELF file",
    "sparse_3m_symbols": "takes more than 1 s",
}


def test_crafted_elf_programs(elves):
    for name, path in elves.items():
        issues, sets = survive(path)
        if name == "valid":
            assert not issues and sets[0].attach_path.endswith("valid.elf"), [str(i) for i in issues]
            continue
        assert issues, name
        (issue,) = issues
        assert issue.field == "spec.targets[0].binary", (name, str(issue))
        if name in ELF_MESSAGES:
            assert ELF_MESSAGES[name] in issue.message, (name, str(issue))


def test_symbol_count_cap(tmp_path, monkeypatch):
    """A (sparse) file big enough for its claimed symbols still stops at MAX_SYMBOLS."""
    monkeypatch.setattr(discovery, "MAX_SYMBOLS", 1_000_000)
    path = make_corpus.elf_files(Path(os.path.realpath(tmp_path)))["sparse_3m_symbols"]
    with pytest.raises(discovery.DiscoveryError, match="claims more than 1000000 symbols"):
        discovery.elf_info(str(path))


def _validate(*args, cwd=ROOT):
    return subprocess.run([str(ECAPTURE), "validate", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def test_validate_command_over_the_corpus():
    start = time.monotonic()
    proc = _validate(HOSTILE.relative_to(ROOT))
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert time.monotonic() - start < 120
    for line in proc.stderr.splitlines():
        assert re.match(r"^tests/unit/hostile/[\w.]+\.yaml:\d+:\d+: ", line), line


def test_validate_command_over_special_and_elf_files(specials, elves):
    proc = _validate(*specials.values(), *elves.values())
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1
