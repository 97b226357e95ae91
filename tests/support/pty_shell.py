"""An interactive shell driven through a real pseudo-terminal.

bash only uses readline (and so only calls ``readline()``, the usual capture
target) when its stdin is a tty; this helper gives it one::

    with PtyShell() as sh:
        out = sh.run("echo hello")        # -> "hello\\n"
        sh.send_line("ls /")               # raw typing
        sh.read_until(b"$ ")

The shell runs as its own session leader with the pty slave as controlling
terminal.  ``PS1='$ '``, ``TERM=dumb`` and ``HISTFILE=/dev/null`` are forced
so nothing lands in anyone's shell history.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
import uuid
from typing import Mapping, Sequence

DEFAULT_ARGV = ("/bin/bash", "--norc", "--noprofile", "-i")


def _make_ctty() -> None:  # runs in the child after setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    def __init__(
        self,
        argv: Sequence[str] = DEFAULT_ARGV,
        env: Mapping[str, str] | None = None,
        cols: int = 500,
        rows: int = 50,
    ) -> None:
        self.argv = tuple(argv)
        base = dict(os.environ if env is None else env)
        base.update(
            {
                "PS1": "$ ",
                "PS2": "> ",
                "TERM": "dumb",
                "HISTFILE": "/dev/null",
                "INPUTRC": "/dev/null",
            }
        )
        base.pop("PROMPT_COMMAND", None)
        self.env = base
        self.cols, self.rows = cols, rows
        self.proc: subprocess.Popen | None = None
        self.master_fd: int | None = None
        self._buf = b""
        self.last_status: int | None = None
        self.transcript = bytearray()  # everything ever read from the pty

    # ---- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "PtyShell":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ,
                        struct.pack("HHHH", self.rows, self.cols, 0, 0))
            self.proc = subprocess.Popen(
                self.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=self.env,
                start_new_session=True,
                preexec_fn=_make_ctty,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master_fd = master
        os.set_blocking(master, False)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("shell not started")
        return self.proc.pid

    def close(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                self.send_line("exit")
            except OSError:
                pass
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                self._drain(0.05)  # keep the pty from filling up
            if proc.poll() is None:
                for sig in (signal.SIGHUP, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=2)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        if proc is not None:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if self.master_fd is not None:
            os.close(self.master_fd)
            self.master_fd = None

    # ---- I/O ---------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        assert self.master_fd is not None, "shell not started"
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master_fd, view)
            except BlockingIOError:
                select.select([], [self.master_fd], [], 1.0)
                continue
            view = view[n:]

    def send_line(self, text: str) -> None:
        # "\r" is what a terminal sends for Enter (icrnl maps it to "\n").
        self.send(text + "\r")

    def _drain(self, wait: float) -> bool:
        """Read whatever is available within `wait` s. Returns False on EOF."""
        assert self.master_fd is not None
        r, _, _ = select.select([self.master_fd], [], [], wait)
        if not r:
            return True
        try:
            chunk = os.read(self.master_fd, 65536)
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno == errno.EIO:  # slave side closed: shell exited
                return False
            raise
        if not chunk:
            return False
        self._buf += chunk
        self.transcript += chunk
        return True

    def read_until(self, marker: bytes | str, timeout: float = 5.0) -> bytes:
        """Return all output up to and including `marker`; later output stays buffered.

        Raises TimeoutError (or EOFError if the shell exited) with what was read.
        """
        if isinstance(marker, str):
            marker = marker.encode()
        deadline = time.monotonic() + timeout
        while True:
            idx = self._buf.find(marker)
            if idx >= 0:
                end = idx + len(marker)
                out, self._buf = self._buf[:end], self._buf[end:]
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"marker {marker!r} not seen; got {self._buf[-2000:]!r}")
            if not self._drain(min(left, 0.2)):
                idx = self._buf.find(marker)
                if idx >= 0:
                    continue
                raise EOFError(f"shell exited before {marker!r}; got {self._buf[-2000:]!r}")

    def read_available(self, wait: float = 0.1) -> bytes:
        """Return (and consume) whatever output arrives within `wait` seconds."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self._drain(max(0.0, deadline - time.monotonic())):
            pass
        out, self._buf = self._buf, b""
        return out

    def run(self, cmd: str, timeout: float = 5) -> str:
        """Type `cmd` at the prompt, wait for it to finish, return its output.

        The output has "\\r\\n" normalised to "\\n"; the exit status is left in
        `.last_status`.  The typed line ends with ``printf '%s_%s_%d\\n' TOKEN
        TAG $?`` so the echoed command line (which contains "TOKEN TAG") never
        matches the printed marker ("TOKEN_TAG_<status>").
        """
        token = f"__ECAP_END_{uuid.uuid4().hex}"
        tag = "X"
        typed_marker = f"{token} {tag}".encode()
        self.send_line(f"{cmd}; printf '%s_%s_%d\\n' {token} {tag} \"$?\"")
        out_marker = f"{token}_{tag}_".encode()
        data = self.read_until(out_marker, timeout=timeout)
        tail = self.read_until(b"\n", timeout=timeout)
        try:
            self.last_status = int(tail.strip())
        except ValueError:
            self.last_status = None
        body = data[: -len(out_marker)]
        # Skip past the (last) echo of the typed command line.
        pos = body.rfind(typed_marker)
        if pos >= 0:
            nl = body.find(b"\n", pos)
            body = body[nl + 1 :] if nl >= 0 else b""
        return body.replace(b"\r\n", b"\n").replace(b"\r", b"").decode(errors="replace")


__all__ = ["PtyShell", "DEFAULT_ARGV"]
