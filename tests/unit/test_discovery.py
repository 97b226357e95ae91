"""Target discovery on this machine's real files (no root needed)."""
from __future__ import annotations

import os
import shutil

from orchestrator.bpf import discovery
from orchestrator.profile import models


def test_a_program_that_loads_libssl_at_run_time_gets_the_loaders_libssl(tmp_path):
    # A private copy of the interpreter: not linked to libssl (its _ssl module is), and not running.
    python = tmp_path / "python3"
    shutil.copy("/usr/bin/python3.11", python)
    res = discovery.resolve(models.Target("py", "openssl", binary=str(python)))
    assert os.path.basename(res.attach_path) == "libssl.so.3"
    assert "loader's cache" in res.how
    assert res.scope_paths and res.scope_real == str(python)      # still only that program's processes


def test_newest_versioned_library_wins_and_dev_links_do_not_count():
    assert discovery._version_key("libssl.so.3") == (3,)
    assert discovery._version_key("libssl.so.1.1") == (1, 1)
    assert discovery._version_key("libssl.so") == ()
    assert sorted(["libssl.so.1.1", "libssl.so.3"], key=discovery._version_key)[-1] == "libssl.so.3"
