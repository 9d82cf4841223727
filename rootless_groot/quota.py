"""The quota hook: disk limits per image through the privileged helper (``privileged_helper``).

A store is registered with the helper by ``init-store --store-size-bytes N`` as root; the
registration (``/etc/rootless-groot/stores.d/<name>.json``, world-readable) names the store
by a hash of its path. The helper is asked for three things only: set, get, clear a limit on
``images/<id>``. As root, the helper's code is called directly; otherwise through the setuid
launcher. See docs/quota.md.

The launcher must be started from the initial user namespace (the kernel ignores setuid in a
child namespace), but commands join the store's namespace before touching images. So
``check_available`` / ``prepare`` start the helper process *before* that, and it waits for
its one request on stdin.
"""
from __future__ import annotations

import json
import os
import stat

from . import log
from .errors import QuotaError
from .store.context import StoreContext
from .store.imageinfo import ImageInfo

MIN_LIMIT = 256 * 1024  # GrootFS raises smaller limits to this
HELPER = "/usr/local/libexec/rootless-groot/rootless-groot-quota"
CONFIG_DIR = "/etc/rootless-groot"
HELPER_TIMEOUT = 120

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

_pending: subprocess.Popen | None = None


def effective_limit(requested: int) -> int:
    """GrootFS semantics: negative is an error (checked in config), tiny limits are raised."""
    if requested <= 0:
        return 0
    return max(requested, MIN_LIMIT)


def helper_path() -> str:
    return os.environ.get("ROOTLESS_GROOT_QUOTA_HELPER") or HELPER


def store_name(root: str) -> str:
    """The store's registration name: derived from its real path, so nothing has to be stored."""
    from .digests import sha256_hex

    return "s" + sha256_hex(os.path.realpath(root).encode())[:24]


def registration(root: str) -> dict | None:
    path = os.path.join(CONFIG_DIR, "stores.d", store_name(root) + ".json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("path") != os.path.realpath(root) or doc.get("fs") not in ("xfs", "btrfs"):
        return None
    return doc


def _in_child_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return True


def _direct() -> bool:
    """Real root in the initial namespace: call the helper's code in-process."""
    return os.geteuid() == 0 and os.getuid() == 0 and not _in_child_userns()


def _require(ctx: StoreContext) -> dict:
    reg = registration(ctx.store.root)
    if reg is None:
        raise QuotaError(
            f"disk limits need a store registered with the quota helper; {ctx.store.root} is not "
            "(as root: `rootless-groot --store STORE init-store --store-size-bytes N ...`, see docs/quota.md), "
            "or create without --disk-limit-size-bytes")
    return reg


def _spawn() -> subprocess.Popen:
    import subprocess

    path = helper_path()
    try:
        st = os.stat(path)
    except OSError:
        raise QuotaError(f"the quota helper {path} is not installed (as root: `make install-helper`)") from None
    if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
        raise QuotaError(f"the quota helper {path} is not setuid root (as root: `make install-helper`)")
    return subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={}, close_fds=True, cwd="/")


def prepare(ctx: StoreContext) -> None:
    """Start the helper now, while still outside the store's namespace (no-op if not needed)."""
    global _pending
    if _pending is None and not _direct() and not _in_child_userns() and registration(ctx.store.root):
        try:
            _pending = _spawn()
        except QuotaError as e:
            log.debug("quota.helper-unavailable", error=str(e))


def check_available(ctx: StoreContext) -> None:
    """Fail early, before any download, when a limit cannot be enforced on this store."""
    global _pending
    _require(ctx)
    if _direct() or _pending is not None:
        return
    if _in_child_userns():
        raise QuotaError("the quota helper cannot be started from inside a user namespace")
    _pending = _spawn()


_MESSAGES = {
    "denied": "the quota helper refused image `{image}`: it must be a fresh image directory of your own store",
    "exhausted": "the quota helper has no free project ID",
    "failed": "the quota helper failed (is it installed correctly? see docs/quota.md)",
}


def _call(op: str, image: str, root: str, **extra: int) -> dict:
    global _pending
    req = {"v": 1, "op": op, "store": store_name(root), "image": image, **extra}
    if _direct():
        from privileged_helper.ops import handle
        from privileged_helper.protocol import HelperError, parse_request

        from .syscalls import set_fs_ids

        # the helper's code switches fs ids itself (to the store's owner for root): start from root's
        old_uid, old_gid = set_fs_ids(0, 0)
        try:
            answer = handle(parse_request(json.dumps(req).encode()), 0, 0)
        except HelperError as e:
            answer = e.answer()
        except OSError as e:
            answer = {"ok": False, "error": "failed", "message": str(e)}
        finally:
            set_fs_ids(old_uid, old_gid)
    else:
        import subprocess

        proc, _pending = _pending, None
        if proc is None:
            if _in_child_userns():
                raise QuotaError("the quota helper cannot be started from inside a user namespace")
            proc = _spawn()
        try:
            out, _ = proc.communicate(json.dumps(req).encode(), timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise QuotaError("the quota helper did not answer") from None
        try:
            answer = json.loads(out)
            if not isinstance(answer, dict):
                raise ValueError
        except ValueError:
            raise QuotaError(f"the quota helper gave no answer (exit status {proc.returncode})") from None
    if answer.get("ok") is True:
        return answer
    code = str(answer.get("error"))
    message = answer.get("message") or _MESSAGES.get(code, "the quota helper refused: {code}")
    raise QuotaError(f"{op} disk limit: " + str(message).format(image=image, code=code))


def write_limit(info: ImageInfo) -> int:
    """Bytes the container may write: N, or N - image size when the image counts (GrootFS)."""
    if info.exclude_image_from_quota:
        return info.quota
    if info.quota <= info.size:
        raise QuotaError("uncompressed layer size exceeds quota: the disk limit is smaller than the image")
    return info.quota - info.size


def apply_limit(ctx: StoreContext, info: ImageInfo) -> None:
    reg = _require(ctx)
    limit = write_limit(info)
    if reg["fs"] == "btrfs":
        make_btrfs_volume(ctx.store.image_dir(info.image_id))
    answer = _call("set", info.image_id, ctx.store.root, bytes=limit)
    log.info("quota.set", id=info.image_id, bytes=answer.get("bytes"), projid=answer.get("projid"))


def make_btrfs_volume(image_dir: str) -> None:
    """btrfs: move the (empty) diff/ and workdir/ into a subvolume ``vol`` the limit applies to.

    They must share one subvolume (overlay renames from workdir/ to diff/; btrfs refuses
    renames across subvolumes); ``diff`` and ``workdir`` become relative symlinks into it.
    """
    from privileged_helper.btrfs import subvol_create

    fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        subvol_create(fd, "vol")
        for sub in ("diff", "workdir"):
            os.mkdir(f"vol/{sub}", 0o755, dir_fd=fd)
            os.rmdir(sub, dir_fd=fd)
            os.symlink(f"vol/{sub}", sub, dir_fd=fd)
    except OSError as e:
        raise QuotaError(f"cannot make the btrfs subvolume for the disk limit: {e.strerror}") from None
    finally:
        os.close(fd)


def release(ctx: StoreContext, info: ImageInfo) -> None:
    """Give the image's project ID back. From inside the store's namespace the helper cannot be
    started; the helper then frees the ID itself once no inode carries it (next ``set``)."""
    if registration(ctx.store.root) is None:
        return
    if not _direct() and _pending is None and _in_child_userns():
        log.debug("quota.release-deferred", id=info.image_id)
        return
    try:
        _call("clear", info.image_id, ctx.store.root)
    except QuotaError as e:
        log.warn("quota.release-failed", id=info.image_id, error=str(e))


def exclusive_usage(ctx: StoreContext, info: ImageInfo) -> int | None:
    """Bytes written by the container, from the quota; None when the caller should walk diff/.

    XFS reports a PROJINHERIT directory's project quota in statfs (what ``df`` shows), so no
    privilege is needed. btrfs: None, for everyone alike: its qgroup (which the limit binds)
    also counts the subvolume's 16 KiB metadata nodes, so stats report the data ``du`` sees.
    """
    if not info.quota:
        return None
    reg = registration(ctx.store.root)
    if reg is None or reg["fs"] != "xfs":
        return None
    st = os.statvfs(os.path.join(ctx.store.image_dir(info.image_id), "diff"))
    return (st.f_blocks - st.f_bfree) * st.f_frsize


# ---------------------------------------------------------------------------- init-store


def _quota_fs(path: str) -> bool:
    """Whether the nearest existing directory at or above ``path`` can enforce limits already."""
    from privileged_helper import btrfs, xfs
    from privileged_helper.paths import fs_magic

    while not os.path.isdir(path):
        path = os.path.dirname(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        magic = fs_magic(fd)
        return ((magic == xfs.XFS_SUPER_MAGIC and xfs.project_quota_enforced(fd))
                or (magic == btrfs.BTRFS_SUPER_MAGIC and btrfs.quota_enabled(fd)))
    finally:
        os.close(fd)


def _run(argv: list[str]) -> None:
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise QuotaError(f"{argv[0]} not found: install xfsprogs") from None
    if proc.returncode != 0:
        detail = ((proc.stderr or proc.stdout).strip().splitlines() or [""])[0][:300]
        raise QuotaError(f"{' '.join(argv[:2])} failed: {detail}")


def _make_dirs(path: str, undo: list) -> None:
    """``os.makedirs`` that records, in ``undo``, how to remove what it created."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        os.mkdir(path, 0o700)
        undo.append(lambda path=path: None if os.path.ismount(path) else _remove_tree(path))


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def make_backing_store(root: str, size: int, undo: list | None = None) -> str:
    """A sparse XFS file next to the store, mounted on it with prjquota,noatime (GrootFS's layout).

    ``undo`` gets how to take back each step that was done (file, mount, directories).
    """
    undo = [] if undo is None else undo
    backing = root + ".backing-store"
    _make_dirs(root, undo)
    if os.path.ismount(root):
        return backing
    if os.listdir(root):
        raise QuotaError(f"cannot mount a backing store on {root}: the directory is not empty")
    if not os.path.exists(backing):
        fd = os.open(backing, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        undo.append(lambda: os.unlink(backing))
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        _run(["mkfs.xfs", "-q", "-f", backing])
    _run(["mount", "-o", "loop,prjquota,noatime", backing, root])
    undo.append(lambda: _run(["umount", root]))
    return backing


def init_quota_store(cfg, size: int, uid_mappings, gid_mappings, explicit: bool):
    """``init-store --store-size-bytes N`` (root): quota filesystem, owner, registration, store.

    A failure takes back what this call did (registration, mount, backing file, directories it
    created), so a failed init-store leaves nothing behind.
    """
    from .mappings import to_host
    from .store.context import init_store
    from privileged_helper.ops import register
    from privileged_helper.protocol import HelperError
    from privileged_helper.state import Roots, remove_registration

    if size < 0:
        raise QuotaError("store size must be positive")
    if os.geteuid() != 0:
        raise QuotaError("--store-size-bytes needs root: it mounts a filesystem and registers the store with "
                         "the quota helper (run init-store as root, with the owner's --uid-mapping/--gid-mapping)")
    root = os.path.realpath(cfg.store)
    owner_uid = to_host(tuple(uid_mappings), 0) if uid_mappings else 0
    owner_gid = to_host(tuple(gid_mappings), 0) if gid_mappings else 0
    owner_uid = 0 if owner_uid is None else owner_uid
    owner_gid = 0 if owner_gid is None else owner_gid
    undo: list = []
    try:
        backing = None
        if not _quota_fs(root):
            backing = make_backing_store(root, size, undo)
        _make_dirs(root, undo)
        os.chown(root, owner_uid, owner_gid)
        os.chmod(root, 0o700)
        registered = registration(root) is not None
        try:
            register(store_name(root), root, owner_uid, backing)
        except HelperError as e:
            raise QuotaError(f"cannot register {root} with the quota helper: {e.detail or e.code}") from None
        if not registered:
            undo.append(lambda: remove_registration(Roots(), store_name(root)))
        if owner_uid == 0:
            return init_store(cfg, uid_mappings, gid_mappings, explicit)
        _init_as(owner_uid, owner_gid, lambda: init_store(cfg, uid_mappings, gid_mappings, explicit))
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except (OSError, QuotaError):
                pass
        raise
    from .store.layout import Store

    return Store(cfg.store).read_meta()


def _init_as(uid: int, gid: int, fn) -> None:
    """Run ``fn`` (init_store) as the owner in a child, so the store is the owner's rootless store."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            fn()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            os.write(w, str(e).encode()[:4000])
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise QuotaError(message or "init-store as the store's owner failed")
