"""Unpack one layer's tar stream into an empty directory, safely and in linear time.

Never ``tarfile.extract*``: headers are read in stream mode (``tarheaders.HardTarInfo``:
linear, capped extended headers) and every entry is created by hand, confined to ``dest``.
Each entry's parent directory is resolved with ``openat2(RESOLVE_IN_ROOT)`` from an
``O_PATH`` fd of ``dest``, and the leaf operation uses that directory fd, so no symlink in
the layer (absolute or relative) can send a later write outside ``dest``.

Hostile input costs bounded work per entry: resolved parent fds are cached (LRU, so any
``ulimit -n`` of 256 and up works), one resolution is at most a few ``openat2`` calls
(the kernel stops symlink chains at 40 hops) and missing parents are found by bisection,
names are capped at PATH_MAX and the real depth of what is created at ``MAX_DEPTH``,
sparse holes are made with ``pwrite`` offsets and ``ftruncate`` (never by writing zeros,
and a full chunk of zeros in any file becomes a hole too), a replaced tree is removed by an
iterative walk holding two fds, and extended headers, xattrs and sparse sizes are capped.

The result is an overlay lower directory in the format that works both rootless and as
real root with ``userxattr``: ``.wh.NAME`` becomes a 0:0 character device,
``.wh..wh..opq`` becomes ``user.overlay.opaque=y`` on its directory.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, Callable

from .. import syscalls
from ..errors import LayerError, QuotaError
from .tarheaders import MAX_SPARSE_ENTRIES, PARSE_ERRORS, HardTarInfo

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)
_FD_CACHE_SIZE = 128
MAX_NAME = 4095  # bytes of an entry name, hardlink or symlink target (PATH_MAX with its NUL)
MAX_DEPTH = 2048  # directory levels below the layer root, symlinks followed
MAX_XATTR = 65536  # bytes of one xattr value (the kernel's limit)
MAX_SPARSE_SIZE = 64 << 30  # apparent size of one sparse file
MAX_SPARSE_TOTAL = 256 << 30  # apparent size of all sparse files of a layer
MAX_TRAILING = 64 << 20  # bytes after the end-of-archive marker (still hashed for the diffID)
_MAX_TIME_NS = 1 << 62
_RESOLVE = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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
    stripped_setid: int = 0  # squashed entries whose setuid/setgid bits were dropped


def short(name: str, limit: int = 160) -> str:
    """``repr`` of a name for a message, its middle elided when long (start and end kept)."""
    if len(name) > limit:
        keep = limit // 2 - 4
        name = f"{name[:keep]}...{name[-keep:]}"
    return repr(name)


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
            raise tarfile.ReadError("unbounded read of a layer stream")
        avail = len(self._buf) - self._off
        if avail == 0 and n >= CHUNK:  # file data: straight through, no copy
            data = self._pull(min(n, CHUNK))
            self._pos += len(data)
            return data
        while avail < n:
            data = self._pull(max(CHUNK, n - avail))
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
            raise tarfile.ReadError(f"cannot seek back in a layer stream (to {pos} from {self._pos})")
        while self._pos < pos and self.read(min(pos - self._pos, CHUNK)):
            pass
        return self._pos

    def drain(self, what: str) -> None:
        """Read to the end: the diffID covers the padding after the end-of-archive marker too."""
        extra = len(self._buf) - self._off
        self._buf, self._off = b"", 0
        while data := self._pull(CHUNK):
            extra += len(data)
            if extra > MAX_TRAILING:
                raise LayerError(f"{what}: more than {MAX_TRAILING >> 20} MiB of data after the end of the archive")


def normalize_name(name: str, what: str, entry: str | None = None) -> str:
    """Return a tar name as 'a/b/c' ('' for the root), or raise LayerError for a hostile one.

    ``entry``: the entry whose hardlink target ``name`` is.
    """
    kind = f"entry {short(name)}" if entry is None else f"entry {short(entry)}: hardlink target {short(name)}"
    if "\0" in name:
        raise LayerError(f"{what}: {kind}: name contains NUL")
    if name.startswith("/") or not name:
        raise LayerError(f"{what}: {kind}: absolute or empty name")
    if len(name) > MAX_NAME // 4 and len(os.fsencode(name)) > MAX_NAME:
        raise LayerError(f"{what}: {kind}: name longer than {MAX_NAME} bytes")
    if (".." not in name and "//" not in name and "/./" not in name and not name.startswith("./")
            and not name.endswith(("/", "/.")) and name != "."):
        return name  # already normal: no per-component work
    parts = []
    for part in name.split("/"):
        if part == "..":
            raise LayerError(f"{what}: {kind}: '..' component")
        if part and part != ".":
            parts.append(part)
    return "/".join(parts)


def _check_whiteout(base: str, name: str, what: str) -> None:
    if base in (".wh.", ".wh..", ".wh..."):
        raise LayerError(f"{what}: entry {short(name)}: invalid whiteout")


def _time_ns(value, key: str) -> int:
    """Seconds (int, float or a PAX decimal string) as ns; ValueError when not a sane time."""
    try:
        if isinstance(value, str):
            ns = Decimal(value) * 1_000_000_000
            if not ns.is_finite():
                raise ValueError
        else:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
            ns = value * 1_000_000_000
        ns = int(ns)
    except (InvalidOperation, ValueError, OverflowError, TypeError):
        raise ValueError(f"invalid {key} {str(value)[:40]!r}") from None
    if not -_MAX_TIME_NS < ns < _MAX_TIME_NS:
        raise ValueError(f"invalid {key} {str(value)[:40]!r}")
    return ns


def _times_ns(member: tarfile.TarInfo) -> tuple[int, int]:
    pax = member.pax_headers
    mtime = _time_ns(pax["mtime"], "mtime") if "mtime" in pax else _time_ns(member.mtime, "mtime")
    atime = _time_ns(pax["atime"], "atime") if "atime" in pax else mtime
    return atime, mtime


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
        if len(raw) > MAX_XATTR:
            raise ValueError(f"xattr {short(name, 80)} of {len(raw)} bytes (the limit is {MAX_XATTR})")
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


def _close_unless(fd: int, keep: set[int]) -> None:
    if fd not in keep:
        os.close(fd)


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
        self._root_path: str | None = None
        # What a new entry gets without a chown (directories stay 0700, without setgid, until
        # the end), and exact modes at creation: no chown or chmod call for most files.
        self.creator = (os.geteuid(), os.getegid())
        self.old_umask = os.umask(0)
        self.cache: OrderedDict[str, tuple[int, int]] = OrderedDict()  # rel -> (O_PATH fd, depth)
        self.pinned: set[int] = set()  # fds handed out for the entry being processed
        self.dead_fds: list[int] = []  # dropped from the cache while pinned: closed after the entry
        self.dirs: dict[str, tuple[int, tuple[int, int], int]] = {}  # deferred mode, times, inode
        self.bad_uids: set[int] = set()
        self.bad_gids: set[int] = set()
        self.size = self.entries = self.squashed = self.skipped = self.stripped = 0
        self.sparse_total = 0
        self.max_size: int | None = None  # bytes of regular files allowed (a disk limit)
        self.name = ""
        self.src: _TarSource | None = None
        self.stored_end = 0  # where the current member's data ends in the stream

    def error(self, message: str) -> LayerError:
        return LayerError(f"{self.what}: entry {short(self.name)}: {message}")

    # -- confined directory resolution ------------------------------------------------

    def _openat2(self, rel: str, flags: int, resolve: int) -> int:
        for _ in range(8):  # EAGAIN: a concurrent rename; nobody else should write here
            try:
                return syscalls.openat2(self.root_fd, os.fsencode(rel), flags, resolve)
            except BlockingIOError:
                continue
        raise self.error("cannot resolve a parent directory (EAGAIN)")

    def _open_in_root(self, rel: str, flags: int) -> int:
        return self._openat2(rel, flags, _RESOLVE)

    def _lookup(self, rel: str) -> tuple[int, int]:
        """An existing directory: (O_PATH fd, real depth); OSError (ENOENT...) otherwise."""
        try:  # without symlinks on the way the depth is the name's
            return (self._openat2(rel, os.O_PATH | os.O_DIRECTORY, _RESOLVE | syscalls.RESOLVE_NO_SYMLINKS),
                    rel.count("/") + 1)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        fd = self._openat2(rel, os.O_PATH | os.O_DIRECTORY, _RESOLVE)
        return fd, self._real_depth(fd)

    def _real_depth(self, fd: int) -> int:
        try:
            if self._root_path is None:
                self._root_path = os.readlink(f"/proc/self/fd/{self.root_fd}").rstrip("/")
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return MAX_DEPTH + 1
            return 0  # no /proc: the name's depth cap still holds
        if not path.startswith(self._root_path + "/"):
            return 0
        return path.count("/") - self._root_path.count("/")

    def dir_fd(self, rel: str, create: bool = True) -> tuple[int, int]:
        """(O_PATH fd, depth) of directory ``rel`` resolved inside dest (created 0755 if missing)."""
        if not rel:
            return self.root_fd, 0
        hit = self.cache.get(rel)
        if hit is not None:
            self.cache.move_to_end(rel)
        else:
            try:
                hit = self._lookup(rel)
            except FileNotFoundError:
                if not create:
                    raise
                hit = self._create_dirs(rel)
            self._remember(rel, hit)
        self.pinned.add(hit[0])
        return hit

    def _create_dirs(self, rel: str) -> tuple[int, int]:
        """Create the missing directories of ``rel``: bisect for the deepest existing one."""
        parts = rel.split("/")
        lo, hi = 0, len(parts)  # parts[:lo] exists, parts[:hi] does not
        fd, depth = self.root_fd, 0
        keep = {self.root_fd} | {fd for fd, _ in self.cache.values()}
        try:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                prefix = "/".join(parts[:mid])
                try:
                    found = self.cache.get(prefix) or self._lookup(prefix)
                except FileNotFoundError:
                    hi = mid
                    continue
                _close_unless(fd, keep)
                fd, depth = found
                lo = mid
            for part in parts[lo:]:
                if depth >= MAX_DEPTH:
                    raise self.error(f"deeper than {MAX_DEPTH} directory levels")
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)  # the umask is 0 while unpacking
                except FileExistsError:
                    raise self.error(f"parent {short(part)} is not a directory (a dangling symlink?)") from None
                child = os.open(part, _DIR_PATH, dir_fd=fd)
                _close_unless(fd, keep)
                fd, depth = child, depth + 1
        except BaseException:
            _close_unless(fd, keep)
            raise
        return fd, depth

    def _remember(self, rel: str, hit: tuple[int, int]) -> None:
        self.cache[rel] = hit
        if len(self.cache) > _FD_CACHE_SIZE:
            self._drop(self.cache.popitem(last=False)[1][0])

    def _drop(self, fd: int) -> None:
        if fd in self.pinned:  # the entry being processed may still use it
            self.dead_fds.append(fd)
        else:
            os.close(fd)

    def parent(self, rel: str) -> tuple[int, str]:
        head, _, leaf = rel.rpartition("/")
        fd, depth = self.dir_fd(head)
        if depth >= MAX_DEPTH:
            raise self.error(f"deeper than {MAX_DEPTH} directory levels")
        return fd, leaf

    def _invalidate(self) -> None:
        """A directory or symlink was removed or replaced: cached fds may now point elsewhere."""
        for fd, _ in self.cache.values():
            self._drop(fd)
        self.cache.clear()

    def end_entry(self) -> None:
        for fd in self.dead_fds:
            os.close(fd)
        self.dead_fds.clear()
        self.pinned.clear()

    def prepare_leaf(self, pfd: int, leaf: str, keep_dir: bool = False) -> bool:
        """Make room for a new entry: True if an existing directory is kept (dir over dir)."""
        try:
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            remove_dir(pfd, leaf)
            self._invalidate()
        else:
            os.unlink(leaf, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self._invalidate()
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
                raise self.error(f"invalid owner id {str(value)[:40]!r}")
        if uid in self.bad_uids:
            uid, squashed = self.owner[0], True
        if gid in self.bad_gids:
            gid, squashed = self.owner[1], True
        return uid, gid, squashed

    def set_owner(self, member: tarfile.TarInfo, do: Callable[[int, int], None]) -> tuple[bool, bool]:
        """Chown via ``do(uid, gid)``; ids the namespace cannot map go to dest's owner.

        Returns (whether ``do`` was called (a chown clears setuid/setgid bits), squashed).
        """
        if not self.chown:
            return False, False
        uid, gid, squashed = self._ids(member)
        if (uid, gid) == self.creator:  # a new entry already has these owners
            if squashed:
                self.squashed += 1
            return False, squashed
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
        return True, squashed

    def safe_mode(self, mode: int, squashed: bool) -> int:
        """A squashed owner keeps no setuid/setgid: the store owner must not gain them."""
        if squashed and mode & 0o6000:
            self.stripped += 1
            return mode & ~0o6000
        return mode

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
            raise self.error("the root must be a directory")
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
            pfd, _ = self.dir_fd(rel.rpartition("/")[0])
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
        self.prepare_leaf(pfd, leaf)
        try:
            os.mknod(leaf, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        except PermissionError as exc:
            raise self.error("cannot create a whiteout device here (run as root or inside the "
                             f"store's user namespace): {exc.strerror}") from None

    def directory(self, rel: str, member: tarfile.TarInfo) -> None:
        times = _times_ns(member)
        if rel:
            pfd, leaf = self.parent(rel)
            if not self.prepare_leaf(pfd, leaf, keep_dir=True):
                os.mkdir(leaf, 0o700, dir_fd=pfd)  # final mode at the end
            fd = os.open(leaf, _DIR_RDONLY, dir_fd=pfd)
        else:
            fd = os.open(".", _DIR_RDONLY, dir_fd=self.root_fd)
        try:
            _, squashed = self.set_owner(member, lambda u, g: os.fchown(fd, u, g))
            self.set_xattrs(fd, member)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        self.dirs[rel] = (self.safe_mode(member.mode & 0o7777, squashed), times, ino)

    def _check_sparse(self, member: tarfile.TarInfo) -> None:
        if member.size > MAX_SPARSE_SIZE:
            raise self.error(f"sparse file of {member.size} bytes (the limit is {MAX_SPARSE_SIZE >> 30} GiB)")
        self.sparse_total += member.size
        if self.sparse_total > MAX_SPARSE_TOTAL:
            raise self.error(f"sparse files of this layer exceed {MAX_SPARSE_TOTAL >> 30} GiB")
        end = total = 0
        member.sparse = [(offset, length) for offset, length in member.sparse if length]  # (end, 0) markers
        if len(member.sparse) > MAX_SPARSE_ENTRIES:
            raise self.error(f"sparse map of more than {MAX_SPARSE_ENTRIES} regions")
        for offset, length in member.sparse:
            if offset < end or length < 0 or offset + length > member.size:
                raise self.error("malformed sparse map")
            end = offset + length
            total += length
        if total > self.stored_end - member.offset_data:
            raise self.error("sparse map declares more data than the entry holds")

    def _copy(self, fd: int, length: int, offset: int) -> bool:
        """Copy ``length`` bytes of entry data to ``offset``; True if a chunk of zeros was skipped."""
        src = self.src
        holes = False
        while length > 0:
            chunk = src.read(min(length, CHUNK))
            if not chunk:
                raise self.error("unexpected end of data (truncated layer)")
            n = len(chunk)
            if n == CHUNK and chunk == _ZEROS:
                holes = True  # keep holes as holes
            else:
                view = memoryview(chunk)
                pos = offset
                while view:
                    written = os.pwrite(fd, view, pos)
                    view = view[written:]
                    pos += written
            offset += n
            length -= n
        return holes

    def regular(self, tar: tarfile.TarFile, rel: str, member: tarfile.TarInfo) -> None:
        times = _times_ns(member)
        sparse = member.sparse
        if sparse is not None:
            self._check_sparse(member)
        elif member.size > self.stored_end - member.offset_data:
            raise self.error("size larger than the data the header leaves room for")
        if self.max_size is not None and self.size + member.size > self.max_size:
            # GrootFS: a layer that cannot fit the disk limit stops as soon as that is known
            raise QuotaError("uncompressed layer size exceeds quota")
        xattrs = _xattrs(member)
        pfd, leaf = self.parent(rel)
        mode = member.mode & 0o7777
        try:  # usually new: no stat first
            fd = os.open(leaf, _FILE_CREATE, mode & 0o777, dir_fd=pfd)
        except FileExistsError:
            self.prepare_leaf(pfd, leaf)
            fd = os.open(leaf, _FILE_CREATE, mode & 0o777, dir_fd=pfd)
        try:
            self.src.seek(member.offset_data)
            if sparse is None:
                holes = self._copy(fd, member.size, 0)
            else:
                holes = True
                for offset, length in sparse:
                    self._copy(fd, length, offset)
            if holes:
                os.ftruncate(fd, member.size)
            chowned, squashed = self.set_owner(member, lambda u, g: os.fchown(fd, u, g))
            mode = self.safe_mode(mode, squashed)
            if chowned or mode & 0o7000:  # after the chown, which clears setuid/setgid
                os.fchmod(fd, mode)
            if xattrs:
                self.set_xattrs(fd, member)  # after chown, which drops security.capability
            os.utime(fd, ns=times)
        finally:
            os.close(fd)
        self.size += member.size

    def symlink(self, rel: str, member: tarfile.TarInfo) -> None:
        times = _times_ns(member)
        target = member.linkname
        if "\0" in target:
            raise self.error("symlink target contains NUL")
        if len(target) > MAX_NAME // 4 and len(os.fsencode(target)) > MAX_NAME:
            raise self.error(f"symlink target longer than {MAX_NAME} bytes")
        pfd, leaf = self.parent(rel)
        self.prepare_leaf(pfd, leaf)
        os.symlink(target, leaf, dir_fd=pfd)
        self.set_owner(member, lambda u, g: os.chown(leaf, u, g, dir_fd=pfd, follow_symlinks=False))
        os.utime(leaf, ns=times, dir_fd=pfd, follow_symlinks=False)

    def hardlink(self, rel: str, member: tarfile.TarInfo) -> None:
        target = normalize_name(member.linkname, self.what, self.name)
        if not target:
            raise self.error("hardlink to the root")
        if target == rel:
            return
        pfd, leaf = self.parent(rel)
        thead, _, tleaf = target.rpartition("/")
        try:
            tfd, _ = self.dir_fd(thead, create=False)
            os.stat(tleaf, dir_fd=tfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise self.error(f"hardlink target {short(member.linkname)} is not in this layer") from None
        self.prepare_leaf(pfd, leaf)  # pinned fds stay open until the entry ends
        try:
            # No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
            os.link(tleaf, leaf, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise self.error(f"hardlink target {short(member.linkname)} is not in this layer") from None

    def special(self, rel: str, member: tarfile.TarInfo) -> None:
        times = _times_ns(member)
        pfd, leaf = self.parent(rel)
        self.prepare_leaf(pfd, leaf)
        if member.isfifo():
            os.mkfifo(leaf, 0o600, dir_fd=pfd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(leaf, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=pfd)
        _, squashed = self.set_owner(member, lambda u, g: os.chown(leaf, u, g, dir_fd=pfd, follow_symlinks=False))
        # we just made it: not a symlink
        os.chmod(leaf, self.safe_mode(member.mode & 0o7777, squashed), dir_fd=pfd)
        os.utime(leaf, ns=times, dir_fd=pfd, follow_symlinks=False)

    def finish_dirs(self) -> None:
        """Directory modes and times last, deepest first: adding children changes mtimes."""
        for rel in sorted(self.dirs, key=lambda p: p.count("/") + bool(p), reverse=True):
            mode, times, ino = self.dirs[rel]
            try:
                fd = self._open_in_root(rel or ".", _DIR_RDONLY)
            except OSError:
                continue  # replaced by a non-directory later in the layer
            try:
                if os.fstat(fd).st_ino == ino:  # not a directory made later in its place
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=times)
            finally:
                os.close(fd)

    def close(self) -> None:
        os.umask(self.old_umask)
        self.end_entry()
        for fd, _ in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root_fd)


def remove_dir(parent_fd: int, name: str) -> None:
    """Remove the directory tree ``name`` in ``parent_fd``, any depth, holding two fds at most.

    Iterative: descend into the first subdirectory found, unlink everything else, climb back
    with ``..`` when a directory is empty. Linear in the size of the tree.
    """
    path: list[str] = []  # names from name's directory down to the current one
    fd = os.open(name, _DIR_RDONLY, dir_fd=parent_fd)
    try:
        while True:
            child = None
            with os.scandir(fd) as it:
                for item in it:
                    if item.is_dir(follow_symlinks=False):
                        child = item.name
                        break
                    os.unlink(item.name, dir_fd=fd)
            if child is not None:
                new = os.open(child, _DIR_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = new
                path.append(child)
                continue
            if not path:
                break
            up = os.open("..", _DIR_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(path.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _environment(exc: OSError) -> OSError:
    """The same error without its file name (which can be a 4 kB path from the layer)."""
    return OSError(exc.errno, exc.strerror)


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
    unpacker.src = hashing
    try:
        try:
            tar = tarfile.open(fileobj=hashing, mode="r:", tarinfo=HardTarInfo,
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
                unpacker.stored_end = tar.offset
                try:
                    if not 0 <= member.size < 1 << 62:
                        raise ValueError(f"invalid size {member.size}")
                    if not (0 <= member.uid < 1 << 32 and 0 <= member.gid < 1 << 32):
                        raise ValueError(f"invalid owner id {member.uid}:{member.gid}")
                    unpacker.entry(tar, member)
                except OSError as exc:
                    if exc.errno in _ENVIRONMENT_ERRNOS:
                        raise _environment(exc) from None
                    unpacker.name = member.name
                    raise unpacker.error(exc.strerror or str(exc)) from None
                except PARSE_ERRORS as exc:
                    unpacker.name = member.name
                    raise unpacker.error(str(exc)[:200]) from None
                finally:
                    unpacker.end_entry()
            bad = getattr(tar, "_groot_bad_header", None)
            if bad is not None:
                raise LayerError(f"{what}: corrupt tar header after entry {short(unpacker.name)}: {bad}")
        except tarfile.TarError as exc:
            raise LayerError(f"{what}: corrupt tar stream near entry {short(unpacker.name)}: "
                             f"{str(exc)[:200]}") from None
        hashing.drain(what)
        try:
            unpacker.finish_dirs()
        except OSError as exc:
            if exc.errno in _ENVIRONMENT_ERRNOS:
                raise _environment(exc) from None
            raise LayerError(f"{what}: setting directory modes: {exc.strerror}") from None
    finally:
        unpacker.close()
    return UnpackResult(
        diff_id="sha256:" + hashing.hash.hexdigest(),
        size=unpacker.size,
        entries=unpacker.entries,
        squashed_owners=unpacker.squashed,
        skipped=unpacker.skipped,
        stripped_setid=unpacker.stripped,
    )
