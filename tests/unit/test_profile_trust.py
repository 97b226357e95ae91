"""spec.trust: sshd-StrictModes-like checks of profile files and the folders above them.

The tests run as root in CI; ownership is exercised with os.chown to uid 65534 (nobody).
"""
from __future__ import annotations

import os

import pytest

from orchestrator import workdir
from orchestrator.profile import trust

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@pytest.fixture
def safe_dir(tmp_path):
    """A folder whose ancestors are trusted (pytest's tmp folders are 0700 below sticky /tmp)."""
    d = tmp_path / "profiles"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    os.chmod(tmp_path, 0o755)
    assert trust.problems(str(tmp_path)) == [], "the test's own tmp folder must be trusted"
    return d


def _profile(d, mode=0o644):
    p = d / "p.yaml"
    p.write_text("x: 1\n")
    os.chmod(p, mode)
    return p


def test_clean_file_is_trusted(safe_dir):
    assert trust.problems(str(_profile(safe_dir))) == []


@pytest.mark.parametrize("mode,who", [(0o666, "group and others"), (0o646, "others"), (0o664, "group")])
def test_writable_file(safe_dir, mode, who):
    p = _profile(safe_dir, mode)
    (msg,) = trust.problems(str(p))
    assert msg == f"{p} is writable by {who} (mode {mode:04o}); chmod go-w it"


def test_writable_parent_folder(safe_dir):
    p = _profile(safe_dir)
    os.chmod(safe_dir, 0o777)
    (msg,) = trust.problems(str(p))
    assert msg.startswith(f"{safe_dir} is writable by group and others (mode 0777)")


def test_writable_grandparent_folder(safe_dir):
    inner = safe_dir / "inner"
    inner.mkdir()
    os.chmod(inner, 0o755)
    p = _profile(inner)
    os.chmod(safe_dir, 0o775)
    assert trust.problems(str(p)) == [f"{safe_dir} is writable by group (mode 0775); chmod go-w it"]


def test_sticky_root_folder_is_an_acceptable_ancestor(safe_dir):
    os.chmod(safe_dir, 0o1777)
    assert trust.problems(str(_profile(safe_dir))) == []


@needs_root
def test_sticky_folder_not_owned_by_root_is_not(safe_dir):
    os.chmod(safe_dir, 0o1777)
    p = _profile(safe_dir)
    os.chown(safe_dir, NOBODY, -1)
    msgs = trust.problems(str(p))
    assert any("owned by uid 65534" in m for m in msgs), msgs
    assert any("writable by group and others (mode 1777)" in m for m in msgs), msgs


def test_sticky_file_itself_is_not_excused(safe_dir):
    p = _profile(safe_dir, 0o1666)
    assert trust.problems(str(p)) != []


@needs_root
def test_file_not_owned_by_root(safe_dir):
    p = _profile(safe_dir)
    os.chown(p, NOBODY, -1)
    assert trust.problems(str(p)) == [f"{p} is owned by uid 65534, not root; chown it"]


@needs_root
def test_folder_not_owned_by_root(safe_dir):
    p = _profile(safe_dir)
    os.chown(safe_dir, NOBODY, -1)
    (msg,) = trust.problems(str(p))
    assert msg.startswith(f"{safe_dir} is owned by uid 65534")


@needs_root
def test_not_root_accepts_own_files(safe_dir, monkeypatch):
    p = _profile(safe_dir)
    os.chown(p, NOBODY, -1)
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    assert trust.problems(str(p)) == []
    os.chown(p, 1234, -1)
    (msg,) = trust.problems(str(p))
    assert msg == f"{p} is owned by uid 1234, not root or you (uid 65534); chown it"


def test_symlink_target_components_are_checked(safe_dir, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    target = _profile(open_dir)
    link = safe_dir / "link.yaml"
    link.symlink_to(target)
    msgs = trust.problems(str(link))
    assert msgs == [f"{open_dir} is writable by group and others (mode 0777); chmod go-w it"]


def test_symlinked_folder_on_the_way(safe_dir, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o757)
    _profile(open_dir)
    (safe_dir / "via").symlink_to(open_dir)
    msgs = trust.problems(str(safe_dir / "via" / "p.yaml"))
    assert msgs == [f"{open_dir} is writable by others (mode 0757); chmod go-w it"]


@needs_root
def test_symlink_owned_by_someone_else(safe_dir):
    target = _profile(safe_dir)
    link = safe_dir / "link.yaml"
    link.symlink_to(target)
    os.lchown(link, NOBODY, -1)
    assert trust.problems(str(link)) == [f"{link} is owned by uid 65534, not root; chown it"]


def test_relative_path_and_missing_file(safe_dir, monkeypatch):
    # Relative to the directory the command started in (workdir), whatever bcc did to the cwd since.
    monkeypatch.setattr(workdir, "START", str(safe_dir))
    _profile(safe_dir)
    assert trust.problems("p.yaml") == []
    (msg,) = trust.problems("missing.yaml")
    assert "missing.yaml: cannot check" in msg
