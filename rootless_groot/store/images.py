"""Images: one per container, ``images/<id>/{diff,work,rootfs,image.json}``."""
from __future__ import annotations

import os

from .. import log
from ..errors import GrootError, NotFound, UsageError
from ..fastjson import dumps, loads
from ..record import Record
from .layers import ensure_short_link, layer_size, make_temp_dir, remove_in_process, remove_tree
from .locks import flocked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import StoreContext

IMAGE_META = "image.json"
IMAGE_SUBDIRS = ("diff", "work", "rootfs")  # upperdir, workdir, mountpoint


class ImageInfo(Record):
    """What ``image.json`` records about one image."""

    __slots__ = ("image_id", "layers", "env", "size", "mount", "quota", "exclude_image_from_quota", "config")
    _defaults = {"config": None}
    image_id: str
    layers: list[str]  # chain IDs, base first
    env: list[str]
    size: int  # bytes of the image's layers
    mount: bool  # whether the store keeps it mounted (False: --without-mount)
    quota: int
    exclude_image_from_quota: bool
    config: dict | None  # the image config's Entrypoint, Cmd, WorkingDir, User (sources.base.run_config)

    def to_json(self) -> dict:
        doc = {"id": self.image_id, "layers": self.layers, "env": self.env, "size": self.size,
               "mount": self.mount, "quota": self.quota,
               "exclude_image_from_quota": self.exclude_image_from_quota}
        if self.config:
            doc["config"] = self.config
        return doc


def check_id(image_id: str) -> None:
    if not image_id:
        raise UsageError("id was not specified")
    if "/" in image_id or "\x00" in image_id:
        raise UsageError(f"id `{image_id}` contains invalid characters: `/`")
    if image_id in (".", "..") or len(image_id) > 255:
        raise UsageError(f"id `{image_id}` is not a valid image id")


def read_image(ctx: StoreContext, image_id: str) -> ImageInfo:
    path = os.path.join(ctx.store.image_dir(image_id), IMAGE_META)
    try:
        with open(path) as f:
            data = loads(f.read())
        return ImageInfo(data["id"], list(data["layers"]), list(data["env"]), int(data["size"]), bool(data["mount"]),
                         int(data.get("quota", 0)), bool(data.get("exclude_image_from_quota", False)),
                         data.get("config") if isinstance(data.get("config"), dict) else None)
    except FileNotFoundError:
        raise NotFound(f"Image `{image_id}` not found.") from None
    except (ValueError, KeyError, TypeError):
        raise GrootError(f"image metadata {path} is corrupt") from None


def image_ids(ctx: StoreContext) -> list[str]:
    try:
        return sorted(os.listdir(ctx.store.images))
    except FileNotFoundError:
        return []


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
        os.path.join(image_dir, "work"),
        os.path.join(image_dir, "rootfs"),
        userxattr=True,
        short_lowerdirs=(ctx.store.links, short),
    )


def remount_all(ctx: StoreContext) -> None:
    """After a keeper restart: mount every image that the store keeps mounted."""
    from ..mount import is_mountpoint

    for image_id in image_ids(ctx):
        try:
            info = read_image(ctx, image_id)
            if info.mount and not is_mountpoint(os.path.join(ctx.store.image_dir(image_id), "rootfs")):
                mount_image(ctx, info)
        except GrootError as e:
            log.error("image.remount-failed", id=image_id, error=str(e))


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
        opts = overlay_options(lowers, os.path.join(image_dir, "diff"), os.path.join(image_dir, "work"), userxattr=True)
        spec["mounts"] = [{"destination": "/", "type": "overlay", "source": "overlay", "options": [opts]}]
    return spec


def create_image(ctx: StoreContext, image_id: str, layers: list[str], env: list[str], *, mount: bool,
                 quota: int, exclude_image_from_quota: bool, config: dict | None = None) -> ImageInfo:
    """Assemble the image directory in ``tmp/``, rename it into ``images/``, then mount it."""
    store = ctx.store
    if mount or quota:  # an image left unmounted is made from outside: no namespace to join
        ctx.enter()
    size = sum(layer_size(ctx, c) for c in layers)
    for chain_id in layers:
        ensure_short_link(ctx, chain_id)
    info = ImageInfo(image_id, layers, env, size, mount, quota, exclude_image_from_quota, config)
    work = make_temp_dir(store.tmp, f"image-{image_id[:32]}-")
    try:
        for sub in IMAGE_SUBDIRS:
            os.mkdir(os.path.join(work, sub), 0o755)
        owner = (ctx.meta.owner_uid, ctx.meta.owner_gid)
        if not ctx.meta.rootless and owner != (os.geteuid(), os.getegid()):
            # As root with mappings, the container's root owns its image (GrootFS does the same).
            for path in (work, *(os.path.join(work, sub) for sub in IMAGE_SUBDIRS)):
                os.chown(path, *owner)
        with open(os.path.join(work, IMAGE_META), "w") as f:
            f.write(dumps(info.to_json()))
        try:
            os.rename(work, store.image_dir(image_id))
        except OSError as e:
            if os.path.isdir(store.image_dir(image_id)):
                raise GrootError(f"image for id `{image_id}` already exists") from None
            raise GrootError(f"cannot create image `{image_id}`: {e.strerror}") from None
    except BaseException:
        remove_tree(work)
        raise
    try:
        if quota:
            from .. import quota as quota_mod

            quota_mod.apply_limit(ctx, info)
        if mount:
            mount_image(ctx, info)
    except BaseException:
        _remove_image_dir(ctx, image_id)
        raise
    return info


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
        unmount(rootfs)
        if is_mountpoint(rootfs):  # never remove through a mount (the lower layers are shared)
            raise GrootError(f"cannot delete image `{image_id}`: {rootfs} is still mounted")
    doomed = make_temp_dir(ctx.store.tmp, f"deleted-{image_id[:32]}-")
    os.rename(image_dir, os.path.join(doomed, "image"))
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
    """Unmount, release the quota, and remove an image (rename first: it vanishes atomically)."""
    info = read_image(ctx, image_id)
    quota_mod = _quota_for(ctx, info)
    if info.mount or quota_mod:  # else _remove_image_dir joins only if the files need it
        ctx.enter()
    with flocked(ctx.store.lock_path("gc"), exclusive=False):
        if quota_mod:
            quota_mod.release(ctx, info)
        _remove_image_dir(ctx, image_id)
    log.info("image.deleted", id=image_id)


def disk_usage(path: str) -> int:
    """Bytes allocated under ``path``, each inode counted once (hardlinks)."""
    seen: set[int] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1:
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def image_stats(ctx: StoreContext, image_id: str) -> dict:
    """GrootFS's four numbers. Without a quota, exclusive bytes come from walking ``diff/``."""
    info = read_image(ctx, image_id)
    exclusive = None
    if info.quota:
        from .. import quota

        exclusive = quota.exclusive_usage(ctx, info)
    if exclusive is None:
        diff = os.path.join(ctx.store.image_dir(image_id), "diff")
        try:  # as the user first: the namespace is needed only for directories it cannot read
            exclusive = disk_usage(diff)
        except PermissionError:
            ctx.enter()
            exclusive = disk_usage(diff)
    return {"disk_usage": {
        "total_bytes_used": exclusive + info.size,
        "exclusive_bytes_used": exclusive,
        "quota_size_bytes": info.quota,
        "committed_space_bytes": info.size + info.quota,
    }}

