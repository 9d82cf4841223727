"""GrootFS (the Go original) as a peer, when a build of it is on this machine.

Nothing here builds or fetches GrootFS: the bench uses the binary at ``--grootfs`` /
``$RG_BENCH_GROOTFS`` (default ``/var/tmp/peers/grootfs/grootfs``) and the setuid ``tardis``
next to it, and says so and skips this peer when they are absent.

Both tools run rootless, on one loop-mounted XFS file (GrootFS wants XFS; this kernel has no
XFS quota, so GrootFS skips its project-quota check), on the same image from the same
registry. GrootFS's rootless stores must be made by root (``init-store`` with the user's
mappings), so the root phase makes the filesystem and one store per GrootFS cold create
before dropping to the user, and removes it all afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .util import log, run

DEFAULT_BIN = "/var/tmp/peers/grootfs/grootfs"
SETUP_FILE = "grootfs.json"
XFS_SIZE = 16 << 30  # sparse


def locate(path: str | None) -> tuple[str | None, str | None, str | None]:
    """(grootfs, tardis, None) if both are usable, else (None, None, why not)."""
    binary = path or os.environ.get("RG_BENCH_GROOTFS") or DEFAULT_BIN
    tardis = os.path.join(os.path.dirname(binary), "tardis")
    if not os.access(binary, os.X_OK):
        return None, None, f"no GrootFS binary at {binary} (--grootfs PATH or RG_BENCH_GROOTFS; never built here)"
    st = os.stat(tardis) if os.path.exists(tardis) else None
    if st is None or st.st_uid != 0 or not st.st_mode & 0o4000:
        return None, None, f"{tardis} missing or not setuid root (GrootFS's rootless stats need it)"
    return binary, tardis, None


def _subids(path: str, user: str) -> tuple[int, int] | None:
    try:
        for line in open(path):
            name, start, count = (line.strip().split(":") + ["", "", ""])[:3]
            if name == user and start.isdigit() and count.isdigit():
                return int(start), int(count)
    except OSError:
        pass
    return None


def root_setup(work: Path, user, binary: str | None, stores: dict[str, int]) -> None:
    """As root: the XFS file, its mount, and GrootFS stores initialised for ``user``.

    ``stores``: name prefix -> how many. Writes ``work/grootfs.json`` for the user phase:
    the paths, or why GrootFS is skipped.
    """
    setup: dict = {}
    grootfs, tardis, why = locate(binary)
    subuid, subgid = _subids("/etc/subuid", user.pw_name), _subids("/etc/subgid", user.pw_name)
    if why is None and (subuid is None or subgid is None):
        why = f"no /etc/subuid and /etc/subgid ranges for {user.pw_name}"
    if why is None:
        try:
            setup = _make_fs(work, user, grootfs, tardis, subuid, subgid, stores)
        except Exception as e:  # noqa: BLE001 - reported in the table
            why = f"setting up XFS and GrootFS stores failed: {e}"[:300]
            root_teardown(work)
    if why:
        log(f"GrootFS peer skipped: {why}")
        setup = {"missing": why}
    (work / SETUP_FILE).write_text(json.dumps(setup))


def _make_fs(work: Path, user, grootfs: str, tardis: str, subuid, subgid, stores: dict[str, int]) -> dict:
    image, mnt = work / "xfs.img", work / "xfs"
    with open(image, "wb") as f:
        f.truncate(XFS_SIZE)
    run(["mkfs.xfs", "-q", "-f", str(image)], timeout=120)
    mnt.mkdir()
    run(["mount", "-o", "loop", str(image), str(mnt)], timeout=60)
    os.chmod(mnt, 0o755)
    rg = mnt / "rg"  # rootless-groot's stores and the floors' output
    rg.mkdir()
    os.chown(rg, user.pw_uid, user.pw_gid)
    maps = ["--uid-mapping", f"0:{user.pw_uid}:1", "--uid-mapping", f"1:{subuid[0]}:{subuid[1]}",
            "--gid-mapping", f"0:{user.pw_gid}:1", "--gid-mapping", f"1:{subgid[0]}:{subgid[1]}"]
    made: dict[str, list[str]] = {}
    for prefix, count in stores.items():
        for i in range(count):
            store = mnt / f"grootfs-{prefix}-{i}"
            run([grootfs, "--store", str(store), "init-store", *maps], timeout=120)
            made.setdefault(prefix, []).append(str(store))
    version = subprocess.run([grootfs, "--version"], capture_output=True, text=True).stdout.strip()
    return {"bin": grootfs, "tardis": tardis, "mount": str(mnt), "rg": str(rg), "stores": made,
            "version": version or "grootfs (version unknown)"}


def root_teardown(work: Path) -> None:
    mnt = work / "xfs"
    if mnt.is_dir() and os.path.ismount(mnt):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # a keeper still holds it
    (work / "xfs.img").unlink(missing_ok=True)


def load_setup(work: Path) -> dict:
    try:
        return json.loads((work / SETUP_FILE).read_text())
    except (OSError, ValueError):
        return {"missing": "GrootFS needs its stores made by root: run the bench as root (make bench)"}


class GrootFS:
    """The GrootFS CLI on one of the stores root made."""

    def __init__(self, setup: dict, store: str, env: dict):
        self.bin, self.tardis, self.store, self.env = setup["bin"], setup["tardis"], store, env

    def argv(self, *args: str) -> list[str]:
        return [self.bin, "--store", self.store, "--tardis-bin", self.tardis, *args]

    def create_argv(self, host: str, ref: str, image_id: str) -> list[str]:
        # rootless GrootFS cannot mount (it needs root for overlay): --without-mount, as Garden runs it
        return self.argv("create", "--insecure-registry", host, "--without-mount", f"docker://{ref}", image_id)
