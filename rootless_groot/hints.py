"""Messages that say what went wrong and what to do: a bad ``--store``, an image reference that
looks like something else, a machine where user namespaces cannot be created.

Only failure paths import this module.
"""
from __future__ import annotations

import errno as errno_mod
import os


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def store_problem(root: str) -> str | None:
    """Why ``root`` cannot be (or hold) a store of ours, or None if nothing is visibly wrong."""
    from .config import default_store

    other = f"choose a directory you own with --store (the default is {default_store()})"
    path = root
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    if not os.path.isdir(path):
        if path == root:
            return f"--store {root} is a file, not a directory: {other}"
        return f"--store {root} cannot be created: {path} is a file, not a directory"
    st = os.stat(path)
    if path == root:
        if os.geteuid() != 0 and st.st_uid != os.geteuid():
            return (f"--store {root} belongs to {_owner(st.st_uid)}, not to you: {other}, "
                    f"or have its owner run `chown {os.getuid()}:{os.getgid()} {root}`")
        if not os.access(root, os.W_OK | os.X_OK):
            return f"--store {root} is not writable by you: {other}"
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        return f"--store {root} cannot be created: {path} belongs to {_owner(st.st_uid)} and is not writable by you: {other}"
    return None


def tarball_hint(given: str | None, path: str) -> str:
    """A hint after `image ... not found` / `not a tarball` for a reference without a scheme."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "oci-layout")) or os.path.exists(os.path.join(path, "index.json")):
            return f": it is an OCI image layout, use oci://{path}"
        return ""
    if given and not given.startswith(("/", ".", "~")) and not os.path.lexists(path):
        from .errors import UsageError
        from .refs import parse_docker

        try:
            parse_docker(given)
        except UsageError:
            return ""
        first = given.split("/")[0]
        host_like = "/" in given and ("." in first or ":" in first or first == "localhost")
        return f"; for a registry image, use docker://{'' if host_like else '/'}{given}"
    return ""


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _in_nested_userns(proc: str) -> bool:
    uid_map = _read(f"{proc}/self/uid_map")
    return uid_map is not None and uid_map.split() != ["0", "0", "4294967295"]


def userns_problem(err: int, proc: str = "/proc") -> str:
    """Why creating (or using) a user namespace failed with ``err``, and what an admin can do."""
    limit = _read(f"{proc}/sys/user/max_user_namespaces")
    apparmor = _read(f"{proc}/sys/kernel/apparmor_restrict_unprivileged_userns")
    debian_knob = _read(f"{proc}/sys/kernel/unprivileged_userns_clone")
    seccomp = None
    for line in (_read(f"{proc}/self/status") or "").splitlines():
        if line.startswith("Seccomp:"):
            seccomp = line.split()[1]
    base = f"cannot create a user namespace ({os.strerror(err)}): "
    if limit == "0":
        return base + ("user namespaces are disabled by the sysctl user.max_user_namespaces=0; an admin can "
                       "enable them: `sysctl -w user.max_user_namespaces=28633` (and a file in /etc/sysctl.d/ "
                       "to keep it)")
    if err == errno_mod.ENOSPC:
        if _in_nested_userns(proc):
            return base + ("this runs inside a sandbox or container that allows no further user namespaces "
                           "(like `bwrap --disable-userns`): run rootless-groot outside it, or start the sandbox "
                           "so that it allows nested user namespaces")
        return base + (f"the limit user.max_user_namespaces={limit} is reached; an admin can raise it "
                       "(`sysctl -w user.max_user_namespaces=...`)")
    if apparmor == "1":
        return base + apparmor_advice()
    if debian_knob == "0":
        return base + ("unprivileged user namespaces are disabled by the sysctl kernel.unprivileged_userns_clone=0; "
                       "an admin can enable them: `sysctl -w kernel.unprivileged_userns_clone=1`")
    if seccomp == "2":
        return base + ("a seccomp filter (a container's seccomp profile) forbids it: run rootless-groot on the "
                       "host, or start its container with a profile that allows user namespaces (docker and "
                       "podman: --security-opt seccomp=unconfined, or a profile allowing unshare/clone with "
                       "CLONE_NEWUSER)")
    if _in_nested_userns(proc):
        return base + "this runs inside a container or sandbox that does not allow nested user namespaces"
    return base + "check that the kernel allows unprivileged user namespaces"


def apparmor_advice() -> str:
    return ("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, "
            "Ubuntu's default); an admin can install rootless-groot's AppArmor profile (`sudo make install-apparmor` "
            "in the source tree, see the README) or set that sysctl to 0")


def apparmor_blocks_us(proc: str = "/proc") -> bool:
    """Ubuntu 24.04's restriction applies to unconfined processes: their user namespaces get no
    capabilities (mounts and chowns fail later, obscurely). A profile with ``userns,`` lifts it."""
    if _read(f"{proc}/sys/kernel/apparmor_restrict_unprivileged_userns") != "1":
        return False
    label = _read(f"{proc}/self/attr/apparmor/current") or _read(f"{proc}/self/attr/current") or ""
    return label == "unconfined"
