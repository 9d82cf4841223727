"""Removing a store whatever state its metadata is in (``delete-store [--force]``)."""
from __future__ import annotations

import os

from .. import log
from ..errors import StoreError
from .layout import Store, StoreMeta

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config


def _looks_like_store(store: Store) -> bool:
    """A directory ``init-store`` made (its metadata may be missing: killed mid-init)."""
    return all(os.path.isdir(os.path.join(store.root, sub)) for sub in ("layers", "images", "tmp"))


def delete_store(config: Config, force: bool) -> None:
    """Unmount every image, stop the keeper(s) and remove the store.

    With a corrupt or missing ``store.json``, ``force`` is needed: the store's namespace is
    then the running keeper's, or a new one with this user's default mappings.
    """
    from . import context
    from .layers import remove_tree

    store = Store(config.store)
    rootful = os.geteuid() == 0  # decided now: inside the store's namespace we are uid 0 too
    meta: StoreMeta | None = None
    if store.exists():
        try:
            meta = store.read_meta()
        except StoreError:
            if not force:
                raise
    elif not _looks_like_store(store):
        try:
            os.lstat(store.root)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot delete store {store.root}: {e.strerror}") from None
        # GrootFS: exit 1, and keep a directory that is not a store
        raise StoreError(f"{store.root} is not a store: not deleting it")
    if meta is not None:
        ctx = context.StoreContext.open(config)
        ctx.enter()
    elif not rootful:
        _enter_unknown(store, config)
    _unmount_images(store)
    from .. import namespace

    if not rootful:
        namespace.stop_keeper(store)
    else:  # root: the keeper of the store's owner, if the owner used it rootless
        owner = meta.owner_uid if meta is not None else os.stat(store.root).st_uid
        if owner != 0:
            namespace.stop_keeper(store, owner)
    remove_tree(store.root)
    log.info("store.deleted", store=store.root, forced=meta is None)


def _enter_unknown(store: Store, config: Config) -> None:
    """Join the store's running keeper, or a new namespace with the default mappings."""
    from .. import namespace
    from ..mappings import default_mappings

    pid = namespace.running_keeper(store)
    if pid is None:
        uids, gids = default_mappings()
        guess = StoreMeta(os.getuid(), os.getgid(), uids, gids, True)
        pid, _ = namespace.ensure_keeper(store, guess, config.newuidmap_bin, config.newgidmap_bin)
    namespace.join(pid)


def _unmount_images(store: Store) -> None:
    from ..mount import is_mountpoint, unmount

    try:
        names = os.listdir(store.images)
    except FileNotFoundError:
        return
    for name in names:
        rootfs = os.path.join(store.image_dir(name), "rootfs")
        for _ in range(8):
            unmount(rootfs)
            if not is_mountpoint(rootfs):
                break
