"""flock(2)-based locks in ``<store>/locks``: released by the kernel when a process dies."""
from __future__ import annotations

import fcntl
import os


class flocked:
    """``with flocked(path, exclusive)``: hold a lock on ``path`` (created if missing) for the block.

    A class rather than ``contextlib.contextmanager``, which every command would pay to import.
    """

    def __init__(self, path: str, exclusive: bool = True):
        self.path = path
        self.exclusive = exclusive
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def try_flock(path: str) -> int | None:
    """Take an exclusive lock without waiting; the fd (to close later) or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
