"""Files for tests of what root must never write through: a victim file and its check."""
from __future__ import annotations

import os
import stat

import pytest

VICTIM_TEXT = "root:x:0:0\n"


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def victim(tmp_path):
    """A file we own that must stay as it is (content and mode)."""
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    os.chmod(path, 0o644)
    return path


def assert_untouched(victim) -> None:
    assert victim.read_text() == VICTIM_TEXT and mode(victim) == 0o644
