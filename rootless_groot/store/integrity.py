"""What a cached layer looked like when it was unpacked, and checks against it.

Two records are written next to ``layers/<chainid>/diff`` before the layer is installed:

- ``manifest``: one line per entry (type, mode, owner as host ids, size or device, a CRC-32 of
  a file's bytes or the sha256 of a link's target, mtime, path). ``check`` walks the layer again
  and compares: any file removed, added, changed in content, mode, owner or time is found. Cost:
  reading every byte once more (docs/consistency.md has the figures). The record finds damage,
  it does not defend against the store's owner (who could rewrite it too), so the content sum is
  CRC-32 (6.5 GB/s here) rather than sha256 (1.9 GB/s without SHA instructions): it halved the
  record's share of a cold create. Records made before that carry sha256 sums and are checked
  with sha256.
- ``dirs``: each directory's ctime. Removing, adding or renaming anything changes its parent
  directory's ctime, which no one can set back; ``create`` compares them on every use of the
  layer (one ``lstat`` per directory, no listing, no reading).
"""
from __future__ import annotations

import os
import stat

from ..errors import LayerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from .context import StoreContext

MANIFEST = "manifest"
DIRS = "dirs"
CHUNK = 1 << 20
CRC_PREFIX = "crc32:"


def _escape(rel: str) -> str:
    return rel.replace("\\", "\\\\").replace("\n", "\\n")


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def host_ids(ctx: StoreContext) -> Callable[[int, int], tuple[int, int]]:
    """Owner ids as the host sees them, whichever view (namespace or not) this process has."""
    if not ctx.in_namespace:
        return lambda uid, gid: (uid, gid)
    from ..mappings import to_host

    uids, gids = ctx.meta.uid_mappings, ctx.meta.gid_mappings

    def translate(uid: int, gid: int) -> tuple[int, int]:
        h_uid, h_gid = to_host(uids, uid), to_host(gids, gid)
        return (-1 if h_uid is None else h_uid, -1 if h_gid is None else h_gid)

    return translate


def _file_crc(path: str) -> str:
    import zlib

    crc = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, CHUNK):
            crc = zlib.crc32(chunk, crc)
    finally:
        os.close(fd)
    return f"{CRC_PREFIX}{crc:08x}"


def _file_sha256(path: str) -> str:
    """The content sum of records made before CRC-32 (see the module's docstring)."""
    import hashlib  # not on the warm create path (quick_check): OpenSSL's import costs milliseconds

    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _sum_of(recorded: list[str]) -> Callable[[str], str]:
    """The content sum a manifest was written with (its first regular file says)."""
    for line in recorded:
        if line.startswith("f "):
            return _file_crc if line.split(" ", 6)[5].startswith(CRC_PREFIX) else _file_sha256
    return _file_crc


def walk_records(diff: str, ids: Callable[[int, int], tuple[int, int]],
                 file_sum: Callable[[str], str] = _file_crc) -> tuple[list[str], list[str]]:
    """(manifest lines, dirs lines) of the tree at ``diff``, in a stable order."""
    import hashlib

    manifest: list[str] = []
    dirs: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(diff, rel) if rel else diff
        dirs.append(f"{os.lstat(path).st_ctime_ns} {_escape(rel or '.')}")
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            child = f"{rel}/{entry.name}" if rel else entry.name
            uid, gid = ids(st.st_uid, st.st_gid)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                kind, size, extra = "d", "-", "-"
                subdirs.append(child)
            elif stat.S_ISREG(mode):
                kind, size, extra = "f", str(st.st_size), file_sum(entry.path)
            elif stat.S_ISLNK(mode):
                kind, size, extra = "l", str(st.st_size), hashlib.sha256(os.fsencode(os.readlink(entry.path))).hexdigest()
            else:
                kind, size, extra = "o", str(st.st_rdev), "-"
            mtime = "-" if kind == "d" else str(st.st_mtime_ns)
            manifest.append(f"{kind} {stat.S_IMODE(mode):o} {uid} {gid} {size} {extra} {mtime} {_escape(child)}")
        stack.extend(reversed(subdirs))
    return manifest, dirs


def write_records(ctx: StoreContext, layer_dir: str) -> None:
    """Record the freshly unpacked layer in ``layer_dir`` (before it is installed)."""
    manifest, dirs = walk_records(os.path.join(layer_dir, "diff"), host_ids(ctx))
    for name, lines in ((MANIFEST, manifest), (DIRS, dirs)):
        # names are bytes on disk: a non-UTF-8 one round-trips through surrogateescape
        with open(os.path.join(layer_dir, name), "w", errors="surrogateescape") as f:
            f.write("\n".join(lines) + "\n")


def quick_check(ctx: StoreContext, chain_id: str, name: str) -> None:
    """Raise LayerError if a directory of the cached layer changed since it was unpacked
    (something was removed, added or renamed in it). Layers without a record pass."""
    layer_dir = ctx.store.layer_dir(chain_id)
    try:
        with open(os.path.join(layer_dir, DIRS), errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        if os.path.isdir(layer_dir):
            return  # unpacked before records existed: only `check` can say
        raise damaged(name, chain_id, "it is missing") from None
    # Relative to an fd of diff/: the kernel walks only the path inside the layer (the
    # debian bench image has ~1,000 directories: 2.0 -> 1.3 ms per create).
    try:
        diff = os.open(os.path.join(layer_dir, "diff"), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise damaged(name, chain_id, "/ is missing") from None
    lstat = os.lstat
    try:
        for line in lines:
            ctime, _, rel = line.partition(" ")
            try:
                now = lstat(_unescape(rel), dir_fd=diff).st_ctime_ns
            except PermissionError:
                if ctx.in_namespace or not ctx.meta.rootless:
                    raise
                ctx.enter()  # a directory only the namespace's root may search
                quick_check(ctx, chain_id, name)
                return
            except OSError:
                raise damaged(name, chain_id, f"/{_shown(rel)} is missing") from None
            if str(now) != ctime:
                raise damaged(name, chain_id, f"/{'' if rel == '.' else _shown(rel)} changed")
    finally:
        os.close(diff)


def damaged(name: str, chain_id: str, what: str) -> LayerError:
    return LayerError(f"{name} in the store is damaged ({what} since it was unpacked): "
                      "`rootless-groot check --repair` removes it and fetches it again")


def full_check(ctx: StoreContext, chain_id: str) -> list[str]:
    """Differences between the cached layer and its manifest, as short texts (empty: intact)."""
    layer_dir = ctx.store.layer_dir(chain_id)
    try:
        with open(os.path.join(layer_dir, MANIFEST), errors="surrogateescape") as f:
            recorded = f.read().splitlines()
    except FileNotFoundError:
        return ["no record of it was made when it was unpacked"]
    try:
        now, _ = walk_records(os.path.join(layer_dir, "diff"), host_ids(ctx), _sum_of(recorded))
    except OSError as e:
        return [f"cannot read it: {e.strerror}: {e.filename}"]
    if now == recorded:
        return []
    before = {_path_of(line): line for line in recorded}
    after = {_path_of(line): line for line in now}
    problems = []
    for path in sorted(set(before) | set(after)):
        if path not in after:
            problems.append(f"/{_shown(path)} missing")
        elif path not in before:
            problems.append(f"/{_shown(path)} added")
        elif before[path] != after[path]:
            problems.append(f"/{_shown(path)} changed")
    return problems


def _shown(rel: str) -> str:
    """A recorded path for a message: printable whatever bytes the name has."""
    return os.fsencode(_unescape(rel)).decode("utf-8", "backslashreplace")


def _path_of(line: str) -> str:
    return line.split(" ", 7)[7]
