"""Text made safe for a terminal: the one place that escapes control characters.

Captured data, process names, file names and profile values come from other users.
Printed raw, their escape sequences could clear root's screen, move the cursor,
hide lines or forge new ones. `printable` replaces every character a terminal
would interpret with a visible escape (`\\x1b`, `\\u202e`), so what is shown is
exactly what was there.
"""
from __future__ import annotations

# C0 controls, DEL and C1 controls as \xNN; bidi embeddings/overrides/isolates as \uNNNN.
_CONTROLS = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_SINGLE_LINE = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _BIDI}
_MULTI_LINE = {c: v for c, v in _SINGLE_LINE.items() if c not in (0x09, 0x0A)}


def printable(text: str, multiline: bool = False) -> str:
    """`text` with terminal controls replaced by visible escapes.

    Single-line fields (comm, paths, header names and values, method, symbol, profile
    names, messages) escape newline and tab too, so one field cannot forge a line.
    `multiline=True` (bodies, commands) keeps "\\n" and "\\t" and escapes the rest, "\\r"
    included.
    """
    return text.translate(_MULTI_LINE if multiline else _SINGLE_LINE)
