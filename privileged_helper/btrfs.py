"""btrfs qgroup limits on a subvolume, by ioctl on its fd (no btrfs-progs, no paths)."""
from __future__ import annotations

import errno
import fcntl
import struct

BTRFS_SUPER_MAGIC = 0x9123683E
FIRST_FREE_OBJECTID = 256  # the root directory inode of every subvolume
ROOT_TREE_OBJECTID = 1
QUOTA_TREE_OBJECTID = 8
ROOT_ITEM_KEY = 132
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
IOC_QGROUP_CREATE = _iowr(42, 16, False, True)
IOC_QGROUP_LIMIT = _iowr(43, 48, True, False)
MIN_LIMIT = 256 * 1024  # GrootFS's smallest btrfs limit: below it the qgroup's own metadata hits it
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


def _search_items(fd: int, tree: int, min_objectid: int, max_objectid: int, key_type: int, min_offset: int,
                  max_offset: int, max_items: int) -> list[tuple[int, int, bytes]]:
    """(objectid, offset, item data) of up to ``max_items`` items of one key type, in key order."""
    key = _SEARCH_KEY.pack(tree, min_objectid, max_objectid, min_offset, max_offset, 0, 2**64 - 1,
                           key_type, key_type, max_items, 0, 0, 0, 0, 0)
    buf = bytearray(key + b"\0" * (4096 - len(key)))
    fcntl.ioctl(fd, IOC_TREE_SEARCH, buf, True)
    nr = struct.unpack_from("=I", buf, 64)[0]
    out, pos = [], _SEARCH_KEY.size
    for _ in range(nr):
        _, objectid, offset, ktype, length = _ITEM_HEADER.unpack_from(buf, pos)
        pos += _ITEM_HEADER.size
        if ktype == key_type:
            out.append((objectid, offset, bytes(buf[pos:pos + length])))
        pos += length
    return out


def _search(fd: int, objectid: int, key_type: int, offset: int) -> bytes | None:
    items = _search_items(fd, QUOTA_TREE_OBJECTID, objectid, objectid, key_type, offset, offset, 1)
    return items[0][2] if items else None


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


def set_limit(fd: int, limit_bytes: int, qgroupid: int = 0) -> int:
    """Referenced-bytes limit on a qgroup (0 clears it: the kernel's CLEAR_VALUE).

    ``qgroupid`` 0 means the subvolume of ``fd``. The kernel charges the transaction to the
    subvolume of ``fd``: once a subvolume's usage is above its limit, changing the limit
    through its own fd fails with EDQUOT, so callers pass another subvolume's fd (the
    store's) and the qgroup id.
    """
    value = limit_bytes if limit_bytes else 2**64 - 1
    buf = bytearray(struct.pack("=QQQQQQ", qgroupid, LIMIT_MAX_RFER, value, 0, 0, 0))
    fcntl.ioctl(fd, IOC_QGROUP_LIMIT, buf, True)
    return limit_bytes


def subvol_exists(fd: int, subvol: int) -> bool:
    return bool(_search_items(fd, ROOT_TREE_OBJECTID, subvol, subvol, ROOT_ITEM_KEY, 0, 2**64 - 1, 1))


def remove_stale_qgroups(fd: int, limit: int = 64) -> list[int]:
    """Destroy level-0 qgroups whose subvolume is gone (``<stale>`` in ``btrfs qgroup show``).

    The kernel drops a deleted subvolume's qgroup itself once the cleaner is done with it,
    but not always (and not before); a qgroup still counting blocks answers EBUSY and is
    left for the next call. At most ``limit`` are looked at per call.
    """
    removed = []
    for _, qgroupid, _ in _search_items(fd, QUOTA_TREE_OBJECTID, 0, 0, QGROUP_INFO_KEY, 256, (1 << 48) - 1, limit):
        if subvol_exists(fd, qgroupid):
            continue
        try:
            fcntl.ioctl(fd, IOC_QGROUP_CREATE, struct.pack("=QQ", 0, qgroupid))
            removed.append(qgroupid)
        except OSError:
            continue
    return removed
