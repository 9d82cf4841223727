"""btrfs qgroup limits on a subvolume, by ioctl on its fd (no btrfs-progs, no paths)."""
from __future__ import annotations

import errno
import fcntl
import struct

BTRFS_SUPER_MAGIC = 0x9123683E
FIRST_FREE_OBJECTID = 256  # the root directory inode of every subvolume
QUOTA_TREE_OBJECTID = 8
QGROUP_STATUS_KEY = 240
QGROUP_INFO_KEY = 242
QGROUP_LIMIT_KEY = 244
LIMIT_MAX_RFER = 1
LIMIT_MAX_EXCL = 2


def _iowr(nr: int, size: int, read: bool, write: bool) -> int:
    direction = (2 if read else 0) | (1 if write else 0)
    return (direction << 30) | (size << 16) | (0x94 << 8) | nr


IOC_SUBVOL_CREATE = _iowr(14, 4096, False, True)
IOC_TREE_SEARCH = _iowr(17, 4096, True, True)
IOC_INO_LOOKUP = _iowr(18, 4096, True, True)
IOC_FS_INFO = _iowr(31, 1024, True, False)
IOC_QGROUP_LIMIT = _iowr(43, 48, True, False)
_SEARCH_KEY = struct.Struct("=QQQQQQQIIIIQQQQ")  # 104 bytes
_ITEM_HEADER = struct.Struct("=QQQII")


def subvol_create(parent_fd: int, name: str) -> None:
    """Make subvolume ``name`` in the directory ``parent_fd`` (allowed to ordinary users)."""
    raw = name.encode()
    if not raw or len(raw) > 4000 or b"/" in raw:
        raise OSError(errno.EINVAL, "bad subvolume name")
    buf = bytearray(struct.pack("=q", 0) + raw + b"\0" * (4088 - len(raw)))
    fcntl.ioctl(parent_fd, IOC_SUBVOL_CREATE, buf, True)


def subvol_id(fd: int) -> int:
    buf = bytearray(struct.pack("=QQ", 0, FIRST_FREE_OBJECTID) + b"\0" * 4080)
    fcntl.ioctl(fd, IOC_INO_LOOKUP, buf, True)
    return struct.unpack_from("=Q", buf, 0)[0]


def fs_uuid(fd: int) -> bytes:
    buf = bytearray(1024)
    fcntl.ioctl(fd, IOC_FS_INFO, buf, True)
    return bytes(buf[16:32])


def _search(fd: int, objectid: int, key_type: int, offset: int) -> bytes | None:
    key = _SEARCH_KEY.pack(QUOTA_TREE_OBJECTID, objectid, objectid, offset, offset, 0, 2**64 - 1,
                           key_type, key_type, 1, 0, 0, 0, 0, 0)
    buf = bytearray(key + b"\0" * (4096 - len(key)))
    fcntl.ioctl(fd, IOC_TREE_SEARCH, buf, True)
    nr = struct.unpack_from("=I", buf, 64)[0]
    if not nr:
        return None
    _, _, _, _, length = _ITEM_HEADER.unpack_from(buf, _SEARCH_KEY.size)
    start = _SEARCH_KEY.size + _ITEM_HEADER.size
    return bytes(buf[start:start + length])


def quota_enabled(fd: int) -> bool:
    try:
        return _search(fd, 0, QGROUP_STATUS_KEY, 0) is not None
    except OSError:
        return False


def get_qgroup(fd: int) -> dict[str, int]:
    """Usage and limits of the subvolume's own qgroup 0/<id>."""
    qid = subvol_id(fd)
    info = _search(fd, 0, QGROUP_INFO_KEY, qid)
    limit = _search(fd, 0, QGROUP_LIMIT_KEY, qid)
    used = excl = 0
    if info:
        _, used, _, excl, _ = struct.unpack_from("=QQQQQ", info)
    max_rfer = 0
    if limit:
        flags, max_rfer, _, _, _ = struct.unpack_from("=QQQQQ", limit)
        if not flags & LIMIT_MAX_RFER:
            max_rfer = 0
    return {"qgroup": qid, "bytes": max_rfer, "used_bytes": used, "exclusive_bytes": excl}


def set_limit(fd: int, limit_bytes: int) -> int:
    """Referenced-bytes limit on the subvolume's qgroup (0 clears it: the kernel's CLEAR_VALUE)."""
    value = limit_bytes if limit_bytes else 2**64 - 1
    buf = bytearray(struct.pack("=QQQQQQ", 0, LIMIT_MAX_RFER, value, 0, 0, 0))
    fcntl.ioctl(fd, IOC_QGROUP_LIMIT, buf, True)
    return limit_bytes
