"""Acceptance on btrfs qgroups, for real, on a loop device on the host kernel.

The same scenario as XFS (quota_scenario.py), as root in a private mount namespace
(`unshare -m`): a loop-mounted btrfs with quotas enabled, tmpfs for the helper's dirs.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from test_quota_xfs import check_semantics, run_scenario, scenario_dir  # noqa: F401  (fixture)

SETUP = r"""
set -e
img="$1"; mnt="$2"; shift 2
truncate -s 1G "$img"
mkfs.btrfs -q -f "$img" >/dev/null
mkdir -p "$mnt"
mount --make-rprivate /
mount -o loop,user_subvol_rm_allowed "$img" "$mnt"
btrfs quota enable "$mnt"
chmod 755 "$mnt"
"$@"
rc=$?
umount -l "$mnt" || true
exit $rc
"""


def test_btrfs_qgroup_acceptance(test_user, scenario_dir):  # noqa: F811
    if not shutil.which("mkfs.btrfs"):
        pytest.fail("mkfs.btrfs not found: apt-get install btrfs-progs")
    img, mnt = scenario_dir / "btrfs.img", scenario_dir / "mnt"
    res = run_scenario(["unshare", "-m", "--propagation", "private", "bash", "-c", SETUP, "setup", str(img),
                        str(mnt)], test_user, scenario_dir, ["--fs", "btrfs", "--mnt", str(mnt)])
    check_semantics(res, "btrfs")
    # GrootFS's 256 KiB minimum; a limit below the usage is set and cleared through the store's
    # subvolume (through the volume itself the kernel answers EDQUOT); no <stale> qgroup left.
    assert res["btrfs_one_byte"]["error"] == "invalid" and "262144" in res["btrfs_one_byte"]["message"]
    assert res["btrfs_below_usage"]["ok"], res["btrfs_below_usage"]
    assert res["btrfs_write_over"]["rc"] != 0 and "Disk quota exceeded" in res["btrfs_write_over"]["err"]
    assert res["btrfs_clear_over"] == {"ok": True}, res["btrfs_clear_over"]
    assert res["btrfs_set_again"]["ok"], res["btrfs_set_again"]
    assert res["btrfs_delete"]["rc"] == 0, res["btrfs_delete"]
    assert res["btrfs_create_after"]["rc"] == 0, res["btrfs_create_after"]
    assert "<stale>" not in res["btrfs_qgroups"], res["btrfs_qgroups"]
    subprocess.run(["rm", "-f", str(img)])
