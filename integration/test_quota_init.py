"""init-store --store-size-bytes that fails takes back everything it did (issue 10)."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import TEST_PYTHON


@pytest.mark.parametrize("size", [1 << 20, 2 << 30])
def test_a_failed_init_store_leaves_nothing_behind(tmp_path, size):
    """1 MiB: mkfs.xfs refuses it. 2 GiB: mkfs works, the mount fails where the kernel has no
    XFS (this host) or the registration is refused; either way no file, dir or mount is left."""
    if os.geteuid() != 0:
        pytest.skip("init-store --store-size-bytes runs as root")
    store = tmp_path / "new" / "deeper" / "store"
    r = subprocess.run([TEST_PYTHON, "-m", "rootless_groot", "--store", str(store), "init-store",
                        "--store-size-bytes", str(size), "--uid-mapping", "0:61007:1", "--gid-mapping", "0:61007:1"],
                       capture_output=True, text=True, timeout=300)
    try:
        if r.returncode == 0:  # a kernel that mounts XFS with prjquota: it simply worked
            assert (store / "meta.json").exists() or os.listdir(store), r.stdout
            return
        assert len(r.stdout.strip().splitlines()) == 1 and "internal error" not in r.stdout, r.stdout + r.stderr
        assert os.listdir(tmp_path) == [], list(tmp_path.rglob("*"))
        assert str(store) not in open("/proc/self/mountinfo").read()
    finally:
        if r.returncode == 0:
            subprocess.run([TEST_PYTHON, "-m", "rootless_groot", "--store", str(store), "delete-store"],
                           capture_output=True)
            subprocess.run(["umount", str(store)], capture_output=True)
