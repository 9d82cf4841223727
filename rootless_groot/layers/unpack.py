"""Unpack one layer's tar stream into an empty directory, safely.

Never ``tarfile.extract*``: headers are read in stream mode and every entry is
created by hand, confined to ``dest``. Each entry's parent directory is resolved
with ``openat2(RESOLVE_IN_ROOT)`` from an ``O_PATH`` fd of ``dest``, and the leaf
operation uses that directory fd, so no symlink in the layer (absolute or
relative) can send a later write outside ``dest``.

The result is an overlay lower directory in the format that works both rootless
and as real root with ``userxattr``: ``.wh.NAME`` becomes a 0:0 character
device, ``.wh..wh..opq`` becomes ``user.overlay.opaque=y`` on its directory.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, Callable

from .. import syscalls
from ..errors import LayerError, QuotaError

CHUNK = 1 << 20
_FD_CACHE_SIZE = 128
_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_DIR_RDONLY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that say something about the machine, not the layer: let them through.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE,
                       errno.ENOMEM, errno.EROFS}

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"


@dataclass
class UnpackResult:
    diff_id: str  # "sha256:<hex>" of the whole uncompressed stream, read to EOF
    size: int  # sum of regular-file sizes
    entries: int
    squashed_owners: int  # entries given to dest's owner because their ids are not mapped
    skipped: int  # device nodes (unless allowed) and unknown entry types


class _TarSource:
    """The uncompressed tar stream as tarfile's seekable mode reads it: read, tell, forward seek.

    Everything is read from below in CHUNK-sized pieces and hashed on the way (the diffID).
    tarfile's stream mode (``r|``) would instead copy its whole buffer for every 512-byte
    header, which made a 40,000-file layer spend 20 s in that copy; its seekable mode only
    ever seeks forward here, since each entry's data is consumed before the next header.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0  # bytes read from below (hashed)
        self._buf = b""
        self._off = 0
        self._pos = 0  # bytes handed out or skipped

    def _pull(self, n: int) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [self.read(CHUNK)]
            while parts[-1]:
                parts.append(self.read(CHUNK))
            return b"".join(parts)
        avail = len(self._buf) - self._off
        if avail == 0 and n >= CHUNK:  # file data: straight through, no copy
            data = self._pull(n)
            self._pos += len(data)
            return data
        while avail < n:
            data = self._pull(CHUNK)
            if not data:
                break
            self._buf = self._buf[self._off:] + data
            self._off = 0
            avail = len(self._buf)
        out = self._buf[self._off:self._off + n]
        self._off += len(out)
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self._pos:
            raise OSError(f"cannot seek back in a layer stream (to {pos} from {self._pos})")
        while self._pos < pos and self.read(min(pos - self._pos, CHUNK)):
            pass
        return self._pos

    def drain(self) -> None:
        """Read to the end: the diffID covers the padding after the end-of-archive marker too."""
        self._buf, self._off = b"", 0
        while self._pull(CHUNK):
            pass


class _StrictTarInfo(tarfile.TarInfo):
    """Remember a bad header: tarfile treats one as a quiet end of archive."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            tar._groot_bad_header = exc
            raise


def normalize_name(name: str, what: str, entry: str | None = None) -> str:
    """Return a tar name as 'a/b/c' ('' for the root), or raise LayerError for a hostile one.

    ``entry``: the entry whose hardlink target ``name`` is.
    """
    kind = f"entry {name!r}" if entry is None else f"entry {entry!r}: hardlink target {name!r}"
    if "\0" in name:
        raise LayerError(f"{what}: {kind}: name contains NUL")
    if name.startswith("/") or not name:
        raise LayerError(f"{what}: {kind}: absolute or empty name")
    parts = []
    for part in name.split("/"):
        if part == "..":
            raise LayerError(f"{what}: {kind}: '..' component")
        if part and part != ".":
            parts.append(part)
    return "/".join(parts)


def _check_whiteout(base: str, name: str, what: str) -> None:
    if base in (".wh.", ".wh..", ".wh..."):
        raise LayerError(f"{what}: entry {name!r}: invalid whiteout")


def _times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    def pax_ns(key: str) -> int | None:
        value = member.pax_headers.get(key)
        if value is None:
            return None
        try:
            return int(Decimal(value) * 1_000_000_000)
        except (InvalidOperation, ValueError, OverflowError):
            return None

    mtime = pax_ns("mtime")
    if mtime is None:
        mtime = int(member.mtime) * 1_000_000_000
    atime = pax_ns("atime")
    return (mtime if atime is None else atime), mtime


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes, bool]]:
    """Xattrs for a regular file or directory as (name, value, optional).

    Dropped: anything naming overlay (forged overlay metadata), trusted.*, security.*
    except security.capability (regular files only, optional), and other namespaces.
    """
    out = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        name = key[len("SCHILY.xattr."):]
        if ".overlay." in name or "\0" in name:
            continue
        raw = value.encode("utf-8", "surrogateescape")
        if name == "security.capability":
            if member.isreg():
                out.append((name, raw, True))
        elif name.startswith("user."):
            out.append((name, raw, False))
    return out


def _chown_accepted(do: Callable[[int, int], None], uid: int, gid: int) -> bool:
    try:
        do(uid, gid)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return True


class _Unpacker:
    def __init__(self, dest: str, chown: bool, allow_devices: bool,
                 id_translate: Callable[[int, int], tuple[int, int]] | None, what: str):
        self.what = what
        self.chown = chown
        self.allow_devices = allow_devices
        self.id_translate = id_translate
        self.root_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.root_fd)
        self.owner = (st.st_uid, st.st_gid)
        # What a new entry gets without a chown (directories stay 0700, without setgid, until
        # the end), and exact modes at creation: no chown or chmod call for most files.
        self.creator = (os.geteuid(), os.getegid())
        self.old_umask = os.umask(0)
        self.cache: OrderedDict[str, int] = OrderedDict()
        self.pinned: set[int] = set()  # fds handed out for the entry being processed
        self.dead_fds: list[int] = []  # dropped from the cache while pinned: closed after the entry
        self.dirs: dict[str, tuple[int, tuple[int, int]]] = {}  # deferred mode and times
        self.bad_uids: set[int] = set()
        self.bad_gids: set[int] = set()
        self.size = self.entries = self.squashed = self.skipped = 0
        self.max_size: int | None = None  # bytes of regular files allowed (a disk limit)
        self.name = ""

    # -- confined directory resolution ------------------------------------------------

    def _open_in_root(self, rel: str, flags: int) -> int:
        for _ in range(8):  # EAGAIN: a concurrent rename; nobody else should write here
            try:
                return syscalls.openat2(self.root_fd, os.fsencode(rel), flags, _RESOLVE)
            except BlockingIOError:
                continue
        raise LayerError(f"{self.what}: entry {self.name!r}: cannot resolve {rel!r}")

    def dir_fd(self, rel: str, create: bool = True) -> int:
        """An O_PATH fd of directory ``rel`` resolved inside dest (created 0755 if missing)."""
        if not rel:
            return self.root_fd
        fd = self.cache.get(rel)
        if fd is not None:
            self.cache.move_to_end(rel)
        else:
            try:
                fd = self._remember(rel, self._open_in_root(rel, os.O_PATH | os.O_DIRECTORY))
            except FileNotFoundError:
                if not create:
                    raise
                fd = self._create_dirs(rel)
        self.pinned.add(fd)
        return fd

    def _create_dirs(self, rel: str) -> int:
        # Find the deepest existing ancestor, then create the rest one level at a time.
        parts = rel.split("/")
        have = len(parts) - 1
        parent = self.root_fd
        while have > 0:
            try:
                parent = self.dir_fd("/".join(parts[:have]), create=False)
                break
            except FileNotFoundError:
                have -= 1
        for depth in range(have, len(parts)):
            try:
                os.mkdir(parts[depth], 0o755, dir_fd=parent)  # the umask is 0 while unpacking
            except FileExistsError:
                pass  # e.g. a dangling symlink: the open below reports it
            prefix = "/".join(parts[: depth + 1])
            parent = self._remember(prefix, self._open_in_root(prefix, os.O_PATH | os.O_DIRECTORY))
        return parent

    def _remember(self, rel: str, fd: int) -> int:
        self.cache[rel] = fd
        if len(self.cache) > _FD_CACHE_SIZE:
            self._drop(self.cache.popitem(last=False)[1])
        return fd

    def _drop(self, fd: int) -> None:
        if fd in self.pinned:  # the entry being processed may still use it
            self.dead_fds.append(fd)
        else:
            os.close(fd)

    def parent(self, rel: str) -> tuple[int, str]:
        head, _, leaf = rel.rpartition("/")
        return self.dir_fd(head), leaf

    def _invalidate(self, removed: str) -> None:
        """Something was removed or replaced: cached fds may now point elsewhere."""
        for fd in self.cache.values():
            self._drop(fd)
        self.cache.clear()
        prefix = removed + "/"
        for path in [p for p in self.dirs if p == removed or p.startswith(prefix)]:
            del self.dirs[path]

    def end_entry(self) -> None:
        for fd in self.dead_fds:
            os.close(fd)
        self.dead_fds.clear()
        self.pinned.clear()

    def prepare_leaf(self, pfd: int, leaf: str, rel: str, keep_dir: bool = False) -> bool:
        """Make room for a new entry: True if an existing directory is kept (dir over dir)."""
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            try:
                shutil.rmtree(leaf, dir_fd=pfd)
            except RecursionError:  # shutil.rmtree recurses once per level (3.11)
                raise LayerError(f"{self.what}: entry {self.name!r}: directory tree too deep to replace") from None
        else:
            os.unlink(leaf, dir_fd=pfd)
        self._invalidate(rel)
        return False

    # -- metadata ---------------------------------------------------------------------

    def _ids(self, member: tarfile.TarInfo) -> tuple[int, int, bool]:
        uid, gid = member.uid, member.gid
        squashed = False
        if self.id_translate is not None:
            try:
                uid, gid = self.id_translate(uid, gid)
            except (LookupError, ValueError):
                uid, gid = self.owner
                squashed = True
        for value in (uid, gid):
            if type(value) is not int or not 0 <= value < 0xFFFFFFFF:
                raise LayerError(f"{self.what}: entry {self.name!r}: invalid owner id {value!r}")
        if uid in self.bad_uids:
            uid, squashed = self.owner[0], True
        if gid in self.bad_gids:
            gid, squashed = self.owner[1], True
        return uid, gid, squashed

    def set_owner(self, member: tarfile.TarInfo, do: Callable[[int, int], None]) -> bool:
        """Chown via ``do(uid, gid)``; ids the namespace cannot map go to dest's owner.

        Returns whether ``do`` was called (a chown clears setuid/setgid bits).
        """
        if not self.chown:
            return False
        uid, gid, squashed = self._ids(member)
        if (uid, gid) == self.creator:  # a new entry already has these owners
            if squashed:
                self.squashed += 1
            return False
        if not _chown_accepted(do, uid, gid):
            # EINVAL: an id the namespace does not map. Find which, remember it, squash it.
            if not _chown_accepted(do, uid, -1):
                self.bad_uids.add(uid)
                uid = self.owner[0]
            if not _chown_accepted(do, -1, gid):
                self.bad_gids.add(gid)
                gid = self.owner[1]
            do(uid, gid)
            squashed = True
        if squashed:
            self.squashed += 1
        return True

    def set_xattrs(self, fd: int, member: tarfile.TarInfo) -> None:
        for name, value, optional in _xattrs(member):
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                if optional and exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EINVAL):
                    continue
                raise

    # -- entry types ------------------------------------------------------------------

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.name = member.name
        rel = normalize_name(member.name, self.what)
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(rel, base)
        elif member.isdir():
            self.directory(rel, member)
        elif not rel:
            raise LayerError(f"{self.what}: entry {member.name!r}: the root must be a directory")
        elif member.isreg():
            self.regular(tar, rel, member)
        elif member.issym():
            self.symlink(rel, member)
        elif member.islnk():
            self.hardlink(rel, member)
        elif member.isfifo() or ((member.ischr() or member.isblk()) and self.allow_devices):
            self.special(rel, member)
        else:  # devices when rootless, and types we do not know
            self.skipped += 1

    def whiteout(self, rel: str, base: str) -> None:
        _check_whiteout(base, self.name, self.what)
        if base == OPAQUE_MARKER:
            pfd, _ = self.parent(rel)
            fd = os.open(".", _DIR_RDONLY, dir_fd=pfd)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        if base.startswith(".wh..wh."):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to do
        target = rel[: -len(base)] + base[len(WHITEOUT_PREFIX):]
        pfd, leaf = self.parent(target)
        self.prepare_leaf(pfd, leaf, target)
        try:
            os.mknod(leaf, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        except PermissionError as exc:
            raise LayerError(f"{self.what}: entry {self.name!r}: cannot create a whiteout device "
                             f"here (run as root or inside the store's user namespace): {exc}") from None

    def directory(self, rel: str, member: tarfile.TarInfo) -> None:
        if rel:
            pfd, leaf = self.parent(rel)
            if not self.prepare_leaf(pfd, leaf, rel, keep_dir=True):
                os.mkdir(leaf, 0o700, dir_fd=pfd)  # final mode at the end
            fd = os.open(leaf, _DIR_RDONLY, dir_fd=pfd)
        else:
            fd = os.open(".", _DIR_RDONLY, dir_fd=self.root_fd)
        try:
            self.set_owner(member, lambda u, g: os.fchown(fd, u, g))
            self.set_xattrs(fd, member)
        finally:
            os.close(fd)
        self.dirs[rel] = (member.mode & 0o7777, _times_ns(member))

    def regular(self, tar: tarfile.TarFile, rel: str, member: tarfile.TarInfo) -> None:
        if self.max_size is not None and self.size + member.size > self.max_size:
            # GrootFS: a layer that cannot fit the disk limit stops as soon as that is known
            raise QuotaError("layers exceed disk quota")
        pfd, leaf = self.parent(rel)
        mode = member.mode & 0o7777
        try:  # usually new: no stat first
            fd = os.open(leaf, _FILE_CREATE, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            self.prepare_leaf(pfd, leaf, rel)
            fd = os.open(leaf, _FILE_CREATE, mode & 0o777, dir_fd=pfd)
        try:
            src = tar.extractfile(member)
            sparse = member.sparse is not None
            holes = False
            while chunk := src.read(CHUNK):
                if sparse and chunk.count(0) == len(chunk):
                    os.lseek(fd, len(chunk), os.SEEK_CUR)  # keep holes as holes
                    holes = True
                    continue
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if holes:
                os.ftruncate(fd, member.size)
            chowned = self.set_owner(member, lambda u, g: os.fchown(fd, u, g))
            if chowned or mode & 0o7000:  # after the chown, which clears setuid/setgid
                os.fchmod(fd, mode)
            self.set_xattrs(fd, member)  # after chown, which drops security.capability
            os.utime(fd, ns=_times_ns(member))
        finally:
            os.close(fd)
        self.size += member.size

    def symlink(self, rel: str, member: tarfile.TarInfo) -> None:
        if "\0" in member.linkname:
            raise LayerError(f"{self.what}: entry {self.name!r}: symlink target contains NUL")
        pfd, leaf = self.parent(rel)
        self.prepare_leaf(pfd, leaf, rel)
        os.symlink(member.linkname, leaf, dir_fd=pfd)
        self.set_owner(member, lambda u, g: os.chown(leaf, u, g, dir_fd=pfd, follow_symlinks=False))
        os.utime(leaf, ns=_times_ns(member), dir_fd=pfd, follow_symlinks=False)

    def hardlink(self, rel: str, member: tarfile.TarInfo) -> None:
        target = normalize_name(member.linkname, self.what, self.name)
        if not target:
            raise LayerError(f"{self.what}: entry {self.name!r}: hardlink to the root")
        if target == rel:
            return
        pfd, leaf = self.parent(rel)
        self.prepare_leaf(pfd, leaf, rel)
        thead, _, tleaf = target.rpartition("/")
        try:
            tfd = self.dir_fd(thead, create=False)
            # No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
            os.link(tleaf, leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise LayerError(f"{self.what}: entry {self.name!r}: hardlink target "
                             f"{member.linkname!r} is not in this layer") from None

    def special(self, rel: str, member: tarfile.TarInfo) -> None:
        pfd, leaf = self.parent(rel)
        self.prepare_leaf(pfd, leaf, rel)
        if member.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=pfd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(leaf, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
        self.set_owner(member, lambda u, g: os.chown(leaf, u, g, dir_fd=pfd, follow_symlinks=False))
        os.chmod(leaf, member.mode & 0o7777, dir_fd=pfd)  # we just made it: not a symlink
        os.utime(leaf, ns=_times_ns(member), dir_fd=pfd, follow_symlinks=False)

    def finish_dirs(self) -> None:
        """Directory modes and times last, deepest first: adding children changes mtimes."""
        for rel in sorted(self.dirs, key=lambda p: p.count("/") + bool(p), reverse=True):
            mode, times = self.dirs[rel]
            try:
                fd = self._open_in_root(rel or ".", _DIR_RDONLY)
            except OSError:
                continue  # replaced by a non-directory later in the layer
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=times)
            finally:
                os.close(fd)

    def close(self) -> None:
        os.umask(self.old_umask)
        self.end_entry()
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root_fd)


def unpack_layer(tar_stream: BinaryIO, dest: str, *, chown: bool = True, allow_devices: bool = False,
                 id_translate: Callable[[int, int], tuple[int, int]] | None = None,
                 what: str = "layer", max_size: int | None = None) -> UnpackResult:
    """Unpack an uncompressed tar stream into the existing empty directory ``dest``.

    Raises LayerError naming ``what`` and the entry for a hostile or malformed layer.
    On any error ``dest`` holds a partial layer: the caller deletes it.
    ``id_translate(uid, gid)`` maps tar ids to the ids to chown to; raising
    LookupError/ValueError from it squashes the entry to dest's owner.
    """
    hashing = _TarSource(tar_stream)
    unpacker = _Unpacker(dest, chown, allow_devices, id_translate, what)
    unpacker.max_size = max_size
    try:
        try:
            tar = tarfile.open(fileobj=hashing, mode="r:", tarinfo=_StrictTarInfo,
                               encoding="utf-8", errors="surrogateescape")
        except tarfile.ReadError as exc:
            if hashing.count:
                raise LayerError(f"{what}: not a tar archive: {exc}") from None
            tar = None  # an empty stream is an empty layer (as Go's archive/tar reads it)
        try:
            while tar is not None:
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # stream mode keeps every TarInfo otherwise
                unpacker.entries += 1
                try:
                    unpacker.entry(tar, member)
                except OSError as exc:
                    if exc.errno in _ENVIRONMENT_ERRNOS:
                        raise
                    raise LayerError(f"{what}: entry {member.name!r}: {exc}") from None
                finally:
                    unpacker.end_entry()
            bad = getattr(tar, "_groot_bad_header", None)
            if bad is not None:
                raise LayerError(f"{what}: corrupt tar header after entry {unpacker.name!r}: {bad}")
        except tarfile.TarError as exc:
            raise LayerError(f"{what}: corrupt tar stream near entry {unpacker.name!r}: {exc}") from None
        hashing.drain()
        unpacker.finish_dirs()
    finally:
        unpacker.close()
    return UnpackResult(
        diff_id="sha256:" + hashing.hash.hexdigest(),
        size=unpacker.size,
        entries=unpacker.entries,
        squashed_owners=unpacker.squashed,
        skipped=unpacker.skipped,
    )
