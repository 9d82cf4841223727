"""Garbage collection: layers no image uses, leftovers of interrupted commands, stale links.

``clean`` holds the store's gc lock exclusively; every ``create`` and ``delete`` holds it
shared for its whole run, so a layer that a create in flight is about to use is never
removed, and nothing in ``tmp/`` belongs to a live command while clean runs.
"""
from __future__ import annotations

import os

from .. import log
from ..errors import GrootError
from .context import StoreContext
from .imageinfo import half_made_ids, image_ids, read_image
from .images import settle_image
from .layers import layer_size, remove_tree
from .locks import flocked


def unused_layers(all_layers: set[str], images_layers: list[list[str]]) -> set[str]:
    """Layers that no image references."""
    used: set[str] = set()
    for layers in images_layers:
        used.update(layers)
    return all_layers - used


def store_usage(ctx: StoreContext) -> int:
    return sum(layer_size(ctx, c) for c in _layer_ids(ctx))


def _layer_ids(ctx: StoreContext) -> set[str]:
    try:
        return set(os.listdir(ctx.store.layers))
    except FileNotFoundError:
        return set()


def clean(ctx: StoreContext, threshold: int) -> bool:
    """Remove what no image needs. Returns False if the threshold was not reached."""
    ctx.check_writable()
    ctx.enter()
    with flocked(ctx.store.lock_path("gc")):
        if threshold > 0 and store_usage(ctx) <= threshold:
            return False
        for image_id in half_made_ids(ctx):  # left by killed commands (live ones hold their lock)
            settle_image(ctx, image_id)
        layers = _layer_ids(ctx)
        unused: set[str] = set(layers)
        for image_id in image_ids(ctx):
            if not unused:
                break  # every layer is known to be in use: the other images cannot change that
            try:
                unused = unused_layers(unused, [read_image(ctx, image_id).layers])
            except GrootError as e:
                # Which layers a corrupt image needs is unknown: keep them all.
                log.error("clean.unreadable-image", id=image_id, error=str(e))
                unused = set()
        for chain_id in sorted(unused):
            doomed = os.path.join(ctx.store.tmp, f"gc-{chain_id}")
            os.rename(ctx.store.layer_dir(chain_id), doomed)
            log.info("clean.layer-removed", chain_id=chain_id)
        _clean_tmp(ctx)
        _clean_links(ctx)
    return True


def _clean_tmp(ctx: StoreContext) -> None:
    for name in os.listdir(ctx.store.tmp):
        path = os.path.join(ctx.store.tmp, name)
        if os.path.isdir(path) and not os.path.islink(path):
            remove_tree(path)
        else:
            os.unlink(path)


def _clean_links(ctx: StoreContext) -> None:
    for name in os.listdir(ctx.store.links):
        path = os.path.join(ctx.store.links, name)
        if not os.path.exists(path):
            os.unlink(path)
