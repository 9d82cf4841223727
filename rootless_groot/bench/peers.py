"""The peers, run rootless in private state dirs: podman, skopeo + umoci, and the floors.

Every podman call gets its own ``--root``/``--runroot`` and XDG dirs (so nothing of the
user's own podman state is read or touched), ``--storage-driver overlay`` (native rootless
overlay on this kernel), ``--cgroup-manager=cgroupfs --events-backend=file`` (no systemd
session for the user). ``Podman.reset()`` runs ``podman system reset`` on that state and kills
the pause process it left.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .util import StepFailed, base_env, rm_tree, run, timed

CHUNK = 1 << 20


def missing_tools(*names: str) -> list[str]:
    return [n for n in names if not shutil.which(n, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")]


class Podman:
    def __init__(self, state: Path, home: Path):
        self.state = state  # the image store (same filesystem as rootless-groot's)
        self.home = home
        # podman wants a runroot path under 50 characters (and a tmpfs-like XDG_RUNTIME_DIR)
        self.short = Path(tempfile.mkdtemp(prefix="rgb-pm-", dir="/tmp"))

    @property
    def env(self) -> dict[str, str]:
        run_dir = self.short / "xdg-run"
        return base_env(self.home, XDG_RUNTIME_DIR=run_dir, XDG_CONFIG_HOME=self.state / "xdg-config",
                        XDG_DATA_HOME=self.state / "xdg-data", XDG_CACHE_HOME=self.state / "xdg-cache")

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.state / "root"), "--runroot", str(self.short / "runroot"),
                "--tmpdir", str(self.state / "tmp"), "--storage-driver", "overlay",
                "--cgroup-manager=cgroupfs", "--events-backend=file", *args]

    def prepare(self) -> "Podman":
        for d in ("xdg-config", "xdg-data", "xdg-cache", "tmp"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        (self.short / "xdg-run").mkdir(mode=0o700, exist_ok=True)
        return self

    def run(self, *args: str, timeout=600, check=True):
        return run(self.argv(*args), env=self.env, timeout=timeout, check=check)

    def time(self, *args: str, timeout=600) -> float:
        return timed(self.argv(*args), env=self.env, timeout=timeout)

    def pull(self, ref: str) -> float:
        return self.time("pull", "--quiet", "--tls-verify=false", ref)

    def _pause_pids(self) -> set[int]:
        pids = set()
        for top in (self.state, self.short):
            for p in top.glob("**/pause.pid"):
                try:
                    pids.add(int(p.read_text().split()[0]))
                except (OSError, ValueError, IndexError):
                    pass
        return pids

    def reset(self) -> None:
        """``podman system reset`` on the private state, then SIGKILL its pause process (it
        ignores SIGTERM; its pid file is in --tmpdir, which the reset removes: read it before
        and after) and remove what is left (the reset removed the subordinate-owned layers)."""
        pids = self._pause_pids()
        if self.state.exists():
            self.run("system", "reset", "--force", timeout=120, check=False)
        pids |= self._pause_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        rm_tree(self.state)
        rm_tree(self.short)


def podman_check(work: Path, home: Path) -> str | None:
    """None if rootless podman runs here, else why not."""
    if missing_tools("podman"):
        return "podman not installed (INSTALL_BENCH_DEPS=1 bash scripts/install-deps.sh)"
    pm = Podman(work / "podman-check", home).prepare()
    try:
        pm.run("info", timeout=60)
        return None
    except StepFailed as e:
        return str(e)
    finally:
        pm.reset()


def skopeo_umoci(ref: str, work: Path, env: dict) -> float:
    """``skopeo copy docker://REF oci:DIR`` + ``umoci unpack --rootless``: wall time of both."""
    layout, bundle = work / "layout", work / "bundle"
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = timed(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                   f"docker://{ref}", f"oci:{layout}:latest"], env=env, timeout=900)
        t += timed(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   env=env, timeout=900)
        return t
    finally:
        rm_tree(work)


# --------------------------------------------------------------------------- floors

def inflate_only(blobs: list[Path], impl: str) -> float:
    """Decompress every blob to nowhere, serially, in this process (page-cached input)."""
    import time

    if impl == "isal":
        from isal import isal_zlib as z  # type: ignore
    else:
        z = zlib
    t = time.perf_counter()
    for b in blobs:
        d = z.decompressobj(31)
        with open(b, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                d.decompress(chunk)
        d.flush()
    return time.perf_counter() - t


def isal_available() -> bool:
    try:
        import isal  # noqa: F401
        return True
    except ImportError:
        return False


def tar_extract_parallel(blobs: list[Path], dest: Path, env: dict, impl: str) -> float:
    """Inflate + write: each layer into its own dir, all layers at once (like an unpacker that
    unpacks layers in parallel). ``gzip``: ``tar -xzf``; ``isal``: ``python -m isal.igzip -dc | tar -x``."""
    import time

    dirs = []
    for i, _ in enumerate(blobs):
        d = dest / f"l{i}"
        d.mkdir(parents=True)
        dirs.append(d)

    def one(i: int) -> None:
        b, d = blobs[i], dirs[i]
        if impl == "gzip":
            argv = ["tar", "--no-same-owner", "-xzf", str(b), "-C", str(d)]
        else:
            argv = ["/bin/sh", "-c", f'"{sys.executable}" -m isal.igzip -dc "{b}" | tar --no-same-owner -xf - -C "{d}"']
        run(argv, env=env, timeout=900)

    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=min(len(blobs), os.cpu_count() or 2)) as ex:
            list(ex.map(one, range(len(blobs))))
        return time.perf_counter() - t
    finally:
        rm_tree(dest)
