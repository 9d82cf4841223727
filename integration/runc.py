"""Run containers with rootless runc from root filesystems rootless-groot made.

What works on this machine (kernel 6.18, Debian's runc 1.1.5), found by trying:

* runc runs as **uid 0 inside the store's user namespace** (the store owner's uid
  mapped to 0, its subordinate range to 1..N, written by newuidmap/newgidmap), in
  the same mount namespace that holds the overlay mounts. It is started there by
  whatever "runner" joins that namespace: ``rootless-groot --store S enter -- CMD``,
  or, in these tests, :class:`UsernsKeeper` (a stand-in keeper + ``nsenter -U -m``).

* The container must **not** get a nested user namespace: no ``"user"`` entry in
  ``linux.namespaces`` and no ``uidMappings``/``gidMappings``. A nested mapping that
  includes the parent namespace's uid 0 (which is the store owner on the host) is
  refused by this kernel with EPERM (writing ``0 0 N`` to the child's uid_map fails
  even with full caps in the parent; ``0 1 N`` works), and runc then looks for a
  mapping tool and dies with ``nsexec-0: mapping tool not present``. Without a new
  user namespace the container simply shares the store namespace's mapping, so the
  ids seen inside the container are exactly the ids in the rootfs (uid 33 -> 33).

* Namespaces created: pid, ipc, uts, mount (all owned by the store's user
  namespace, so allowed). No network namespace by default (the container shares the
  host network; pass ``netns=True`` for a private loopback-only one: tested). No
  cgroup namespace. The spec's ``/sys/fs/cgroup`` mount is dropped as unneeded (it
  does work here too: this host has cgroup v1 hierarchies and runc mounts them ro).
  crun fails on this machine's cgroup setup; runc does not: its cgroup manager
  auto-detects rootless mode inside a user namespace and ignores cgroup errors, so
  no ``--rootless`` or ``--systemd-cgroup`` flag is needed; there is no
  ``linux.resources``.

* Mounts kept from ``runc spec --rootless``: /proc (proc), /dev (tmpfs), /dev/pts
  (devpts newinstance), /dev/shm (tmpfs), /dev/mqueue (mqueue), /sys (rbind of the
  host's /sys, ro). ``process.terminal=false`` so stdout/stderr are inherited and
  can be captured. ``root.readonly=false`` (writes go to the overlay upperdir).

* runc flags: ``runc --root <state dir the user owns> run --bundle <dir> <unique id>``.
  The default state root (/run/runc, or $XDG_RUNTIME_DIR/runc) is not writable by
  the store owner, so ``--root`` is required. ``runc run`` returns the container's
  exit status and removes the container; we still run ``runc delete -f`` after.

* Capabilities: the spec's rootless set (AUDIT_WRITE, KILL, NET_BIND_SERVICE) is too
  small for tests that chown or write files of other owners; by default we grant
  Docker's default set, which runc can give since it holds all capabilities in the
  store's user namespace. ``noNewPrivileges`` stays on.

Two ways to get the rootfs:

(a) mounted by rootless-groot in the store namespace (the normal ``create``):
    ``run_container(root_path, args, runner=...)``.
(b) ``create --without-mount``: the consumer gets
    ``{"destination":"/","type":"overlay","source":"overlay","options":["lowerdir=..,upperdir=..,workdir=..(,userxattr)"]}``
    and mounts it itself, in the same kind of namespace, before running runc:
    ``run_container_from_mount(mount, args, runner=..., workdir=...)`` mounts it at
    ``<bundle>/rootfs`` (``mount -t overlay overlay -o OPTIONS``), runs runc, unmounts,
    all in one runner call (so it also works with a one-shot runner).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Sequence

from rootless_groot import runtime

RUNC = shutil.which("runc", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin") or "/usr/sbin/runc"

Runner = Callable[[list], subprocess.CompletedProcess]


def make_config(rootfs: str, args: Sequence[str], *, hostname: str = "rg-test", **kw) -> dict:
    """An OCI runtime config for runc running as root inside the store's user namespace: the
    package's own (``rootless_groot.runtime.make_config``, used by ``run`` and ``bundle``)."""
    return runtime.make_config(rootfs, args, hostname=hostname, **kw)


def _default_workdir() -> str:
    base = os.environ.get("RG_TEST_ROOT", "/var/tmp/rootless-groot-test")
    try:
        os.makedirs(base, exist_ok=True)
    except PermissionError:
        base = tempfile.gettempdir()
    return base


def _make_bundle(workdir: str | None, owner: tuple[int, int] | None, config: dict | None,
                 container_id: str) -> Path:
    bundle = Path(tempfile.mkdtemp(prefix=f"bundle-{container_id}-", dir=workdir or _default_workdir()))
    if owner is not None and os.geteuid() == 0:
        os.chown(bundle, *owner)
    else:
        # whoever runs runc (the runner's user) must create the state dir in here
        os.chmod(bundle, 0o777)
    if config is not None:
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        os.chmod(bundle / "config.json", 0o644)
    return bundle


def _runc_script(bundle: Path, container_id: str, pre: str = "", post: str = "",
                 runc: str = RUNC) -> str:
    state = shlex.quote(str(bundle / "state"))
    b = shlex.quote(str(bundle))
    cid = shlex.quote(container_id)
    return (f"{pre}"
            f"{shlex.quote(runc)} --root {state} run --bundle {b} {cid}; rc=$?; "
            f"{shlex.quote(runc)} --root {state} delete -f {cid} >/dev/null 2>&1; "
            f"{post}exit $rc")


def run_container(rootfs: str, args: Sequence[str], *, runner: Runner,
                  workdir: str | None = None, owner: tuple[int, int] | None = None,
                  keep_bundle: bool = False, **config_kw) -> subprocess.CompletedProcess:
    """Run ``args`` in a container whose root is the already-mounted ``rootfs``.

    ``runner(cmd: list[str]) -> CompletedProcess`` executes a command as uid 0 in the
    namespace that holds the mount, e.g.
    ``lambda cmd: cli("--store", S, "enter", "--", *cmd, check=False)``.
    It must not raise on a non-zero exit (the container's exit status is returned).
    ``workdir``: where the bundle dir goes (must be traversable by the runner's user);
    ``owner``: (uid, gid) to chown the bundle to when we are root (else it is 0777).
    ``config_kw`` goes to :func:`make_config` (env, cwd, uid, gid, caps, netns, ...).
    The returned CompletedProcess carries the container's stdout/stderr (runc's own
    errors land in stderr too) and exit code.
    """
    cid = "rg-" + uuid.uuid4().hex[:12]
    bundle = _make_bundle(workdir, owner, make_config(rootfs, args, **config_kw), cid)
    try:
        return runner(["/bin/sh", "-c", _runc_script(bundle, cid)])
    finally:
        if not keep_bundle:
            shutil.rmtree(bundle, ignore_errors=True)


def mount_options(mount: dict) -> str:
    """The ``-o`` string for a ``--without-mount`` mount entry."""
    opts = mount.get("options") or []
    return ",".join(opts)


def run_container_from_mount(mount: dict, args: Sequence[str], *, runner: Runner,
                             workdir: str | None = None, owner: tuple[int, int] | None = None,
                             keep_bundle: bool = False, **config_kw) -> subprocess.CompletedProcess:
    """``--without-mount`` mode: mount the returned overlay spec at ``<bundle>/rootfs``
    inside the runner's namespace, run the container there, unmount. One runner call.

    ``mount`` is the ``{"destination":"/","type":"overlay","source":"overlay","options":[...]}``
    entry from ``create``'s JSON."""
    assert mount.get("destination") == "/", mount
    cid = "rg-" + uuid.uuid4().hex[:12]
    bundle = _make_bundle(workdir, owner, None, cid)
    mnt = bundle / "rootfs"
    (bundle / "config.json").write_text(json.dumps(make_config(str(mnt), args, **config_kw), indent=1))
    os.chmod(bundle / "config.json", 0o644)
    m = shlex.quote(str(mnt))
    pre = (f"mkdir -p {m} && mount -t {shlex.quote(mount.get('type', 'overlay'))} "
           f"{shlex.quote(mount.get('source', 'overlay'))} -o {shlex.quote(mount_options(mount))} {m} "
           f"|| exit 125; ")
    post = f"umount {m} || umount -l {m}; "
    try:
        return runner(["/bin/sh", "-c", _runc_script(bundle, cid, pre, post)])
    finally:
        if not keep_bundle:
            shutil.rmtree(bundle, ignore_errors=True)


# --------------------------------------------------------------------------- a stand-in keeper

_KEEPER_CODE = r"""
import ctypes, os, subprocess, sys
uid, gid = os.getuid(), os.getgid()
uidmap = sys.argv[1].split(",")  # "0:UID:1,1:100000:65536" (ns:host:count)
gidmap = sys.argv[2].split(",")
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe(); r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w); os.close(r2)
    if libc.unshare(0x10000000 | 0x00020000) != 0:   # CLONE_NEWUSER | CLONE_NEWNS
        os.write(w2, b"E%d" % ctypes.get_errno()); os._exit(1)
    os.write(w2, b"U"); os.close(w2)
    if os.read(r, 1) != b"G":
        os._exit(1)
    os.setresgid(0, 0, 0); os.setresuid(0, 0, 0)
    # keep mounts private to this namespace
    libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None)   # MS_REC | MS_PRIVATE
    # hold the namespace until stdin closes (the test process went away) or SIGTERM
    while os.read(0, 4096):
        pass
    os._exit(0)
os.close(r); os.close(w2)
st = os.read(r2, 16)
if st != b"U":
    sys.stderr.write("unshare failed: %r\n" % st); sys.exit(1)
try:
    for tool, m in (("newuidmap", uidmap), ("newgidmap", gidmap)):
        subprocess.run([tool, str(pid)] + [x for e in m for x in e.split(":")], check=True)
except Exception as e:
    os.kill(pid, 9); sys.stderr.write("mapping failed: %s\n" % e); sys.exit(1)
os.write(w, b"G"); os.close(w)
sys.stdout.write("READY %d\n" % pid); sys.stdout.flush()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


class UsernsKeeper:
    """A stand-in for rootless-groot's store keeper: one process holding a user+mount
    namespace where the user's uid is 0 and its subordinate ids are 1..N, and
    :meth:`run` to execute commands in it as uid 0 (``nsenter -U -m``).

    ``user_prefix``: argv prefix that drops to the test user (e.g. ``setpriv --reuid=..``),
    empty when we already are that user. The keeper exits when :meth:`stop` is called
    or when this process dies (it holds the read end of a pipe we own).
    """

    def __init__(self, user_prefix: Sequence[str], uid: int, gid: int,
                 subuid: tuple[int, int] | None, subgid: tuple[int, int] | None,
                 python: str = "/usr/bin/python3", env: dict | None = None):
        self.user_prefix = list(user_prefix)
        umap = [f"0:{uid}:1"] + ([f"1:{subuid[0]}:{subuid[1]}"] if subuid else [])
        gmap = [f"0:{gid}:1"] + ([f"1:{subgid[0]}:{subgid[1]}"] if subgid else [])
        self.env = env
        self.proc = subprocess.Popen(
            [*self.user_prefix, python, "-c", _KEEPER_CODE, ",".join(umap), ",".join(gmap)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, cwd="/", env=env)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"userns keeper failed to start: {line!r} {err}")
        self.pid = int(line.split()[1])

    def command(self, cmd: Sequence[str]) -> list[str]:
        return [*self.user_prefix, "nsenter", "-t", str(self.pid), "-U", "-m", "--", *cmd]

    def run(self, cmd: Sequence[str], *, check: bool = False, timeout: float = 120,
            input: bytes | str | None = None, cwd: str = "/") -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        r = subprocess.run(self.command(cmd), capture_output=True, text=text, input=input,
                           timeout=timeout, cwd=cwd, env=self.env)
        if check and r.returncode != 0:
            raise RuntimeError(f"{cmd!r} in keeper namespace failed with {r.returncode}:\n"
                               f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def stop(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                p.stdin.close()
                p.wait(timeout=5)
            except Exception:
                pass
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
        for s in (p.stdout, p.stderr):
            if s:
                s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
