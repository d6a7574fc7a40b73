"""Advisory file locks (``flock``) that name their holder: one study launch, one analysis, one UI at a time.

The kernel releases a lock when its holder dies, however it dies, so a SIGKILLed process leaves no
stale lock. The file holds the holder's pid for the message a second process gets; it is never deleted
(deleting a lock file lets two processes lock two different files).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

from hybridlens.analysis.errors import UserError


def user_lock_dir() -> Path:
    """A folder of this user's own for locks that belong to no workdir (a UI's port, an analysis of a
    remote store): ``TMPDIR/hybridlens-UID``; in a shared ``/tmp`` another user's lock file could not be
    opened."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"hybridlens-{os.getuid()}"


class FileLock:
    """An exclusive ``flock`` on ``path``, holding the holder's pid. ``what`` names the guarded thing in
    messages (``"study 'x'"``): a second process is told ``"{what} is being run by process N"``."""

    def __init__(
        self, path: str | os.PathLike, what: str, busy: str = "{what} is being run by {who}; wait for it or stop it first"
    ):
        self.path, self.what, self.busy = Path(path), what, busy
        self.fd: int | None = None

    def holder(self, fd: int) -> str:
        """The holder's pid as it wrote it (a holder that has just taken the lock writes it a moment later)."""
        import time

        for _ in range(20):
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if pid.isdigit():
                return f"process {pid}"
            time.sleep(0.05)
        return "another process"

    def acquire(self, *, wait: Callable[[str], None] | None = None, inheritable: bool = False) -> "FileLock":
        """Take the lock. Busy: raise a one-line :class:`UserError`, or with ``wait``, call it once with a
        line saying who holds it and block until it is free. ``inheritable`` keeps the lock across
        ``exec`` (the exec'd program then holds it for its life)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot take the lock of {self.what} at {self.path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = self.holder(fd)
            if wait is None:
                os.close(fd)
                raise UserError(self.busy.format(what=self.what, who=who)) from None
            wait(f"{self.what} is being run by {who}; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.set_inheritable(fd, inheritable)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
