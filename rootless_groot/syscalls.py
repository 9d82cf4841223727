"""Thin ctypes wrappers for the Linux system calls Python 3.11 does not expose.

Python 3.12 added ``os.unshare``/``os.setns``, but we support 3.11 (Debian 12's
interpreter), and ``mount``, the new mount API and ``openat2`` are in no version.
Every wrapper raises ``OSError`` with the real errno, so callers can react to it.

The bindings use the ``_ctypes`` extension directly: the ``ctypes`` package around it costs
~1.1 ms to import (its type classes, ``_c._endian``), a tenth of a mounted create.
"""
from __future__ import annotations

import os
import struct

import _ctypes


class _c:  # the few C types the calls below pass (LP64: long and size_t are 64 bits)
    class c_int(_ctypes._SimpleCData):
        _type_ = "i"

    class c_uint(_ctypes._SimpleCData):
        _type_ = "I"

    class c_long(_ctypes._SimpleCData):
        _type_ = "l"

    class c_ulong(_ctypes._SimpleCData):
        _type_ = "L"

    c_size_t = c_ulong
    get_errno = staticmethod(_ctypes.get_errno)


class _Function(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _c.c_int


class _Libc:
    """Functions of the C library, looked up on first use (like ``_c.CDLL(None)``)."""

    _handle = _ctypes.dlopen(None, os.RTLD_NOW)

    def __getattr__(self, name: str) -> _Function:
        function = _Function((name, self))
        setattr(self, name, function)
        return function


_libc = _Libc()

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

# Syscall numbers of the new mount API and openat2 are the same on every
# architecture (they were allocated after the tables were unified).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_OPENAT2 = 437
_SYS_SYNCFS = {"x86_64": 306, "aarch64": 267}.get(os.uname().machine)

FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

_syscall = _libc.syscall
_syscall.restype = _c.c_long


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = _c.get_errno()
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def unshare(flags: int) -> None:
    """unshare(2): move this process into new namespaces."""
    _check(_libc.unshare(_c.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    """setns(2): join the namespace behind ``fd`` (the process must be single-threaded for users)."""
    _check(_libc.setns(_c.c_int(fd), _c.c_int(nstype)), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2) with the classic option string (limited to one page by the kernel)."""
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            _c.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        "mount",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(target.encode(), _c.c_int(flags)), "umount", target)


def fsopen(fstype: str) -> int:
    """fsopen(2): start configuring a new filesystem instance; returns an fs context fd."""
    return _check(_syscall(_SYS_FSOPEN, fstype.encode(), FSOPEN_CLOEXEC), "fsopen")


def fsconfig(fs_fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    """fsconfig(2) for flag, string and create commands."""
    _check(
        _syscall(
            _SYS_FSCONFIG,
            _c.c_int(fs_fd),
            _c.c_uint(cmd),
            key.encode() if key is not None else None,
            value.encode() if value is not None else None,
            _c.c_int(0),
        ),
        f"fsconfig {key or ''}".rstrip(),
        value,
    )


def fsmount(fs_fd: int) -> int:
    """fsmount(2): turn a created fs context into a detached mount; returns its fd."""
    return _check(_syscall(_SYS_FSMOUNT, _c.c_int(fs_fd), FSMOUNT_CLOEXEC, 0), "fsmount")


def move_mount_fd(mount_fd: int, target: str) -> None:
    """move_mount(2): attach a detached mount at an absolute ``target`` path."""
    _check(
        _syscall(
            _SYS_MOVE_MOUNT,
            _c.c_int(mount_fd),
            b"",
            _c.c_int(-100),  # AT_FDCWD
            target.encode(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ),
        "move_mount",
        target,
    )


def openat2(dir_fd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2) with ``struct open_how``; returns the new fd."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, resolve)
    raw = path.encode() if isinstance(path, str) else path
    return _check(
        _syscall(_SYS_OPENAT2, _c.c_int(dir_fd), raw, how, _c.c_size_t(len(how))),
        "openat2",
        raw.decode(errors="replace"),
    )


def syncfs(fd: int) -> None:
    """syncfs(2): flush the filesystem holding ``fd`` (one call per layer, not one per file)."""
    if _SYS_SYNCFS is None:
        os.sync()
        return
    _check(_libc.syncfs(_c.c_int(fd)), "syncfs")


def set_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): die with our parent, so a killed command stops its workers."""
    _check(_libc.prctl(_c.c_int(1), _c.c_ulong(sig), 0, 0, 0), "prctl")


_CAP_VERSION_3 = 0x20080522


def set_fs_ids(uid: int, gid: int) -> tuple[int, int]:
    """setfsgid + setfsuid (files we create get these owners), then re-raise every permitted
    capability into the effective set (the kernel drops CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER,
    CAP_MKNOD... when the fs uid leaves 0). Root keeps its powers and acts as ``uid`` on disk.
    Returns the previous (fsuid, fsgid). Per thread: call it while single-threaded."""
    mask = 0xFFFFFFFF  # the calls return the previous id as a C int
    old_gid = _libc.setfsgid(_c.c_uint(gid)) & mask
    old_uid = _libc.setfsuid(_c.c_uint(uid)) & mask
    if _libc.setfsuid(_c.c_uint(mask)) & mask != uid or _libc.setfsgid(_c.c_uint(mask)) & mask != gid:
        raise OSError(1, f"cannot switch the filesystem ids to {uid}:{gid}")
    header = (_c.c_uint * 2)(_CAP_VERSION_3, 0)
    data = (_c.c_uint * 6)()  # two {effective, permitted, inheritable} words
    _check(_libc.capget(header, data), "capget")
    data[0], data[3] = data[1], data[4]
    _check(_libc.capset(header, data), "capset")
    return old_uid, old_gid
