"""From an image to a running container: an OCI runtime bundle, and runc (or crun) to run it.

What works rootless (found by trying on kernel 6.18 with runc 1.1.5; the integration tests
exercise each point):

* The runtime runs as uid 0 inside the store's user namespace (the namespace the overlay
  is mounted in), started by this process after it joined that namespace.
* The container gets **no nested user namespace** (no ``user`` entry in
  ``linux.namespaces``, no uid/gid mappings): a nested map that includes the parent's uid 0
  (the store owner) is refused with EPERM, and runc then dies looking for a mapping tool.
  Without one the container shares the store's mapping: ids in the container are the ids in
  the rootfs.
* New pid, ipc, uts and mount namespaces (owned by the store's user namespace, so
  allowed); no network namespace: the container uses **the host's network**, as
  ``--network host`` does with docker and podman; /etc/resolv.conf and /etc/hosts are bound
  read-only from the host so names resolve as on the host. No cgroup namespace and no
  ``linux.resources``: runc's cgroup manager detects the user namespace and goes on without.
* Mounts as ``runc spec --rootless`` has them (proc, a tmpfs /dev, devpts, shm, mqueue, /sys
  bound read-only), Docker's default capability set, ``noNewPrivileges``.
* ``runc --root STATE``: the default state root is not writable by the store owner.
"""
from __future__ import annotations

import os

from .errors import GrootError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Sequence

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]
HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")
NETWORK_HELP = "the container shares the host's network (like --network host)"


def make_config(rootfs: str, args: Sequence[str], *, env: Sequence[str] | None = None, cwd: str = "/",
                uid: int = 0, gid: int = 0, additional_gids: Sequence[int] = (), hostname: str = "rootless-groot",
                caps: Sequence[str] | None = None, netns: bool = False, readonly: bool = False,
                terminal: bool = False, host_files: Sequence[str] = ()) -> dict:
    """An OCI runtime config for a runtime running as root in the store's user namespace
    (see the module docstring for each deviation from ``runc spec --rootless``).

    ``host_files``: host files (resolv.conf, hosts) bound read-only at the same place."""
    caps = list(DOCKER_DEFAULT_CAPS if caps is None else caps)
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    if netns:
        namespaces.append({"type": "network"})
    user: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional_gids:
        user["additionalGids"] = list(additional_gids)
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "none", "source": "/sys",
         "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]},
    ]
    # A bind mount in a user namespace keeps the flags of its source locked: asking for all
    # of nosuid/nodev/noexec as well never tries to clear one.
    mounts += [{"destination": path, "type": "none", "source": path,
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]} for path in host_files]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": terminal,
            "user": user,
            "args": list(args),
            "env": list([f"PATH={DEFAULT_PATH}"] if env is None else env),
            "cwd": cwd,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


# ---- the process, from the image config and the flags -----------------------------------------

def resolve_in_root(root: str, path: str, hops: int = 40) -> str | None:
    """``path`` inside ``root`` with symlinks followed as the container would see them
    (absolute targets start again at ``root``); None if it does not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here):
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(here):
            return None
        done.append(part)
    return os.path.join(root, *done)


def _env_value(env: Sequence[str], key: str) -> str | None:
    for item in env:
        name, eq, value = item.partition("=")
        if eq and name == key:
            return value
    return None


def find_executable(root: str, name: str, env: Sequence[str], cwd: str = "/") -> bool:
    """Whether the container could exec ``name`` (a path, or looked up in its PATH)."""
    if "/" in name:
        candidates = [name if name.startswith("/") else os.path.join(cwd, name)]
    else:
        path = _env_value(env, "PATH")
        candidates = [os.path.join(d or "/", name) for d in (DEFAULT_PATH if path is None else path).split(":")]
    for candidate in candidates:
        real = resolve_in_root(root, candidate)
        if real and os.path.isfile(real) and os.stat(real).st_mode & 0o111:
            return True
    return False


def _lookup(root: str, table: str, name: str, field: int) -> tuple[str, ...] | None:
    """The line of ``/etc/passwd`` or ``/etc/group`` (inside the rootfs) whose ``field`` is ``name``."""
    real = resolve_in_root(root, f"/etc/{table}")
    if not real:
        return None
    try:
        with open(real, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(":")
                if len(parts) >= 4 and parts[field] == name:
                    return tuple(parts)
    except OSError:
        return None
    return None


def resolve_user(root: str, spec: str) -> tuple[int, int, list[int]]:
    """The image config's ``User`` (``user[:group]``, names or numbers) as (uid, gid, more gids)."""
    if not spec:
        return 0, 0, []
    user, _, group = spec.partition(":")
    if user.isdigit():
        uid = int(user)
        entry = _lookup(root, "passwd", user, 2)
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
        name = entry[0] if entry else None
    else:
        entry = _lookup(root, "passwd", user, 0)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise GrootError(f"user `{user}` of the image is not in its /etc/passwd")
        uid, gid, name = int(entry[2]), int(entry[3]), user
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = _lookup(root, "group", group, 0)
            if g is None or not g[2].isdigit():
                raise GrootError(f"group `{group}` of the image is not in its /etc/group")
            gid = int(g[2])
    extra: list[int] = []
    if name and not group:
        real = resolve_in_root(root, "/etc/group")
        try:
            with open(real or "/nonexistent", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.rstrip("\n").split(":")
                    if len(parts) >= 4 and name in parts[3].split(",") and parts[2].isdigit():
                        if int(parts[2]) != gid:
                            extra.append(int(parts[2]))
        except OSError:
            pass
    return uid, gid, extra


def process_spec(root: str, image_config: dict | None, image_env: Sequence[str], cmd: Sequence[str],
                 env_flags: Sequence[str] = (), workdir: str | None = None, terminal: bool = False,
                 host_env: dict[str, str] | None = None) -> dict[str, Any]:
    """args, env, cwd and user for the container, as docker derives them: Entrypoint + (the
    given command, else Cmd); the image's Env, then ``--env K=V`` (``--env K``: the host's K)."""
    config = image_config or {}
    entrypoint = list(config.get("Entrypoint") or [])
    args = entrypoint + list(cmd or config.get("Cmd") or [])
    if not args:
        args = ["/bin/sh"]  # a rootfs tarball has no config; docker would refuse, a shell is friendlier
    env = list(image_env)
    if _env_value(env, "PATH") is None:
        env.insert(0, f"PATH={DEFAULT_PATH}")
    if terminal and _env_value(env, "TERM") is None:
        env.append("TERM=" + ((host_env or {}).get("TERM") or "xterm"))
    for item in env_flags:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --env `{item}`: expected KEY=VALUE or KEY")
        if not eq:
            if host_env is None or key not in host_env:
                continue
            value = host_env[key]
        env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
    cwd = workdir or config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise UsageError(f"working directory `{cwd}` must be absolute")
    uid, gid, extra = resolve_user(root, config.get("User") or "")
    return {"args": args, "env": env, "cwd": cwd, "uid": uid, "gid": gid, "additional_gids": extra}


def bundle_config(rootfs: str, process: dict[str, Any], *, terminal: bool = False, hostname: str = "rootless-groot") -> dict:
    return make_config(rootfs, process["args"], env=process["env"], cwd=process["cwd"], uid=process["uid"],
                       gid=process["gid"], additional_gids=process["additional_gids"], terminal=terminal,
                       hostname=hostname, host_files=[p for p in HOST_FILES if os.path.exists(p)])


def write_bundle(directory: str, config: dict) -> str:
    """``DIR/config.json`` (the root is the image's rootfs, by absolute path: no copy)."""
    import json

    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.rename(tmp, path)
    return path


# ---- running ------------------------------------------------------------------------------------

def find_runtime(explicit: str | None = None) -> str:
    """``--runtime``, else runc, else crun (PATH, then the sbin directories)."""
    import shutil

    names = [explicit] if explicit else ["runc", "crun"]
    search = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    for name in names:
        found = shutil.which(name, path=search) if name else None
        if found:
            return found
    if explicit:
        raise UsageError(f"container runtime `{explicit}` not found")
    raise GrootError("no container runtime found: install runc (Debian/Ubuntu: apt install runc) or crun")


def container_name(text: str) -> str:
    """A runc-safe container id (letters, digits, ``_+-.``) derived from ``text``."""
    safe = "".join(c if c.isalnum() or c in "_+-." else "-" for c in text)[:48].strip("-.") or "ctr"
    return f"{safe}-{os.urandom(3).hex()}"


def _from_terminal() -> bool:
    """Whether a SIGINT/SIGQUIT we got was most likely typed at our terminal, in which case
    the runtime (same foreground process group) got it as well and passes it on itself."""
    for fd in (0, 1, 2):
        try:
            if os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


def run_runtime(runtime: str, bundle: str, state: str, cid: str) -> int:
    """``runtime run`` in the foreground with our stdio; signals sent to us are passed on;
    the container's exit status is returned (128+N when it was killed by signal N)."""
    import signal
    import subprocess

    proc = subprocess.Popen([runtime, "--root", state, "run", "--bundle", bundle, cid])

    def forward(signum: int, frame: object) -> None:
        if signum in (signal.SIGINT, signal.SIGQUIT) and _from_terminal():
            return
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        subprocess.run([runtime, "--root", state, "delete", "--force", cid], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return 128 - code if code < 0 else code
