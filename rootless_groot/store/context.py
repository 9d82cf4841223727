"""An opened store: its metadata, the config, and entry into its namespace."""
from __future__ import annotations

import os

from ..errors import StoreError
from ..mappings import to_host
from .layout import SUBDIRS, Store, StoreMeta

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from ..config import Config


class StoreContext:
    """An opened store for one command: where it is, what it recorded, and the config."""

    def __init__(self, store: Store, meta: StoreMeta, config: Config):
        self.store = store
        self.meta = meta
        self.config = config
        self.in_namespace = False
        self.keeper_pid: int | None = None  # the keeper joined, if any

    @classmethod
    def open(cls, config: Config) -> "StoreContext":
        """How this caller uses the store (GrootFS's rule): root works in the host namespace,
        translating owners through the store's mappings (Garden's production mode); the store's
        owner works in the store's user namespace (rootless mode). Same files on disk either way.
        """
        store = Store(config.store)
        meta = store.read_meta()
        if os.geteuid() == 0:
            meta = meta.replace(rootless=False)
            if (meta.owner_uid, meta.owner_gid) != (0, 0):
                from ..syscalls import set_fs_ids

                # What root creates (layers, images, locks) belongs to the store's owner, so the
                # owner can use and delete it in rootless mode; root keeps its capabilities.
                set_fs_ids(meta.owner_uid, meta.owner_gid)
            return cls(store, meta, config)
        if os.getuid() != meta.owner_uid or not meta.uid_mappings:
            raise StoreError(f"store {store.root} belongs to uid {meta.owner_uid}, not to you (uid {os.getuid()})")
        return cls(store, meta.replace(rootless=True), config)

    def check_writable(self) -> None:
        """Refuse to change a store whose filesystem is read-only here (the keeper's copy of
        the mount may still be writable if it was remounted read-only after the keeper started)."""
        if self.in_namespace:
            return
        try:
            readonly = os.statvfs(self.store.root).f_flag & os.ST_RDONLY
        except OSError:
            return
        if readonly:
            raise StoreError(f"store {self.store.root} is on a read-only filesystem: nothing was changed")

    def enter(self) -> None:
        """Make the store's files fully reachable: join the keeper's namespaces (rootless only).

        A fresh keeper has an empty mount table, so the images that should be mounted are
        remounted here, from their metadata on disk.
        """
        if not self.meta.rootless or self.in_namespace:
            return
        from .. import namespace

        pid, fresh = namespace.ensure_keeper(self.store, self.meta, self.config.newuidmap_bin, self.config.newgidmap_bin)
        namespace.join(pid)
        self.in_namespace = True
        self.keeper_pid = pid
        if fresh:
            from .images import remount_all

            remount_all(self)

    def start_keeper(self) -> None:
        """Start the namespace's keeper without joining it (rootless only)."""
        if self.meta.rootless and not self.in_namespace:
            from .. import namespace

            namespace.ensure_keeper(self.store, self.meta, self.config.newuidmap_bin, self.config.newgidmap_bin)

    def id_translate(self) -> Callable[[int, int], tuple[int, int]] | None:
        """How tar owners become file owners when unpacking as real root in the host namespace.

        Inside the namespace the kernel translates; as root with identity mapping nothing does.
        """
        if self.meta.rootless or not self.meta.uid_mappings:
            return None
        uids, gids = self.meta.uid_mappings, self.meta.gid_mappings
        root_uid = to_host(uids, 0)
        root_gid = to_host(gids, 0)

        def translate(uid: int, gid: int) -> tuple[int, int]:
            host_uid = to_host(uids, uid)
            host_gid = to_host(gids, gid)
            return (root_uid if host_uid is None else host_uid, root_gid if host_gid is None else host_gid)  # type: ignore[return-value]

        return translate


def init_store(config: Config, uid_mappings, gid_mappings, explicit: bool) -> StoreMeta:
    """Create the store directories and metadata, or check an existing store's mappings.

    Rootless when run by a user; as root, host mode (no namespace), optionally with
    mappings used to translate owners. Idempotent.
    """
    store = Store(config.store)
    rootless = os.geteuid() != 0
    if store.exists():
        meta = store.read_meta()
        if explicit:
            if tuple(uid_mappings) != meta.uid_mappings:
                raise StoreError("provided UID mappings do not match those already configured in the store")
            if tuple(gid_mappings) != meta.gid_mappings:
                raise StoreError("provided GID mappings do not match those already configured in the store")
        _make_subdirs(store)
        return meta
    if rootless:
        if not uid_mappings or uid_mappings[0].ns_id != 0 or uid_mappings[0].host_id != os.getuid():
            raise StoreError(f"a rootless store must map your uid {os.getuid()} to 0 first (--uid-mapping 0:{os.getuid()}:1)")
        if not gid_mappings or gid_mappings[0].ns_id != 0 or gid_mappings[0].host_id != os.getgid():
            raise StoreError(f"a rootless store must map your gid {os.getgid()} to 0 first (--gid-mapping 0:{os.getgid()}:1)")
        owner_uid, owner_gid = os.getuid(), os.getgid()
    else:
        owner_uid = to_host(tuple(uid_mappings), 0) if uid_mappings else 0
        owner_gid = to_host(tuple(gid_mappings), 0) if gid_mappings else 0
        owner_uid = 0 if owner_uid is None else owner_uid
        owner_gid = 0 if owner_gid is None else owner_gid
    meta = StoreMeta(owner_uid, owner_gid, tuple(uid_mappings), tuple(gid_mappings), rootless)
    try:
        os.makedirs(store.root, mode=0o700, exist_ok=True)
        os.chmod(store.root, 0o700)
        _make_subdirs(store)
    except OSError as e:
        from ..hints import store_problem

        raise StoreError(store_problem(store.root) or f"cannot create store {store.root}: {e.strerror}") from None
    store.write_meta(meta)
    if not rootless and (owner_uid, owner_gid) != (0, 0):
        for path in [store.root, store.meta_path, *(os.path.join(store.root, d) for d in SUBDIRS)]:
            os.chown(path, owner_uid, owner_gid)
    return meta


def _make_subdirs(store: Store) -> None:
    for sub in SUBDIRS:
        os.makedirs(os.path.join(store.root, sub), mode=0o700, exist_ok=True)
