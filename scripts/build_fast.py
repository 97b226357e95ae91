"""Compile the consumer's hot path (decode → connection → parser) with mypyc into C extensions
next to the sources (run by `make setup` through scripts/setup.sh).

The .py files stay the reference: without the extensions, or with ECAPTURE_PURE_PYTHON=1, or
when a source changed after the build (orchestrator/fastpath.py checks), the same modules run
as plain Python, and tests check that both write the same JSONL.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import fastpath  # noqa: E402


def main() -> int:
    os.chdir(ROOT)
    from mypyc.build import mypycify
    from setuptools import Extension, setup

    modules = mypycify(["--follow-imports=silent", *fastpath.SOURCES], group_name="orchestrator.compiled",
                       opt_level="3", debug_level="0")
    modules += [Extension(name, [src], extra_compile_args=["-O2", "-Wall", "-Werror"])
                for name, src in fastpath.EXTENSIONS.items()]
    with tempfile.TemporaryDirectory(prefix="ecapture-build-") as out:
        setup(name="ecapture-fastpath", ext_modules=modules,
              script_args=["build_ext", "--build-lib", out, "--build-temp", str(ROOT / "build" / "fast"), "-q"])
        # Renamed into place, never rewritten: a running apply keeps the files it mapped.
        for built in Path(out).rglob("*.so"):
            dest = ROOT / built.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, dest)
    fastpath.write_stamp()
    return 0


if __name__ == "__main__":
    sys.exit(main())
