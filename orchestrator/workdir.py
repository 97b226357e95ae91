"""The directory the command was started in, read once, before anything can change it.

bcc `chdir`s the whole process into the kernel headers while it compiles, and compiles run on
background threads: a relative path resolved, or shown, meanwhile would be wrong. So every
path is made absolute against this directory once, when it enters the program, and shown
relative to it.
"""
from __future__ import annotations

import os

START = os.getcwd()


def absolute(path) -> str:
    """`path` as an absolute, normalised path (relative ones against START); no symlink is resolved."""
    return os.path.normpath(os.path.join(START, os.fspath(path)))


def shown(path) -> str:
    """How to show `path` to the user: relative to START when under it, else absolute."""
    path = absolute(path)
    rel = os.path.relpath(path, START)
    return path if rel.startswith("..") else rel
