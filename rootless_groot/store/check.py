"""``check [--repair]``: every cached layer against its unpack-time record, every image against
what it should be (real, its layers present and intact, mounted), leftovers of killed commands.

Runs under the store's gc lock (exclusive, as ``clean``): no create or delete is in flight.
``--repair`` removes half-made images, takes damaged layers out of the cache (unmounting the
images on them first), fetches missing layers again from the image references the images
were made from, and remounts what should be mounted.
"""
from __future__ import annotations

import os

from .. import log
from ..errors import GrootError
from .imageinfo import half_made_ids, image_ids, read_image
from .images import ensure_mounted, settle_image
from .integrity import MANIFEST, full_check
from .layers import ensure_layers, remove_tree
from .locks import flocked

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from .context import StoreContext


def check_store(ctx: StoreContext, repair: bool, open_source: Callable[[str], Any]) -> list[str]:
    """The problems found (or, with ``repair``, those left after repairing), one line each."""
    if repair:
        ctx.check_writable()
    ctx.enter()
    with flocked(ctx.store.lock_path("gc")):
        problems: list[str] = []
        for image_id in half_made_ids(ctx):
            if repair and settle_image(ctx, image_id) == "absent":
                log.info("check.half-made-removed", id=image_id)
                continue
            problems.append(f"image {image_id}: half-made (left by a killed command): `clean` removes it")
        damaged: dict[str, list[str]] = {}
        for chain_id in sorted(_layer_ids(ctx)):
            diffs = full_check(ctx, chain_id)
            if diffs and not os.path.exists(os.path.join(ctx.store.layer_dir(chain_id), MANIFEST)):
                log.info("check.unrecorded-layer", chain_id=chain_id)
                continue  # unpacked before records existed: nothing to compare with
            if diffs:
                damaged[chain_id] = diffs
        infos = {}
        for image_id in image_ids(ctx):
            try:
                infos[image_id] = read_image(ctx, image_id)
            except GrootError as e:
                problems.append(f"image {image_id}: {e}")
        if repair and damaged:
            _remove_layers(ctx, damaged, infos)
        if repair:
            _refetch(ctx, infos, open_source, problems)
        else:
            for chain_id, diffs in damaged.items():
                more = f" and {len(diffs) - 5} more" if len(diffs) > 5 else ""
                problems.append(f"layer {chain_id}: damaged: {', '.join(diffs[:5])}{more}")
        for image_id, info in infos.items():
            missing = [c for c in info.layers if not os.path.isdir(ctx.store.layer_dir(c))]
            if missing:
                problems.append(f"image {image_id}: layer {missing[0]} is not in the store"
                                + ("" if repair else ": `check --repair` fetches it again"))
                continue
            if info.mount:
                if repair:
                    error = ensure_mounted(ctx, info)
                else:
                    from ..mount import is_mountpoint

                    mounted = is_mountpoint(os.path.join(ctx.store.image_dir(image_id), "rootfs"))
                    error = None if mounted else f"image {image_id}: should be mounted and is not"
                if error:
                    problems.append(error)
    return problems


def _layer_ids(ctx: StoreContext) -> list[str]:
    try:
        return os.listdir(ctx.store.layers)
    except FileNotFoundError:
        return []


def _remove_layers(ctx: StoreContext, damaged: dict[str, list[str]], infos: dict) -> None:
    """Take damaged layers out of the cache; the images on them are unmounted first."""
    from ..mount import unmount

    for image_id, info in infos.items():
        if info.mount and any(c in damaged for c in info.layers):
            unmount(os.path.join(ctx.store.image_dir(image_id), "rootfs"))
    for chain_id, diffs in damaged.items():
        doomed = os.path.join(ctx.store.tmp, f"gc-{chain_id}")
        os.rename(ctx.store.layer_dir(chain_id), doomed)
        remove_tree(doomed)
        log.warn("check.layer-removed", chain_id=chain_id,
                 text=f"layer {chain_id} was damaged ({', '.join(diffs[:3])}): removed from the cache")


def _refetch(ctx: StoreContext, infos: dict, open_source: Callable[[str], Any], problems: list[str]) -> None:
    """Fetch the missing layers of every image again, from the reference it was made from."""
    tried: set[str] = set()
    for image_id, info in infos.items():
        if all(os.path.isdir(ctx.store.layer_dir(c)) for c in info.layers):
            continue
        if not info.source:
            problems.append(f"image {image_id}: its layers are gone and it records no image reference: "
                            "delete it and create it again")
            continue
        if info.source in tried:
            continue
        tried.add(info.source)
        try:
            source = open_source(info.source)
            try:
                image = source.resolve()
                ensure_layers(ctx, source, [layer for layer in image.layers if layer.chain_id in info.layers])
            finally:
                source.close()
        except GrootError as e:
            problems.append(f"image {image_id}: fetching its layers again from {info.source} failed: {e}")
            continue
        log.info("check.layers-fetched", id=image_id, source=info.source)
