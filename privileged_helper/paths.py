"""Proving things about directories on file descriptors, never on path strings.

Every step opens one component with ``O_NOFOLLOW`` relative to the previous fd, then
``fstat``s the fd it got: a symlink swapped in at any moment makes the open fail, and what
was checked is exactly what is acted on. Opens of user directories happen with the fs uid
set to the caller's (``as_caller``), so the kernel's own permission and owner checks apply.
"""
from __future__ import annotations

import ctypes
import os
import stat
from contextlib import contextmanager
from typing import Iterator

from .protocol import HelperError

_libc = ctypes.CDLL(None, use_errno=True)

O_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO could never block us (O_DIRECTORY refuses it before that anyway)
O_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def denied() -> HelperError:
    """The one refusal for anything about the caller's target: no oracle."""
    return HelperError("denied")


def _setfsid(fn, value: int) -> None:
    fn(ctypes.c_uint(value))
    # -1 changes nothing and returns the current value (as a C int: ids above 2^31 come back negative)
    if fn(ctypes.c_uint(0xFFFFFFFF)) & 0xFFFFFFFF != value:
        raise HelperError("failed", "cannot switch the filesystem uid")


@contextmanager
def as_caller(uid: int, gid: int) -> Iterator[None]:
    """Run the block with fsuid/fsgid = the caller's (drops CAP_DAC_OVERRIDE, CAP_FOWNER for fs access)."""
    if uid == 0 and gid == 0:
        yield
        return
    old_uid, old_gid = os.geteuid(), os.getegid()
    _setfsid(_libc.setfsgid, gid)
    _setfsid(_libc.setfsuid, uid)
    try:
        yield
    finally:
        _setfsid(_libc.setfsuid, old_uid)
        _setfsid(_libc.setfsgid, old_gid)


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("f_blocks", ctypes.c_ulong),
                ("f_bfree", ctypes.c_ulong), ("f_bavail", ctypes.c_ulong), ("f_files", ctypes.c_ulong),
                ("f_ffree", ctypes.c_ulong), ("f_fsid", ctypes.c_int * 2), ("f_namelen", ctypes.c_long),
                ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long), ("f_spare", ctypes.c_long * 4)]


def fs_magic(fd: int) -> int:
    buf = _Statfs()
    if _libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.f_type & 0xFFFFFFFF


def open_registered(path: str) -> int:
    """Walk an absolute path from / with O_NOFOLLOW at every step; returns an O_RDONLY dir fd."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise denied()
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", O_DIR_PATH)
    try:
        for i, part in enumerate(parts):
            flags = O_DIR_READ if i == len(parts) - 1 else O_DIR_PATH
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError:
                raise denied() from None
            os.close(fd)
            fd = nfd
        if not parts:
            raise denied()
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_child_dir(parent_fd: int, name: str, uid: int, *, read: bool = True) -> tuple[int, os.stat_result]:
    """Open ``name`` under ``parent_fd``: a real directory (no symlink, FIFO, device), owned by ``uid``."""
    if not name or "/" in name or name in (".", ".."):
        raise denied()
    try:
        fd = os.open(name, O_DIR_READ if read else O_DIR_PATH, dir_fd=parent_fd)
    except OSError:
        raise denied() from None
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        os.close(fd)
        raise denied()
    return fd, st


def entries(dir_fd: int) -> list[str]:
    """Names in an open directory (a dup, so the caller's fd offset is untouched)."""
    dup = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(dup)
    finally:
        os.close(dup)


def check_plain_file(dir_fd: int, name: str, uid: int) -> None:
    """``name`` is a regular file of ``uid`` with one link (no hardlink to someone's file)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        raise denied() from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_nlink != 1:
        raise denied()
