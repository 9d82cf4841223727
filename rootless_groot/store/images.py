"""Images: one per container, ``images/<id>/{diff,work,rootfs,image.json}``.

An image is real once its ``image.json`` exists (docs/consistency.md). ``create`` builds the
directory in ``tmp/`` with the record under the name ``image.json.pending``, renames it into
``images/``, mounts it and only then renames the record to ``image.json``; ``delete`` renames
``image.json`` back to the pending name first. A directory in ``images/`` without
``image.json`` is half-made: never listed, and removed by the next ``create`` or ``delete`` of
its id or by ``clean``, unless the command making or removing it still runs (it holds an
exclusive flock on the image directory for as long as the image is not settled).
Reading them (``image.json``, the real ids, stats, list) is in ``imageinfo.py``.
"""
from __future__ import annotations

import errno
import os

from .. import log
from ..errors import GrootError, NotFound
from ..fastjson import dumps
from .imageinfo import IMAGE_META, PENDING_META, ImageInfo, _flag_path, image_ids, is_real, read_image

# .layers and .locks are imported inside the functions that change the store.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import StoreContext

IMAGE_SUBDIRS = ("diff", "workdir", "rootfs")  # upperdir, workdir (GrootFS's name), mountpoint
LEGACY_WORKDIR = "work"  # images made before the workdir took GrootFS's name


def overlay_workdir(image_dir: str) -> str:
    """The image's overlay work directory (``work/`` in images made by older versions)."""
    legacy = os.path.join(image_dir, LEGACY_WORKDIR)
    return legacy if os.path.isdir(legacy) else os.path.join(image_dir, "workdir")


def lock_image_dir(path: str, wait: bool = True) -> int | None:
    """An exclusive flock on the image directory at ``path``: its fd, None if there is no
    directory there, -1 if another command holds it and ``wait`` is False."""
    import fcntl

    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return -1
        try:
            st = os.stat(path, follow_symlinks=False)
            mine = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except FileNotFoundError:
            os.close(fd)
            return None
        os.close(fd)  # replaced while we waited: lock the new one
    raise GrootError(f"image directory {path} keeps changing")


def settle_image(ctx: StoreContext, image_id: str) -> str:
    """``absent``, ``real`` or ``busy`` (another command is creating or deleting it).

    A half-made image left by a command that died is removed here (it becomes ``absent``).
    Joins the store's namespace only when there is something to remove.
    """
    path = ctx.store.image_dir(image_id)
    if not os.path.lexists(path):
        return "absent"
    if is_real(ctx, image_id):
        return "real"
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)  # not ours: nothing in images/ is ever a file
        return "absent"
    ctx.enter()
    fd = lock_image_dir(path, wait=False)
    if fd is None:
        return "absent"
    if fd == -1:
        return "busy"
    try:
        if is_real(ctx, image_id):
            return "real"
        _remove_image_dir(ctx, image_id)
        log.info("image.half-made-removed", id=image_id)
        return "absent"
    finally:
        os.close(fd)


def _lowerdirs(ctx: StoreContext, info: ImageInfo) -> tuple[list[str], list[str]]:
    """Absolute layer dirs and short link names, both top first."""
    full = [ctx.store.layer_diff(c) for c in reversed(info.layers)]
    short = [os.path.basename(ctx.store.short_link(c)) for c in reversed(info.layers)]
    return full, short


def mount_image(ctx: StoreContext, info: ImageInfo) -> None:
    from ..mount import mount_overlay

    image_dir = ctx.store.image_dir(info.image_id)
    full, short = _lowerdirs(ctx, info)
    mount_overlay(
        full,
        os.path.join(image_dir, "diff"),
        overlay_workdir(image_dir),
        os.path.join(image_dir, "rootfs"),
        userxattr=True,
        short_lowerdirs=(ctx.store.links, short),
    )


def _set_flag(ctx: StoreContext, image_id: str, error: str | None) -> None:
    """Remember (or forget) that an image which should be mounted is not."""
    path = _flag_path(ctx, image_id)
    if error is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write(error + "\n")


def ensure_mounted(ctx: StoreContext, info: ImageInfo) -> str | None:
    """Mount an image that should be mounted and is not (inside the namespace): None when it
    is mounted now, else why not (also remembered in ``run/unmounted/<id>`` for the next
    ``create``, ``stats`` and ``list --json`` to try again)."""
    from ..mount import is_mountpoint

    image_dir = ctx.store.image_dir(info.image_id)
    rootfs = os.path.join(image_dir, "rootfs")
    if not info.mount or is_mountpoint(rootfs):
        return None
    lock = lock_image_dir(image_dir)  # one remount at a time, never of an image being deleted
    if lock is None:
        return None
    try:
        if is_mountpoint(rootfs) or not is_real(ctx, info.image_id):
            return None
        mount_image(ctx, info)
    except GrootError as e:
        error = f"image `{info.image_id}` should be mounted and cannot be remounted: {e}"
        log.error("image.remount-failed", id=info.image_id, error=str(e))
        _set_flag(ctx, info.image_id, error)
        return error
    finally:
        os.close(lock)
    _set_flag(ctx, info.image_id, None)
    log.info("image.remounted", id=info.image_id)
    return None


def remount_all(ctx: StoreContext) -> None:
    """After a keeper restart: mount every image that the store keeps mounted."""
    for image_id in image_ids(ctx):
        try:
            info = read_image(ctx, image_id)
        except GrootError as e:
            log.error("image.remount-failed", id=image_id, error=str(e))
            continue
        error = ensure_mounted(ctx, info)
        if error:
            log.warn("image.remount-failed", id=image_id, text=error)


def retry_remounts(ctx: StoreContext) -> None:
    """Try again to mount the images a remount failed for (one ``listdir`` when there are none)."""
    try:
        flagged = os.listdir(os.path.join(ctx.store.run, "unmounted"))
    except FileNotFoundError:
        return
    for image_id in flagged:
        try:
            info = read_image(ctx, image_id)
        except GrootError:
            _set_flag(ctx, image_id, None)  # deleted meanwhile (or unreadable: delete handles it)
            continue
        ctx.enter()
        error = ensure_mounted(ctx, info)
        if error:
            log.warn("image.remount-failed", id=image_id, text=error)


def flag_unmounted(ctx: StoreContext, image_id: str, why: str) -> None:
    _set_flag(ctx, image_id, f"image `{image_id}` should be mounted and is not: {why}")


def runtime_spec(ctx: StoreContext, info: ImageInfo) -> dict:
    """The partial OCI runtime spec Garden expects on stdout from ``create``."""
    image_dir = ctx.store.image_dir(info.image_id)
    process: dict = {"user": {"uid": 0, "gid": 0}}
    if info.env:
        process["env"] = info.env
    process["cwd"] = ""
    spec: dict = {"ociVersion": "", "process": process, "root": {"path": os.path.join(image_dir, "rootfs")}}
    if not info.mount:
        from ..mount import overlay_options

        lowers = [ctx.store.short_link(c) for c in reversed(info.layers)]
        opts = overlay_options(lowers, os.path.join(image_dir, "diff"), overlay_workdir(image_dir), userxattr=True)
        spec["mounts"] = [{"destination": "/", "type": "overlay", "source": "overlay", "options": [opts]}]
    return spec


def create_image(ctx: StoreContext, image_id: str, layers: list[str], env: list[str], *, mount: bool,
                 quota: int, exclude_image_from_quota: bool, config: dict | None = None,
                 source: str | None = None) -> ImageInfo:
    """Assemble the image directory in ``tmp/``, rename it into ``images/``, then mount it."""
    store = ctx.store
    if mount or quota:  # an image left unmounted is made from outside: no namespace to join
        ctx.enter()
    from .layers import ensure_short_link, layer_size, make_temp_dir, remove_tree

    size = sum(layer_size(ctx, c) for c in layers)
    for chain_id in layers:
        ensure_short_link(ctx, chain_id)
    info = ImageInfo(image_id, layers, env, size, mount, quota, exclude_image_from_quota, config, source)
    work = make_temp_dir(store.tmp, f"image-{image_id[:32]}-")
    lock = -1
    try:
        for sub in IMAGE_SUBDIRS:
            os.mkdir(os.path.join(work, sub), 0o755)
        owner = (ctx.meta.owner_uid, ctx.meta.owner_gid)
        if not ctx.meta.rootless and owner != (os.geteuid(), os.getegid()):
            # As root with mappings, the container's root owns its image (GrootFS does the same).
            for path in (work, *(os.path.join(work, sub) for sub in IMAGE_SUBDIRS)):
                os.chown(path, *owner)
        with open(os.path.join(work, PENDING_META), "w") as f:
            f.write(dumps(info.to_json()))
        lock = lock_image_dir(work)  # held until the image is real (or removed again)
        try:
            os.rename(work, store.image_dir(image_id))
        except OSError as e:
            if os.path.lexists(store.image_dir(image_id)):
                raise GrootError(f"image for id `{image_id}` already exists") from None
            raise GrootError(f"cannot create image `{image_id}`: {e.strerror}") from None
    except BaseException:
        if lock is not None and lock >= 0:
            os.close(lock)
        remove_tree(work)
        raise
    try:
        if quota:
            from .. import quota as quota_mod

            with log.Step("applying-quota", "info", bytes=quota):
                quota_mod.apply_limit(ctx, info)
        if mount:
            with log.Step("mounting", "info"):
                mount_image(ctx, info)
        _write_marker(store.image_dir(image_id), info)  # now it is real
    except BaseException:
        _remove_image_dir(ctx, image_id)
        raise
    finally:
        os.close(lock)  # type: ignore[arg-type]
    if mount and ctx.keeper_pid is not None:
        from ..namespace import is_keeper

        if not is_keeper(ctx.keeper_pid, store):
            # The keeper died while we ran: our mount went with its namespace; the next
            # command (a new keeper) mounts the image again.
            flag_unmounted(ctx, image_id, "the store's keeper was stopped while it was created")
    return info


def _write_marker(image_dir: str, info: ImageInfo) -> None:
    """Make the image real: rename its pending record to ``image.json``.

    With an XFS disk limit the directory now has a project ID that the record (made before)
    does not carry, and XFS refuses that rename (EXDEV): then ``image.json`` is written whole
    (a new file, then a rename) and the pending record dropped.
    """
    pending, final = os.path.join(image_dir, PENDING_META), os.path.join(image_dir, IMAGE_META)
    try:
        os.rename(pending, final)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    tmp = f"{final}.tmp"
    with open(tmp, "w") as f:
        f.write(dumps(info.to_json()))
    os.rename(tmp, final)
    os.unlink(pending)


def _remove_image_dir(ctx: StoreContext, image_id: str) -> None:
    """Unmount (in the namespace) and remove an image directory.

    Outside the namespace (a rootless image the store never mounted) there is nothing to
    unmount, and the tree is removed as the user; should the container have left files
    only the namespace's root may remove, the namespace is joined for the rest.
    """
    image_dir = ctx.store.image_dir(image_id)
    outside = ctx.meta.rootless and not ctx.in_namespace
    if not outside:
        from ..mount import is_mountpoint, unmount

        rootfs = os.path.join(image_dir, "rootfs")
        for _ in range(8):  # two remounts racing may have stacked mounts
            unmount(rootfs)
            if not is_mountpoint(rootfs):
                break
        if is_mountpoint(rootfs):  # never remove through a mount (the lower layers are shared)
            raise GrootError(f"cannot delete image `{image_id}`: {rootfs} is still mounted")
    from .layers import make_temp_dir, remove_in_process, remove_tree

    doomed = make_temp_dir(ctx.store.tmp, f"deleted-{image_id[:32]}-")
    try:
        os.rename(image_dir, os.path.join(doomed, "image"))
    except OSError as e:
        if e.errno != errno.EXDEV:  # XFS: a directory tagged with a project ID stays where it is
            raise
        os.rmdir(doomed)
        doomed = image_dir
    _set_flag(ctx, image_id, None)
    if outside:
        try:
            remove_in_process(doomed)
            return
        except (OSError, RecursionError):
            ctx.enter()
    remove_tree(doomed)


def _quota_for(ctx: StoreContext, info: ImageInfo):
    """The quota module if the image has a limit (started now: the setuid helper cannot be
    launched from inside the store's namespace, which the caller joins next), else None."""
    if not info.quota:
        return None
    from .. import quota

    quota.prepare(ctx)
    return quota


def delete_image(ctx: StoreContext, image_id: str) -> None:
    """Make the image gone, whatever its metadata: unreal first (``image.json`` renamed to the
    pending name), then release its quota, unmount it and remove it (renamed into ``tmp/``)."""
    image_dir = ctx.store.image_dir(image_id)
    if not os.path.lexists(image_dir):
        raise NotFound(f"Image `{image_id}` not found.")
    info: ImageInfo | None = None
    for name in (IMAGE_META, PENDING_META):
        try:
            info = read_image(ctx, image_id, name)
            break
        except GrootError as e:  # corrupt or missing: delete it all the same
            if not isinstance(e, NotFound):
                log.error("image.corrupt-metadata", id=image_id, error=str(e))
    ctx.check_writable()
    quota_mod = _quota_for(ctx, info) if info is not None else None
    if info is None or info.mount or quota_mod:  # else _remove_image_dir joins only if the files need it
        ctx.enter()
    from .locks import flocked

    with flocked(ctx.store.lock_path("gc"), exclusive=False):
        if not os.path.isdir(image_dir) or os.path.islink(image_dir):
            if not os.path.lexists(image_dir):
                raise NotFound(f"Image `{image_id}` not found.")
            os.unlink(image_dir)
            return
        lock = lock_image_dir(image_dir)  # waits for a create of this id still in flight
        if lock is None:
            raise NotFound(f"Image `{image_id}` not found.")
        try:
            try:
                os.rename(os.path.join(image_dir, IMAGE_META), os.path.join(image_dir, PENDING_META))
            except FileNotFoundError:
                pass
            except OSError as e:  # XFS: a record older than the directory's project ID
                if e.errno != errno.EXDEV:
                    raise
                os.unlink(os.path.join(image_dir, IMAGE_META))
            if quota_mod and info is not None:
                quota_mod.release(ctx, info)
            _remove_image_dir(ctx, image_id)
        finally:
            os.close(lock)
    log.info("image.deleted", id=image_id)


