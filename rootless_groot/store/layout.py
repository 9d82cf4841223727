"""Where things live in a store, and its metadata file ``store.json``.

Layout::

    store.json              format version, owner, id mappings, mode (namespace or host)
    layers/<chainid>/diff   an unpacked layer (a lowerdir); layers/<chainid>/layer.json its size, diffID
    l/<short>               short symlink to layers/<chainid>/diff, for page-sized mount options
    images/<id>/            diff/ (upperdir), workdir/, rootfs/ (mountpoint), image.json
    tmp/                    work in progress; only ``rename`` moves things out of it
    locks/                  flock files
    run/                    the keeper's pid (rootless stores)

Everything in ``layers/`` and ``images/`` appears by rename, complete, so a crash never leaves
something that looks finished.
"""
from __future__ import annotations

import os

from ..errors import StoreError
from ..fastjson import dumps, loads
from ..mappings import IDMapping, parse_mappings
from ..record import Record

FORMAT_VERSION = 1
SHORT_ID_LEN = 16
SUBDIRS = ("layers", "l", "images", "tmp", "locks", "run")


def corrupt_meta(path: str) -> StoreError:
    root = os.path.dirname(path)
    return StoreError(f"store metadata {path} is corrupt: restore it, or remove the store with "
                      f"`rootless-groot --store {root} delete-store --force` (its images are lost)")


class StoreMeta(Record):
    """What ``init-store`` recorded: checked by every later command."""

    __slots__ = ("owner_uid", "owner_gid", "uid_mappings", "gid_mappings", "rootless")

    owner_uid: int
    owner_gid: int
    uid_mappings: tuple[IDMapping, ...]
    gid_mappings: tuple[IDMapping, ...]
    rootless: bool  # True: unpack and mount inside a user namespace held by a keeper

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "owner": {"uid": self.owner_uid, "gid": self.owner_gid},
            "uid_mappings": [str(m) for m in self.uid_mappings],
            "gid_mappings": [str(m) for m in self.gid_mappings],
            "rootless": self.rootless,
        }

    @classmethod
    def from_json(cls, data: dict, path: str) -> "StoreMeta":
        try:
            if data["version"] != FORMAT_VERSION:
                raise StoreError(f"store {path} has format version {data['version']}, this rootless-groot reads {FORMAT_VERSION}")
            return cls(
                owner_uid=int(data["owner"]["uid"]),
                owner_gid=int(data["owner"]["gid"]),
                uid_mappings=parse_mappings(data["uid_mappings"]),
                gid_mappings=parse_mappings(data["gid_mappings"]),
                rootless=bool(data["rootless"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise corrupt_meta(path) from None


class Store:
    """Paths of one store; no I/O beyond what each method says."""

    def __init__(self, root: str):
        self.root = root
        self.meta_path = os.path.join(root, "store.json")
        self.layers = os.path.join(root, "layers")
        self.links = os.path.join(root, "l")
        self.images = os.path.join(root, "images")
        self.tmp = os.path.join(root, "tmp")
        self.locks = os.path.join(root, "locks")
        self.run = os.path.join(root, "run")

    def layer_dir(self, chain_id: str) -> str:
        return os.path.join(self.layers, chain_id)

    def layer_diff(self, chain_id: str) -> str:
        return os.path.join(self.layers, chain_id, "diff")

    def short_link(self, chain_id: str) -> str:
        return os.path.join(self.links, chain_id[:SHORT_ID_LEN])

    def image_dir(self, image_id: str) -> str:
        return os.path.join(self.images, image_id)

    def lock_path(self, name: str) -> str:
        return os.path.join(self.locks, f"{name}.lock")

    def exists(self) -> bool:
        return os.path.exists(self.meta_path)

    def read_meta(self) -> StoreMeta:
        try:
            with open(self.meta_path) as f:
                data = loads(f.read())
        except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
            if isinstance(e, FileNotFoundError):
                from .. import log

                log.error("no-store", error=f"no store found at {self.root}")  # GrootFS's words, in the log
            from ..hints import store_problem

            problem = store_problem(self.root)
            if problem:
                raise StoreError(problem) from None
            if isinstance(e, PermissionError):
                raise StoreError(f"store {self.root} belongs to another user") from None
            raise StoreError(f"no store found at {self.root}") from None
        except (ValueError, UnicodeDecodeError):
            raise corrupt_meta(self.meta_path) from None
        if not isinstance(data, dict):
            raise corrupt_meta(self.meta_path)
        return StoreMeta.from_json(data, self.meta_path)

    def write_meta(self, meta: StoreMeta) -> None:
        tmp = f"{self.meta_path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(dumps(meta.to_json()) + "\n")
        os.rename(tmp, self.meta_path)
