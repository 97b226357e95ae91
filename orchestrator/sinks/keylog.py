"""Key-log sink: tls.secret records as NSS key log lines (SSLKEYLOGFILE format), one per secret.

    LABEL <client random hex> <secret hex>

Each line is written and flushed on its own, so a reader (Wireshark, tshark) always finds whole
lines. The file is opened by `safefile.open_private` (mode 0600, no links followed), and again by
`reopen` (SIGHUP, for logrotate). Every other record type is ignored.
"""
from __future__ import annotations

import os

from orchestrator import safefile


class KeylogSink:
    def __init__(self, path: str):
        self.path = path
        self._fd = safefile.open_private(path)

    def write(self, records) -> None:
        for r in records:
            if r.type == "tls.secret":
                f = r.fields
                line = f"{f['label']} {f['client_random']} {f['secret']}\n".encode("ascii")
                done = 0
                while done < len(line):
                    done += os.write(self._fd, line[done:])

    def reopen(self) -> None:
        """Open the path again (SIGHUP, after logrotate renamed the file away); if that fails the
        error is raised and the sink keeps its current file."""
        if self._fd < 0:
            return              # closed: nothing to reopen
        fd = safefile.open_private(self.path)
        old, self._fd = self._fd, fd
        os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
