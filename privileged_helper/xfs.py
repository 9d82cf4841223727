"""XFS project quotas on file descriptors: FS_IOC_FS{GET,SET}XATTR and quotactl_fd.

``quotactl_fd`` (syscall 443, Linux 5.14+) needs no device path. On older kernels the
fallback is ``quotactl`` on the block device that /proc/self/mountinfo names for the fd's
``st_dev`` (found by the helper itself, never named by the caller).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

XFS_SUPER_MAGIC = 0x58465342
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820
FS_XFLAG_PROJINHERIT = 0x00000200
_FSXATTR = struct.Struct("=IIIII8s")  # xflags, extsize, nextents, projid, cowextsize, pad

PRJQUOTA = 2
SUBCMDSHIFT = 8


def _xqm(n: int) -> int:
    return (ord("X") << 8) + n


Q_XGETQUOTA = _xqm(3)
Q_XSETQLIM = _xqm(4)
Q_XGETQSTATV = _xqm(8)
FS_QUOTA_PDQ_ACCT = 1 << 4
FS_QUOTA_PDQ_ENFD = 1 << 5
FS_DQUOT_VERSION = 1
FS_PROJ_QUOTA = 2
FS_DQ_ISOFT, FS_DQ_IHARD, FS_DQ_BSOFT, FS_DQ_BHARD = 1, 2, 4, 8
# struct fs_disk_quota (112 bytes)
_DQUOT = struct.Struct("=bbHIQQQQQQiiHHbbbbQQQiHh8s")
BLOCK = 512  # quota block counts are in basic blocks

SYS_QUOTACTL_FD = 443
_SYS_QUOTACTL = {"x86_64": 179, "aarch64": 60}.get(os.uname().machine)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_use_fd_api = True  # switched off after ENOSYS


def qcmd(cmd: int, qtype: int) -> int:
    return (cmd << SUBCMDSHIFT) | (qtype & 0xFF)


def get_fsxattr(fd: int) -> tuple[int, int]:
    """(xflags, projid) of the open file."""
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
    xflags, _, _, projid, _, _ = _FSXATTR.unpack(buf)
    return xflags, projid


def set_projid(fd: int, projid: int, inherit: bool = True) -> None:
    buf = bytearray(_FSXATTR.size)
    fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
    xflags, extsize, nextents, _, cow, pad = _FSXATTR.unpack(buf)
    xflags = (xflags | FS_XFLAG_PROJINHERIT) if inherit else (xflags & ~FS_XFLAG_PROJINHERIT)
    fcntl.ioctl(fd, FS_IOC_FSSETXATTR, _FSXATTR.pack(xflags, extsize, nextents, projid, cow, pad))


def _device_of(fd: int) -> str:
    """The block device mounted for fd's filesystem, from our own mountinfo."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f.read().decode(errors="replace").splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) >= 3 and fields[2] == want and len(rfields) >= 2 and rfields[1].startswith("/dev/"):
                return rfields[1]
    raise OSError(errno.ENODEV, "no block device found for the filesystem")


def quotactl(fd: int, cmd: int, qid: int, buf: ctypes.Array) -> None:
    """quotactl_fd(fd, cmd, id, addr), or quotactl on fd's device where that is missing."""
    global _use_fd_api
    if _use_fd_api:
        r = _libc.syscall(ctypes.c_long(SYS_QUOTACTL_FD), ctypes.c_uint(fd), ctypes.c_uint(cmd), ctypes.c_int(qid),
                          buf)
        if r == 0:
            return
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err))
        _use_fd_api = False
    if _SYS_QUOTACTL is None:
        raise OSError(errno.ENOSYS, "quotactl: unknown architecture")
    dev = _device_of(fd).encode()
    r = _libc.syscall(ctypes.c_long(_SYS_QUOTACTL), ctypes.c_uint(cmd), ctypes.c_char_p(dev), ctypes.c_int(qid), buf)
    if r != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def project_quota_enforced(fd: int) -> bool:
    buf = ctypes.create_string_buffer(512)
    buf[0] = FS_DQUOT_VERSION  # FS_QSTATV_VERSION1
    try:
        quotactl(fd, qcmd(Q_XGETQSTATV, PRJQUOTA), 0, buf)
    except OSError:
        return False
    flags = struct.unpack_from("=H", buf.raw, 2)[0]
    return bool(flags & FS_QUOTA_PDQ_ACCT) and bool(flags & FS_QUOTA_PDQ_ENFD)


def get_quota(fd: int, projid: int) -> dict[str, int]:
    """Limits and usage of a project, in bytes and inodes (zeros for an unknown project)."""
    buf = ctypes.create_string_buffer(_DQUOT.size)
    try:
        quotactl(fd, qcmd(Q_XGETQUOTA, PRJQUOTA), projid, buf)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESRCH):
            return {"bytes": 0, "used_bytes": 0, "inodes": 0, "used_inodes": 0}
        raise
    f = _DQUOT.unpack(buf.raw)
    return {"bytes": f[4] * BLOCK, "used_bytes": f[8] * BLOCK, "inodes": f[6], "used_inodes": f[9]}


def set_limit(fd: int, projid: int, limit_bytes: int) -> int:
    """Hard = soft block limit, rounded up to 512 bytes; returns the bytes set. 0 clears."""
    blocks = -(-limit_bytes // BLOCK)
    if limit_bytes and not blocks:
        raise ValueError("limit rounds to 0 blocks (unlimited)")
    raw = _DQUOT.pack(FS_DQUOT_VERSION, FS_PROJ_QUOTA, FS_DQ_BSOFT | FS_DQ_BHARD, projid, blocks, blocks,
                      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"")
    buf = ctypes.create_string_buffer(raw, _DQUOT.size)
    quotactl(fd, qcmd(Q_XSETQLIM, PRJQUOTA), projid, buf)
    return blocks * BLOCK
