"""``run`` and ``bundle``: from an image in the store to a container (runtime.py does the OCI part)."""
from __future__ import annotations

import os
import sys

from .errors import CommandNotFound, GrootError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from .store.context import StoreContext


def _prepare(ctx: StoreContext, info, cmd, env_flags, workdir, terminal: bool) -> tuple[str, dict]:
    """The mounted rootfs and the container's process; fails with 127 if the command is missing."""
    from .runtime import find_executable, process_spec

    if not info.mount:
        raise GrootError(f"image `{info.image_id}` was created with --without-mount: its rootfs is not mounted")
    ctx.enter()
    from .store.images import ensure_mounted

    error = ensure_mounted(ctx, info)  # never run in an empty rootfs
    if error:
        raise GrootError(error)
    rootfs = os.path.join(ctx.store.image_dir(info.image_id), "rootfs")
    process = process_spec(rootfs, info.config, info.env, cmd, env_flags, workdir, terminal, dict(os.environ))
    if not find_executable(rootfs, process["args"][0], process["env"], process["cwd"]):
        raise CommandNotFound(f"`{process['args'][0]}`: executable file not found in the container")
    return rootfs, process


def run(args, cfg, ctx: StoreContext, create: Callable) -> int:
    """Create (or reuse ``--name``) the image, run the container in the store's namespace, pass
    the exit status back; ``--rm`` deletes the image afterwards, whatever happened."""
    from .runtime import bundle_config, container_name, find_runtime, run_runtime, write_bundle
    from .store.imageinfo import check_id, read_image
    from .store.images import delete_image, settle_image
    from .store.layers import make_temp_dir, remove_tree

    image_id = args.name or f"run-{os.urandom(4).hex()}"
    check_id(image_id)
    if args.tty and not os.isatty(0):
        raise UsageError("-t needs a terminal: the input is not a TTY")
    runtime = find_runtime(args.runtime)
    if args.name and settle_image(ctx, image_id) != "absent":  # a half-made one is removed
        info = read_image(ctx, image_id)
    else:
        info = create(args, cfg.replace(without_mount=False), ctx, image_id)
    try:
        rootfs, process = _prepare(ctx, info, args.cmd, args.env or (), args.workdir, bool(args.tty))
        cid = container_name(image_id)
        bundle_dir = make_temp_dir(ctx.store.tmp, "run-")
        try:
            write_bundle(bundle_dir, bundle_config(rootfs, process, terminal=bool(args.tty), hostname=cid[:63]))
            sys.stdout.flush()
            return run_runtime(runtime, bundle_dir, os.path.join(bundle_dir, "state"), cid)
        finally:
            remove_tree(bundle_dir)
    finally:
        if args.rm:
            delete_image(ctx, image_id)


def bundle(args, ctx: StoreContext) -> int:
    """``DIR/config.json`` for the image's mounted rootfs, as ``umoci unpack`` writes a bundle;
    run it inside the store's namespace: ``rootless-groot enter -- runc --root STATE run --bundle DIR ID``."""
    from .runtime import bundle_config, write_bundle
    from .store.imageinfo import read_image

    info = read_image(ctx, args.id)
    rootfs, process = _prepare(ctx, info, (), (), None, False)
    directory = os.path.abspath(args.dir)
    write_bundle(directory, bundle_config(rootfs, process))
    sys.stderr.write(f"bundle written to {directory}; run it with: rootless-groot --store {ctx.store.root} enter -- "
                     f"runc --root {directory}/state run --bundle {directory} {args.id}\n")
    return 0
