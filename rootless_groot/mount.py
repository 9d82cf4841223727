"""Overlay mounts: the new mount API (any number of layers) with a classic mount(2) fallback."""
from __future__ import annotations

import errno
import os

from . import log
from .errors import GrootError

# syscalls (ctypes) is imported by the functions that mount: overlay_options is on the warm
# path of every create --without-mount, and ctypes costs ~2 ms to import.

PAGE_LIMIT = 4000  # the kernel copies at most one page of classic mount options


def overlay_options(lowerdirs: list[str], upper: str, work: str, userxattr: bool) -> str:
    """The classic option string (lowerdirs top first), as Garden's runtime expects it."""
    opts = f"lowerdir={':'.join(lowerdirs)},upperdir={upper},workdir={work}"
    return opts + ",userxattr" if userxattr else opts


def mount_overlay(
    lowerdirs: list[str], upper: str, work: str, target: str, *, userxattr: bool, short_lowerdirs: tuple[str, list[str]]
) -> None:
    """Mount an overlay at ``target``; ``lowerdirs`` are absolute, top first.

    First the new mount API (``lowerdir+`` once per layer, kernel 6.8+: no option-length limit).
    On older kernels, ``mount(2)`` with ``short_lowerdirs`` = (directory to chdir into, names
    relative to it), which keeps 128+ layers under the one-page option limit.
    """
    try:
        _mount_new_api(lowerdirs, upper, work, target, userxattr)
        return
    except OSError as e:
        # Kernels before 6.8 parse "lowerdir+" as an unknown option and fail only at
        # FSCONFIG_CMD_CREATE, with the same EINVAL a bad layer gives: so any failure here
        # is retried the classic way, whose error (if any) is the one reported.
        new_api_error = e
        log.debug("mount.new-api-failed", error=str(e))
    base, names = short_lowerdirs
    data = overlay_options(names, upper, work, userxattr)
    if len(data) > PAGE_LIMIT:
        raise GrootError(f"mounting overlay at {target}: {new_api_error.strerror} "
                         f"({len(names)} layers are too many for this kernel's classic mount options)")
    from . import syscalls

    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir(base)
        syscalls.mount("overlay", target, "overlay", 0, data)
    except OSError as e:
        raise GrootError(f"mounting overlay at {target}: {e.strerror}") from None
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _mount_new_api(lowerdirs: list[str], upper: str, work: str, target: str, userxattr: bool) -> None:
    from . import syscalls

    fs_fd = syscalls.fsopen("overlay")
    try:
        for lower in lowerdirs:
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "lowerdir+", lower)
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "upperdir", upper)
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_STRING, "workdir", work)
        if userxattr:
            syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_SET_FLAG, "userxattr")
        syscalls.fsconfig(fs_fd, syscalls.FSCONFIG_CMD_CREATE)
        mnt_fd = syscalls.fsmount(fs_fd)
        try:
            syscalls.move_mount_fd(mnt_fd, target)
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def is_mountpoint(path: str) -> bool:
    """True if something is mounted at ``path`` (device differs from its parent's)."""
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except FileNotFoundError:
        return False


def unmount(target: str) -> None:
    """Unmount ``target``; lazily if a process still uses it; nothing if it is not mounted."""
    from . import syscalls

    try:
        syscalls.umount2(target, 0)
    except OSError as e:
        if e.errno == errno.EINVAL or e.errno == errno.ENOENT:
            return
        if e.errno == errno.EBUSY:
            syscalls.umount2(target, syscalls.MNT_DETACH)
            return
        raise GrootError(f"unmounting {target}: {e.strerror}") from None
