"""Reading images: what ``image.json`` records, which images are real, ``stats`` and ``list``.

Nothing here changes the store except through ``images.ensure_mounted`` (a remount, imported
when one is needed): ``stats`` and ``list``, the most frequent commands after ``create``, load
this module and not the create/delete machinery of ``images.py`` (~0.2 ms of each).
What makes an image real, and half-made ones: see ``images.py`` and docs/consistency.md.
"""
from __future__ import annotations

import os

from ..errors import GrootError, NotFound, UsageError
from ..fastjson import loads
from ..record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import StoreContext

IMAGE_META = "image.json"
PENDING_META = "image.json.pending"  # the record of a half-made image: not a marker
class ImageInfo(Record):
    """What ``image.json`` records about one image."""

    __slots__ = ("image_id", "layers", "env", "size", "mount", "quota", "exclude_image_from_quota", "config",
                 "source")
    _defaults = {"config": None, "source": None}
    image_id: str
    layers: list[str]  # chain IDs, base first
    env: list[str]
    size: int  # bytes of the image's layers
    mount: bool  # whether the store keeps it mounted (False: --without-mount)
    quota: int
    exclude_image_from_quota: bool
    config: dict | None  # the image config's Entrypoint, Cmd, WorkingDir, User (sources.base.run_config)
    source: str | None  # the image reference it was made from (`check --repair` fetches layers again)

    def to_json(self) -> dict:
        doc = {"id": self.image_id, "layers": self.layers, "env": self.env, "size": self.size,
               "mount": self.mount, "quota": self.quota,
               "exclude_image_from_quota": self.exclude_image_from_quota}
        if self.config:
            doc["config"] = self.config
        if self.source:
            doc["source"] = self.source
        return doc


def check_id(image_id: str) -> None:
    if not image_id:
        raise UsageError("id was not specified")
    if "/" in image_id or "\x00" in image_id:
        raise UsageError(f"id `{image_id}` contains invalid characters: `/`")
    if image_id in (".", "..") or len(image_id) > 255:
        raise UsageError(f"id `{image_id}` is not a valid image id")


def read_image(ctx: StoreContext, image_id: str, name: str = IMAGE_META) -> ImageInfo:
    path = os.path.join(ctx.store.image_dir(image_id), name)
    try:
        with open(path) as f:
            data = loads(f.read())
        return ImageInfo(data["id"], list(data["layers"]), list(data["env"]), int(data["size"]), bool(data["mount"]),
                         int(data.get("quota", 0)), bool(data.get("exclude_image_from_quota", False)),
                         data.get("config") if isinstance(data.get("config"), dict) else None,
                         data.get("source") if isinstance(data.get("source"), str) else None)
    except FileNotFoundError:
        raise NotFound(f"Image `{image_id}` not found.") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GrootError(f"image metadata {path} is corrupt: `delete {image_id}` removes the image") from None


def _image_dir_names(ctx: StoreContext) -> list[str]:
    try:
        return os.listdir(ctx.store.images)
    except FileNotFoundError:
        return []


def image_ids(ctx: StoreContext) -> list[str]:
    """The real images (those with an ``image.json``), sorted."""
    return sorted(n for n in _image_dir_names(ctx) if is_real(ctx, n))


def is_real(ctx: StoreContext, image_id: str) -> bool:
    return os.path.lexists(os.path.join(ctx.store.image_dir(image_id), IMAGE_META))


def half_made_ids(ctx: StoreContext) -> list[str]:
    return sorted(n for n in _image_dir_names(ctx) if not is_real(ctx, n))


def _flag_path(ctx: StoreContext, image_id: str) -> str:
    return os.path.join(ctx.store.run, "unmounted", image_id)


def mount_in_doubt(ctx: StoreContext, info: ImageInfo) -> bool:
    """Whether an image the store keeps mounted may not be, found without the namespace: a
    remount of it failed, or (rootless) no keeper holds the mounts, or (as root) it is not."""
    if not info.mount:
        return False
    if os.path.lexists(_flag_path(ctx, info.image_id)):
        return True
    if ctx.meta.rootless:
        if ctx.in_namespace:
            return False  # joined: a new keeper has remounted what it could
        alive = getattr(ctx, "_keeper_alive", None)  # asked once per command (list --json: per image)
        if alive is None:
            from ..namespace import running_keeper

            alive = running_keeper(ctx.store) is not None
            ctx._keeper_alive = alive  # type: ignore[attr-defined]
        return not alive
    from ..mount import is_mountpoint

    return not is_mountpoint(os.path.join(ctx.store.image_dir(info.image_id), "rootfs"))


def image_stats(ctx: StoreContext, image_id: str) -> dict:
    """GrootFS's four numbers. Without a quota nothing is accounted (as in GrootFS): exclusive
    bytes are 0 and the total is the image's size, so a periodic stats (Garden's metrics) never
    walks a container's writes."""
    info = read_image(ctx, image_id)
    if mount_in_doubt(ctx, info):
        from .images import ensure_mounted

        ctx.enter()
        error = ensure_mounted(ctx, info)
        if error:
            raise GrootError(error)
    exclusive = 0
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


def list_json(ctx: StoreContext, ids: list[str]) -> list[dict]:
    """``list --json``: every real image; ``mounted`` is the truth (a remount is tried first
    when in doubt), and an image that cannot be used carries an ``error``."""
    images = []
    for image_id in ids:
        entry: dict = {"id": image_id, "path": ctx.store.image_dir(image_id)}
        try:
            info = read_image(ctx, image_id)
        except GrootError as e:
            entry.update({"size": 0, "layers": 0, "mounted": False, "error": str(e)})
            images.append(entry)
            continue
        error = None
        if mount_in_doubt(ctx, info):
            from .images import ensure_mounted

            ctx.enter()
            error = ensure_mounted(ctx, info)
        entry.update({"size": info.size, "layers": len(info.layers), "mounted": info.mount and not error})
        if error:
            entry["error"] = error
        images.append(entry)
    return images
