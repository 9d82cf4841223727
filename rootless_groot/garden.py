"""Checks for the image-plugin context: Garden calling us the way it calls GrootFS.

A rootless store mounts an image's overlay inside the store's own mount namespace (held by
its keeper). ``rootless-groot enter``/``run`` join that namespace, so this works on a
workstation; Garden's runc runs outside it, sees an empty ``rootfs`` and every process fails
with ``stat /bin/sh: no such file or directory``. A rootless Garden must therefore let runc
mount the overlay itself: ``--without-mount`` (``create.without_mount: true``).

Choice: refuse when the caller is Garden itself (parent process ``gdn``/``guardian``): the
mounted image could never work there, and the refusal reaches the operator in Garden's error
("running image plugin create: ..."). Warn (stderr) when the output is captured by some other
program, which is how a plugin is called; say nothing to an interactive user.
"""
from __future__ import annotations

import os
import sys

from . import log
from .errors import UsageError

GARDEN_PROCESSES = ("gdn", "guardian")
FIX = "use --without-mount (config: create.without_mount: true) so that the runtime mounts the rootfs itself"


def _parent_name() -> str:
    try:
        with open(f"/proc/{os.getppid()}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def check_mount_visible(store_root: str) -> None:
    """Called for a rootless create that would mount the image in the store's namespace."""
    what = (f"the image is mounted inside the namespace of the rootless store {store_root}, "
            "which processes outside it (runc) cannot see")
    if _parent_name() in GARDEN_PROCESSES:
        raise UsageError(f"{what}: {FIX}")
    if not sys.stdout.isatty():
        log.warn("create.mount-hidden", store=store_root,
                 text=f"{what}; only `rootless-groot enter`/`run` see it. For Garden or any other runtime, {FIX}")
