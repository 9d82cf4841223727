"""Root-owned configuration (registered stores) and state (project-ID allocations).

Layout (defaults; tests pass other roots to the functions, the installed helper never does)::

    /etc/rootless-groot/stores.d/<name>.json        one registered store (root 0644)
    /var/lib/rootless-groot-helper/projids.json     allocations (root 0600)
    /var/lib/rootless-groot-helper/lock             flock for allocation

Every file is opened with ``O_NOFOLLOW`` and must be a regular file owned by root, writable
by nobody else; every directory likewise (checked with ``fstat`` on the opened fd). The
state is replaced atomically (temp file, fsync, rename, fsync dir), so a SIGKILL at any
point leaves either the old or the new state.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

from .protocol import HelperError, valid_store_name

CONFIG_DIR = "/etc/rootless-groot"
STATE_DIR = "/var/lib/rootless-groot-helper"
PROJID_MIN = 100_000  # never 0 (no project) or 1; above IDs admins typically hand out by hand
PROJID_MAX = 0x7FFF_FFFF
MAX_FILE = 1 << 20  # a registration or the helper's config
MAX_STATE_FILE = 64 << 20  # the allocations: each user holds at most max_allocations_per_user of them
MAX_ALLOCATIONS_PER_USER = 1024  # defaults of helper.json
MAX_BYTES_PER_USER = 0  # 0: no cap on the sum of one user's limits
MAX_SCAN = 4096  # candidate IDs looked at per allocation before giving up (exhausted)
FS_TYPES = ("xfs", "btrfs")


@dataclass(frozen=True)
class Roots:
    config_dir: str = CONFIG_DIR
    state_dir: str = STATE_DIR
    projid_min: int = PROJID_MIN
    projid_max: int = PROJID_MAX

    @property
    def stores_dir(self) -> str:
        return os.path.join(self.config_dir, "stores.d")


@dataclass(frozen=True)
class Registration:
    name: str
    path: str  # absolute, normalised; walked component by component with O_NOFOLLOW
    owner_uid: int
    fs: str  # "xfs" | "btrfs"
    backing: str | None = None  # the sparse file mounted at path, when init-store made one

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "name": self.name, "path": self.path, "owner_uid": self.owner_uid, "fs": self.fs,
                "backing": self.backing}


def _check_root_owned(st: os.stat_result, kind: Callable[[int], bool], what: str) -> None:
    if not kind(st.st_mode) or st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise HelperError("failed", f"{what} must be root-owned and writable only by root")


def open_trusted_dir(path: str, create: bool = False, mode: int = 0o755) -> int:
    """Open an absolute directory path, every component root-owned and not writable by others."""
    if not os.path.isabs(path):
        raise HelperError("failed", "trusted paths must be absolute")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_root_owned(os.fstat(fd), stat.S_ISDIR, "/")
        for part in [p for p in path.split("/") if p]:
            if part in (".", ".."):
                raise HelperError("failed", "trusted paths must be normalised")
            try:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                raise HelperError("failed", f"{path}: not a plain directory") from None
            os.close(fd)
            fd = nfd
            _check_root_owned(os.fstat(fd), stat.S_ISDIR, path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _read_trusted_file(dir_fd: int, name: str, max_size: int = MAX_FILE) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:
        raise HelperError("failed", f"{name}: cannot open") from None
    try:
        st = os.fstat(fd)
        _check_root_owned(st, stat.S_ISREG, name)
        if st.st_size > max_size:
            raise HelperError("failed", f"{name}: too large")
        return os.read(fd, max_size + 1)  # a regular file: one read returns it whole
    finally:
        os.close(fd)


def _write_atomic(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    tmp = f".{name}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)


def _open_rw_dir(path: str, create: bool, mode: int) -> int:
    """A trusted dir opened for real (O_RDONLY), so it can be fsynced and flocked."""
    pfd = open_trusted_dir(path, create=create, mode=mode)
    try:
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)


# ---------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class HelperConfig:
    """``<config_dir>/helper.json`` (root-owned, optional): per-user caps.

    ``{"max_allocations_per_user": 1024, "max_bytes_per_user": 0}``: how many images one
    user may have a disk limit on at once (XFS project IDs), and the sum of those limits in
    bytes (0: no cap). They bound what one user can make the shared state hold.
    """

    max_allocations_per_user: int = MAX_ALLOCATIONS_PER_USER
    max_bytes_per_user: int = MAX_BYTES_PER_USER


def load_config(roots: Roots) -> HelperConfig:
    try:
        dfd = open_trusted_dir(roots.config_dir)
    except FileNotFoundError:
        return HelperConfig()
    try:
        raw = _read_trusted_file(dfd, "helper.json")
    finally:
        os.close(dfd)
    if raw is None:
        return HelperConfig()
    try:
        doc = json.loads(raw)
        config = HelperConfig(**doc)
    except (ValueError, TypeError):
        raise HelperError("failed", "helper.json is corrupt") from None
    for value in (config.max_allocations_per_user, config.max_bytes_per_user):
        if type(value) is not int or value < 0:
            raise HelperError("failed", "helper.json is corrupt")
    return config


# ---------------------------------------------------------------------------- registrations


def load_registration(roots: Roots, name: str) -> Registration | None:
    if not valid_store_name(name):
        return None
    try:
        dfd = open_trusted_dir(roots.stores_dir)
    except FileNotFoundError:
        return None
    try:
        raw = _read_trusted_file(dfd, f"{name}.json")
    finally:
        os.close(dfd)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        reg = Registration(doc["name"], doc["path"], doc["owner_uid"], doc["fs"], doc.get("backing"))
    except (ValueError, KeyError, TypeError):
        raise HelperError("failed", f"registration {name} is corrupt") from None
    if (reg.name != name or type(reg.owner_uid) is not int or reg.owner_uid < 0 or reg.fs not in FS_TYPES
            or not isinstance(reg.path, str) or not os.path.isabs(reg.path)
            or os.path.normpath(reg.path) != reg.path):
        raise HelperError("failed", f"registration {name} is corrupt")
    return reg


def save_registration(roots: Roots, reg: Registration) -> None:
    if not valid_store_name(reg.name):
        raise HelperError("invalid", "bad store name")
    dfd = _open_rw_dir(roots.stores_dir, create=True, mode=0o755)
    try:
        _write_atomic(dfd, f"{reg.name}.json", (json.dumps(reg.to_json(), indent=1) + "\n").encode(), 0o644)
    finally:
        os.close(dfd)


def remove_registration(roots: Roots, name: str) -> bool:
    if not valid_store_name(name):
        return False
    try:
        dfd = _open_rw_dir(roots.stores_dir, create=False, mode=0o755)
    except (FileNotFoundError, HelperError):
        return False
    try:
        os.unlink(f"{name}.json", dir_fd=dfd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------- allocations


@dataclass(frozen=True)
class Allocation:
    projid: int
    store: str
    uid: int
    dev: int
    ino: int
    image: str
    bytes: int = 0  # the limit set on it

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "uid": self.uid, "dev": self.dev, "ino": self.ino, "image": self.image,
                "bytes": self.bytes}

    def matches(self, store: str, uid: int, dev: int, ino: int) -> bool:
        return (self.store, self.uid, self.dev, self.ino) == (store, uid, dev, ino)


class State:
    """The allocation table, held under an exclusive flock for the whole request."""

    FILE = "projids.json"

    def __init__(self, roots: Roots):
        self.roots = roots
        self.dir_fd = -1
        self.lock_fd = -1
        self.allocs: dict[int, Allocation] = {}

    def __enter__(self) -> "State":
        self.dir_fd = _open_rw_dir(self.roots.state_dir, create=True, mode=0o700)
        try:
            st = os.fstat(self.dir_fd)
            if st.st_mode & 0o077:
                raise HelperError("failed", f"{self.roots.state_dir} must be mode 0700")
            self.lock_fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                   dir_fd=self.dir_fd)
            _check_root_owned(os.fstat(self.lock_fd), stat.S_ISREG, "state lock")
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
            self._load()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for fd in (self.lock_fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.lock_fd = self.dir_fd = -1

    def _load(self) -> None:
        raw = _read_trusted_file(self.dir_fd, self.FILE, MAX_STATE_FILE)
        self.allocs = {}
        if raw is None:
            return
        try:
            doc = json.loads(raw)
            for key, rec in doc["alloc"].items():
                pid = int(key)
                self.allocs[pid] = Allocation(pid, rec["store"], int(rec["uid"]), int(rec["dev"]), int(rec["ino"]),
                                              rec["image"], int(rec.get("bytes", 0)))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise HelperError("failed", "state file is corrupt") from None

    def save(self) -> None:
        doc = {"v": 1, "alloc": {str(p): a.to_json() for p, a in sorted(self.allocs.items())}}
        _write_atomic(self.dir_fd, self.FILE, (json.dumps(doc, indent=0) + "\n").encode(), 0o600)

    def find(self, projid: int) -> Allocation | None:
        return self.allocs.get(projid)

    def for_dir(self, store: str, uid: int, dev: int, ino: int) -> Allocation | None:
        for a in self.allocs.values():
            if a.matches(store, uid, dev, ino):
                return a
        return None

    def allocate(self, store: str, uid: int, dev: int, ino: int, image: str,
                 is_free: Callable[[int], bool]) -> Allocation:
        """A new ID: not in the table, not 0/1, and unused on the filesystem (``is_free``)."""
        lo, hi = max(self.roots.projid_min, 2), self.roots.projid_max
        taken = set(self.allocs)
        candidate = lo
        looked = 0
        while candidate <= hi and looked < MAX_SCAN:
            if candidate not in taken:
                looked += 1
                if is_free(candidate):
                    alloc = Allocation(candidate, store, uid, dev, ino, image)
                    self.allocs[candidate] = alloc
                    self.save()
                    return alloc
            candidate += 1
        raise HelperError("exhausted", "no free project ID")

    def free(self, projid: int) -> None:
        if self.allocs.pop(projid, None) is not None:
            self.save()

    def of_store(self, store: str) -> list[Allocation]:
        return [a for a in self.allocs.values() if a.store == store]

    def of_user(self, uid: int) -> list[Allocation]:
        return [a for a in self.allocs.values() if a.uid == uid]

    def check_user_caps(self, uid: int, config: HelperConfig, limit: int, current: Allocation | None) -> None:
        """Refuse a new allocation over the per-user count, or a limit over the per-user total."""
        mine = self.of_user(uid)
        if current is None and len(mine) >= config.max_allocations_per_user:
            raise HelperError("exhausted", f"at most {config.max_allocations_per_user} images with a disk "
                                           "limit per user (helper.json: max_allocations_per_user)")
        if config.max_bytes_per_user:
            total = sum(a.bytes for a in mine if current is None or a.projid != current.projid) + limit
            if total > config.max_bytes_per_user:
                raise HelperError("exhausted", f"the disk limits of one user may add up to "
                                               f"{config.max_bytes_per_user} bytes (helper.json: max_bytes_per_user)")

    def set_bytes(self, projid: int, limit: int) -> None:
        alloc = self.allocs.get(projid)
        if alloc is not None and alloc.bytes != limit:
            self.allocs[projid] = Allocation(alloc.projid, alloc.store, alloc.uid, alloc.dev, alloc.ino, alloc.image,
                                             limit)
            self.save()
