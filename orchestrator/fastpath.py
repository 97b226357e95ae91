"""Which build of the consumer's hot path runs: mypyc's C extensions or the Python sources.

scripts/build_fast.py compiles SOURCES next to themselves and records their digest in STAMP.
`install()` (called by orchestrator/__init__) makes Python import the sources instead when
ECAPTURE_PURE_PYTHON=1 is set or when a source no longer matches the build (an edit since the
last `make setup`), so a stale extension never runs in place of the code on disk.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
SOURCES = (
    "orchestrator/pipeline/events.py",
    "orchestrator/pipeline/connections.py",
    "orchestrator/pipeline/dispatch.py",
    "orchestrator/parsers/base.py",
    "orchestrator/parsers/http_shape.py",
    "orchestrator/parsers/http1.py",
    "orchestrator/parsers/wire.py",
    "orchestrator/parsers/http2.py",
)
MODULES = tuple(s[:-3].replace("/", ".") for s in SOURCES)
# Hand-written C accelerators: imported only when compiled, never in the Python mode.
EXTENSIONS = {"orchestrator.parsers.http1_accel": "orchestrator/parsers/http1_accel.c",
              "orchestrator.parsers.hpack_accel": "orchestrator/parsers/hpack_accel.c",
              "orchestrator.bpf.ring_accel": "orchestrator/bpf/ring_accel.c"}
STAMP = PACKAGE_ROOT / ".compiled-digest"

mode = "python"           # "compiled" when the extensions are in use; see install()
reason = "not built"


def sources_digest() -> str:
    h = hashlib.sha256()
    for rel in (*SOURCES, *EXTENSIONS.values()):
        h.update(rel.encode() + b"\0" + (PACKAGE_ROOT.parent / rel).read_bytes())
    return h.hexdigest()


def write_stamp() -> None:
    STAMP.write_text(sources_digest() + "\n")


def _built() -> bool:
    return all(any(PACKAGE_ROOT.parent.joinpath(*m.split(".")[:-1]).glob(m.split(".")[-1] + ".*.so"))
               for m in (*MODULES, *EXTENSIONS))


class _SourceFirst:
    """A meta-path finder that loads MODULES from their .py files and hides EXTENSIONS."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in EXTENSIONS:
            raise ImportError(f"{name}: the compiled hot path is not in use ({reason})", name=name)
        if name not in MODULES:
            return None
        file = PACKAGE_ROOT.parent.joinpath(*name.split(".")).with_suffix(".py")
        return importlib.util.spec_from_file_location(
            name, file, loader=importlib.machinery.SourceFileLoader(name, str(file)))


def decide(built: bool, pure_env: str | None, stamp: str | None, digest: str) -> tuple[str, str]:
    """(mode, reason): "compiled" only when built, not refused, and built from these sources."""
    if not built:
        return "python", "not built (scripts/build_fast.py)"
    if pure_env == "1":
        return "python", "ECAPTURE_PURE_PYTHON=1"
    if stamp is None or stamp.strip() != digest:
        return "python", "sources changed since the build (run make setup)"
    return "compiled", "mypyc"


def install() -> None:
    """Decide the mode; unless compiled, make the Python sources win over the extensions."""
    global mode, reason
    built = _built()
    try:
        stamp = STAMP.read_text() if built else None
    except OSError:
        stamp = None
    mode, reason = decide(built, os.environ.get("ECAPTURE_PURE_PYTHON"), stamp,
                          sources_digest() if built else "")
    if mode != "compiled" and not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst())
