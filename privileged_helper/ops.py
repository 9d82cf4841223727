"""The three operations (set, get, clear) and store registration, as plain functions.

``handle`` is what the setuid entry point calls with the caller's real uid; rootless-groot
calls the same function directly when it runs as root. Order of proof for every request:
registered store -> caller is its owner (or root, who then acts as the owner) -> walk to the store with O_NOFOLLOW ->
the filesystem is the registered kind with quotas enforced -> as the caller, open
``images/<id>`` with O_NOFOLLOW|O_DIRECTORY -> fstat: a directory owned by the caller on
the store's filesystem -> only then touch quota state.
"""
from __future__ import annotations

import os
from typing import Any

from . import btrfs, xfs
from .paths import as_caller, check_plain_file, denied, entries, fs_magic, open_child_dir, open_registered
from .protocol import HelperError
from .state import Registration, Roots, State, load_config, load_registration, save_registration

# What an image dir may hold when it gets its limit (created by rootless-groot a moment ago).
IMAGE_ENTRIES = {"diff", "workdir", "rootfs", "image.json", "image.json.pending"}
BTRFS_VOLUME = "vol"  # btrfs: diff/ and workdir/ live in this subvolume (rename must not cross subvolumes)


def handle(req: dict[str, Any], ruid: int, rgid: int, roots: Roots | None = None) -> dict[str, Any]:
    roots = roots or Roots()
    reg = load_registration(roots, req["store"])
    if reg is None or (ruid != 0 and ruid != reg.owner_uid):
        raise denied()
    store_fd = open_registered(reg.path)
    try:
        st = os.fstat(store_fd)
        if st.st_uid not in (reg.owner_uid, 0):
            raise denied()
        capped = ruid != 0  # per-user caps bind users, not root (Garden's plugin, admins)
        if ruid == 0 and reg.owner_uid != 0:
            # Root (Garden's plugin on a store with mappings) acts for the store's owner: the
            # image dirs are the owner's, and the owner may clear what root set.
            ruid, rgid = reg.owner_uid, st.st_gid
        if reg.fs == "xfs":
            if fs_magic(store_fd) != xfs.XFS_SUPER_MAGIC or not xfs.project_quota_enforced(store_fd):
                raise HelperError("unsupported", "the store's filesystem is not XFS with project quotas enforced")
            return _xfs(req, reg, roots, store_fd, ruid, rgid, capped)
        if fs_magic(store_fd) != btrfs.BTRFS_SUPER_MAGIC or not btrfs.quota_enabled(store_fd):
            raise HelperError("unsupported", "the store's filesystem is not btrfs with quotas enabled")
        return _btrfs(req, store_fd, ruid, rgid)
    finally:
        os.close(store_fd)


def _open_image(store_fd: int, image: str, uid: int) -> tuple[int, os.stat_result]:
    images_fd, _ = open_child_dir(store_fd, "images", uid, read=False)
    try:
        return open_child_dir(images_fd, image, uid)
    finally:
        os.close(images_fd)


def _check_fresh(image_fd: int, uid: int, allowed: set[str]) -> None:
    """The dir holds only what rootless-groot put there: no hardlinks, no foreign files."""
    names = entries(image_fd)
    if not set(names) <= allowed:
        raise denied()
    for name in names:
        if name in ("image.json", "image.json.pending"):
            check_plain_file(image_fd, name, uid)
        elif name in ("diff", "workdir", "rootfs"):
            fd, _ = open_child_dir(image_fd, name, uid)
            try:
                if entries(fd):
                    raise denied()
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------- XFS


def _xfs(req: dict[str, Any], reg: Registration, roots: Roots, store_fd: int, ruid: int, rgid: int,
         capped: bool = True) -> dict[str, Any]:
    with as_caller(ruid, rgid):
        image_fd, ist = _open_image(store_fd, req["image"], ruid)
    try:
        if ist.st_dev != os.fstat(store_fd).st_dev:
            raise denied()
        with State(roots) as state:
            _, current = xfs.get_fsxattr(image_fd)
            alloc = state.for_dir(reg.name, ruid, ist.st_dev, ist.st_ino)
            if alloc is not None and current not in (0, alloc.projid):
                raise denied()
            if alloc is None and current != 0 and req["op"] == "set":
                raise denied()  # tagged by someone else: never adopt a project ID we did not hand out
            if req["op"] == "get":
                if alloc is None or current != alloc.projid:
                    raise denied()
                q = xfs.get_quota(store_fd, alloc.projid)
                return {"ok": True, "projid": alloc.projid, **q}
            if req["op"] == "clear":
                if alloc is None:
                    raise denied()
                xfs.set_limit(store_fd, alloc.projid, 0)
                state.free(alloc.projid)
                return {"ok": True}
            config = load_config(roots) if capped else None
            if alloc is None:
                with as_caller(ruid, rgid):
                    _check_fresh(image_fd, ruid, IMAGE_ENTRIES)
                _collect_stale(state, reg.name, store_fd)
                if config and len(state.of_user(ruid)) >= config.max_allocations_per_user:
                    _collect_stale_of_user(state, ruid, roots)
            if config:
                state.check_user_caps(ruid, config, req["bytes"], alloc)
            if alloc is None:
                alloc = state.allocate(reg.name, ruid, ist.st_dev, ist.st_ino, req["image"],
                                       lambda p: _xfs_unused(store_fd, p))
            limit = xfs.set_limit(store_fd, alloc.projid, req["bytes"])
            state.set_bytes(alloc.projid, limit)
            # Limit first, then tag: never a tagged directory without its limit.
            with as_caller(ruid, rgid):
                _tag(image_fd, alloc.projid, ruid)
            return {"ok": True, "projid": alloc.projid, "bytes": limit}
    finally:
        os.close(image_fd)


def _xfs_unused(store_fd: int, projid: int) -> bool:
    q = xfs.get_quota(store_fd, projid)
    return q["used_inodes"] == 0 and q["used_bytes"] == 0


def _collect_stale(state: State, store: str, store_fd: int) -> None:
    """Free this store's IDs that no inode carries any more (images deleted without ``clear``).

    A live image always counts its own directory, so zero inodes means it is gone.
    """
    for alloc in state.of_store(store):
        if _xfs_unused(store_fd, alloc.projid):
            xfs.set_limit(store_fd, alloc.projid, 0)
            state.free(alloc.projid)


def _collect_stale_of_user(state: State, uid: int, roots: Roots) -> None:
    """The caller is at the cap: free their IDs, in any of their XFS stores, that nothing carries."""
    stores = {a.store for a in state.of_user(uid)}
    for name in stores:
        reg = load_registration(roots, name)
        if reg is None:
            for a in [a for a in state.of_user(uid) if a.store == name]:
                state.free(a.projid)  # the store is no longer registered
            continue
        if reg.fs != "xfs":
            continue
        try:
            fd = open_registered(reg.path)
        except (OSError, HelperError):
            continue
        try:
            if fs_magic(fd) == xfs.XFS_SUPER_MAGIC:
                _collect_stale(state, name, fd)
        finally:
            os.close(fd)


def _tag(image_fd: int, projid: int, uid: int) -> None:
    """Project ID + PROJINHERIT on the image dir and its (empty) diff/, workdir/, rootfs/."""
    xfs.set_projid(image_fd, projid)
    for name in ("diff", "workdir", "rootfs"):
        try:
            fd, _ = open_child_dir(image_fd, name, uid)
        except HelperError:
            continue
        try:
            xfs.set_projid(fd, projid)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- btrfs


def _btrfs(req: dict[str, Any], store_fd: int, ruid: int, rgid: int) -> dict[str, Any]:
    """The limit sits on the qgroup of ``images/<id>/vol``, a subvolume the caller made."""
    with as_caller(ruid, rgid):
        image_fd, _ = _open_image(store_fd, req["image"], ruid)
        try:
            vol_fd, vst = open_child_dir(image_fd, BTRFS_VOLUME, ruid)
        finally:
            os.close(image_fd)
    try:
        if (vst.st_ino != btrfs.FIRST_FREE_OBJECTID or fs_magic(vol_fd) != btrfs.BTRFS_SUPER_MAGIC
                or btrfs.fs_uuid(vol_fd) != btrfs.fs_uuid(store_fd)):
            raise denied()
        if req["op"] == "get":
            return {"ok": True, **btrfs.get_qgroup(vol_fd)}
        if req["op"] == "set" and req["bytes"] < btrfs.MIN_LIMIT:
            raise HelperError("invalid", f"btrfs limits start at {btrfs.MIN_LIMIT} bytes")
        qgroup = btrfs.subvol_id(vol_fd)
        # Through the store's fd: through the volume's own, a qgroup over its limit gets EDQUOT.
        limit = btrfs.set_limit(store_fd, req["bytes"] if req["op"] == "set" else 0, qgroup)
        btrfs.remove_stale_qgroups(store_fd)
        if req["op"] == "clear":
            return {"ok": True}
        return {"ok": True, "qgroup": qgroup, "bytes": limit}
    finally:
        os.close(vol_fd)


# ---------------------------------------------------------------------------- registration (root only)


def register(name: str, path: str, owner_uid: int, backing: str | None = None, roots: Roots | None = None) -> Registration:
    """Record a store for the helper after checking its filesystem can enforce limits."""
    roots = roots or Roots()
    fd = open_registered(path)
    try:
        magic = fs_magic(fd)
        if magic == xfs.XFS_SUPER_MAGIC and xfs.project_quota_enforced(fd):
            fs = "xfs"
        elif magic == btrfs.BTRFS_SUPER_MAGIC and btrfs.quota_enabled(fd):
            fs = "btrfs"
        else:
            raise HelperError("unsupported", f"{path} is neither XFS with project quotas (prjquota) nor btrfs "
                                             "with quotas enabled")
    finally:
        os.close(fd)
    reg = Registration(name, path, owner_uid, fs, backing)
    save_registration(roots, reg)
    return reg
