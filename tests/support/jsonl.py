"""Reading a JSONL sink's file while `ecapture apply` may be writing it.

The sink appends each batch with one os.write, but a reader on the same file can still see
that write half done (the kernel copies it page by page, and a whole-file read may take more
than one read call). While apply runs only the lines up to the last newline are records; once
it has stopped, a line without its newline is a defect the caller should see.
"""
from __future__ import annotations

import json
from pathlib import Path


def parse(data: bytes | str, finished: bool, where: object = "the file") -> list[dict]:
    """The records in `data`; `finished`: the writer has stopped, so every line must be whole."""
    newline = b"\n" if isinstance(data, bytes) else "\n"
    if finished:
        assert not data or data.endswith(newline), f"{where} ends inside a line: {data[-200:]!r}"
    else:
        data = data[:data.rfind(newline) + 1]
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def read(path: Path, finished: bool) -> list[dict]:
    """The records of the file at `path` (none if it does not exist yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse(data, finished, path)
