"""packaging/ecapture.service, the systemd unit (issue 14): what it runs, with which capabilities,
and that systemd itself accepts it (`systemd-analyze verify`, which reports unknown keys and bad
values on stderr). That the capabilities are enough for a real capture is tests/kernel/test_service.py."""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.reconcile import control

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "ecapture.service"
INSTALLED = "/usr/local/bin/ecapture"
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN", "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"}
# Each would break capture: tracefs read-only, no kernel headers, no LLVM, no bpf() syscall.
BREAKS_BPF = ("ProtectKernelTunables", "ProtectKernelModules", "MemoryDenyWriteExecute", "SystemCallFilter")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",),
                                       comment_prefixes=("#", ";"), empty_lines_in_values=False)
    parser.optionxform = str        # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_it_applies_the_profiles_folder_and_reloads_through_the_control_socket():
    service = unit()["Service"]
    assert shlex.split(service["ExecStart"]) == [INSTALLED, "apply", "/etc/ecapture/profiles.d"]
    assert shlex.split(service["ExecReload"]) == [INSTALLED, "reload"]
    assert service["Type"] == "exec" and service["Restart"] == "on-failure"
    # The socket `reload` talks to is where apply listens, in the runtime folder systemd makes.
    assert service["Environment"] == f"ECAPTURE_SOCKET={control.DEFAULT_PATH}"
    assert control.DEFAULT_PATH == f"/run/{service['RuntimeDirectory']}/apply.sock"
    assert service["RuntimeDirectoryMode"] == "0700" and service["RuntimeDirectoryPreserve"] == "restart"
    assert service["WorkingDirectory"] == f"/var/lib/{service['StateDirectory']}"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_both_commands_exist_in_the_cli():
    ecapture = Path(sys.executable).parent / "ecapture"
    for command in ("apply", "reload"):
        proc = subprocess.run([str(ecapture), command, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    reload_help = subprocess.run([str(ecapture), "reload", "--help"], capture_output=True, text=True,
                                 timeout=60).stdout
    assert "systemctl reload ecapture" in reload_help


def test_capabilities_and_hardening():
    service = unit()["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == CAPABILITIES
    assert service["LimitMEMLOCK"] == "infinity"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "full"
    assert not set(BREAKS_BPF) & set(service)
    assert "User" not in service        # apply checks it runs as root


def test_systemd_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; scripts/setup.sh installs it)")
    # verify also checks that the commands exist: point them at this checkout's ecapture.
    ecapture = Path(sys.executable).parent / "ecapture"
    copy = tmp_path / "ecapture.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(ecapture)))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Unknown keys and unparsable values are only warnings, on stderr, naming the unit's file.
    assert str(copy) not in proc.stderr and "ecapture.service" not in proc.stderr, proc.stderr
