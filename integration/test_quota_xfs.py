"""Acceptance: XFS project quotas for real, under uml-run (the host kernel has no XFS quota).

One UML boot runs integration/quota_scenario.py as root; it installs the helper into tmpfs
mounts (nothing lands on the host), registers a store on the UML's prjquota XFS volume for
the unprivileged test user, and drives the CLI as that user. Here we check what it saw.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import TEST_PYTHON, make_user_dir
from oci_builder import File, Layer, busybox_image, write_layout

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
BLOCK = 4096


def uml_run() -> Path:
    """shared/ sits beside the checkout (CI: ../shared relative to the clone)."""
    for cand in (REPO.parent / "shared" / "tools" / "uml-run", Path("/work/shared/tools/uml-run")):
        if cand.is_file():
            return cand
    pytest.fail(f"uml-run not found at {REPO.parent / 'shared' / 'tools' / 'uml-run'}: the XFS quota tests need "
                "../shared/tools/uml-run beside the checkout")


def run_scenario(fs_args: list[str], test_user, tmp_dir: Path, extra: list[str] = (), timeout=1500) -> dict:
    if os.geteuid() != 0:
        pytest.skip("the quota scenario runs as root (uml-run / loop devices)")
    launcher = tmp_dir / "rootless-groot-quota"
    subprocess.run(["make", "-s", "-C", str(REPO), "helper", f"HELPER_BIN={launcher}"], check=True,
                   capture_output=True)
    big = Layer([File("big.bin", os.urandom(3 * MIB))], compression="gzip")
    layout = write_layout(tmp_dir / "layout", [busybox_image([big])], tag="q")
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_dir)], check=True)
    argv = [TEST_PYTHON, str(REPO / "integration" / "quota_scenario.py"), "--repo", str(REPO),
            "--launcher", str(launcher), "--python", TEST_PYTHON, "--layout", layout.uri("q"),
            "--uid", str(test_user.uid), "--gid", str(test_user.gid),
            "--subuid", str(test_user.subuid_start), "--subgid", str(test_user.subgid_start), *extra]
    r = subprocess.run([*fs_args, *argv], capture_output=True, text=True, timeout=timeout, cwd="/")
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert lines, f"scenario printed no result (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(lines[-1])
    assert "crash" not in res, res["crash"] + "\n" + json.dumps(res, indent=1)[:6000]
    return res


def check_semantics(res: dict, fs: str) -> None:
    """GrootFS semantics on a ~5 MiB image with a 10 MiB limit (both filesystems)."""
    full = "No space left on device" if fs == "xfs" else "Disk quota exceeded"
    assert res["init"]["rc"] == 0, res["init"]
    # 2 MiB against ~5 MiB of incompressible layers: refused before download (GrootFS's message)
    assert res["too_small"]["rc"] == 1 and res["too_small"]["out"].strip() == "layers exceed disk quota"
    assert not res["small_exists"]
    assert res["create"]["rc"] == 0, res["create"]
    assert 4.5 * MIB < res["image_size"] < 5.5 * MIB
    assert res["w4"]["rc"] == 0, res["w4"]
    assert res["w2"]["rc"] != 0 and full in res["w2"]["err"], res["w2"]
    stats = json.loads(res["stats"]["out"])["disk_usage"]
    truth = int(res["truth"])
    assert abs(stats["exclusive_bytes_used"] - truth) <= BLOCK, (stats, truth)
    assert stats["total_bytes_used"] == stats["exclusive_bytes_used"] + res["image_size"]
    assert stats["quota_size_bytes"] == 10 * MIB
    assert stats["committed_space_bytes"] == res["image_size"] + 10 * MIB
    assert res["create_ex"]["rc"] == 0, res["create_ex"]
    assert res["x6"]["rc"] == 0, res["x6"]
    assert res["x5"]["rc"] != 0 and full in res["x5"]["err"], res["x5"]
    stats_ex = json.loads(res["stats_ex"]["out"])["disk_usage"]
    assert 6 * MIB <= stats_ex["exclusive_bytes_used"] <= 10 * MIB + BLOCK
    assert res["delete"]["rc"] == 0
    assert res["create_after_delete"]["rc"] == 0, res["create_after_delete"]
    assert res["w_after_delete"]["rc"] == 0, res["w_after_delete"]
    # Garden's production mode on the same store: root creates with a limit, the limit holds,
    # everything is the store owner's, and the mapped user deletes the image.
    assert res["root_create"]["rc"] == 0, res["root_create"]
    assert len(set(res["root_owners"])) == 1 and res["root_owners"][0] != 0, res["root_owners"]
    assert res["root_w4"]["rc"] == 0, res["root_w4"]
    assert res["root_w2"]["rc"] != 0 and full in res["root_w2"]["err"], res["root_w2"]
    assert json.loads(res["root_stats"]["out"])["disk_usage"]["quota_size_bytes"] == 10 * MIB, res["root_stats"]
    assert res["user_deletes_root_image"]["rc"] == 0, res["user_deletes_root_image"]
    assert res["root_image_gone"]
    # garden-runc-release's own store: Garden's mappings and store size, root runs everything
    assert res["garden_init"]["rc"] == 0, res["garden_init"]
    assert res["garden_create"]["rc"] == 0, res["garden_create"]
    assert res["garden_owner"] == 4294967294
    assert res["garden_w4"]["rc"] == 0, res["garden_w4"]
    assert res["garden_w2"]["rc"] != 0 and full in res["garden_w2"]["err"], res["garden_w2"]
    assert json.loads(res["garden_stats"]["out"])["disk_usage"]["quota_size_bytes"] == 10 * MIB
    for step in ("garden_delete", "garden_clean", "garden_delete_store"):
        assert res[step]["rc"] == 0, res[step]


@pytest.fixture
def scenario_dir(test_user):
    d = make_user_dir(test_user, prefix="quota-")
    yield d
    subprocess.run(["rm", "-rf", str(d)])


def test_xfs_project_quota_acceptance_and_abuse(test_user, scenario_dir):
    res = run_scenario([str(uml_run()), "--mem", "1500M", "--"], test_user, scenario_dir, ["--fs", "xfs",
                       "--mnt", "/mnt/uml-vol", "--abuse", "--race", "60"])
    check_semantics(res, "xfs")
    # A process in the container cannot move files to another project (kernel: EINVAL = 22)
    assert res["projid_change"]["out"] == "[22, 22]", res["projid_change"]
    state = json.loads(res["state"])["alloc"]
    assert len(state) == 2  # img1's ID was collected after delete and reused for img3
    abuse = res["abuse"]
    assert "error" not in abuse, abuse
    for case in ("dotdot", "slash", "absolute", "too_long", "extra_key", "extra_args"):
        assert abuse[case]["error"] == "invalid", (case, abuse[case])
    for case in ("symlink_victim", "symlink_root", "other_users_dir", "fifo", "hardlink", "missing",
                 "get_other", "clear_other", "unregistered"):
        assert abuse[case] == {"ok": False, "error": "denied", "secs": abuse[case]["secs"]}, (case, abuse[case])
    assert abuse["fifo"]["secs"] < 5
    assert abuse["victim_after"] == abuse["victim_before"] == [4242, MIB]
    assert abuse["race_total"] == 60
    assert abuse["parallel_ok"] == 100
    ids = abuse["parallel_ids"]
    assert len(set(ids)) == 100 and min(ids) >= 100000
    assert abuse["after_kill"]["ok"], abuse["after_kill"]
    assert len(abuse["state_ids"]) == len(set(abuse["state_ids"]))
    # One user's set loop reaches their cap (a clear refusal) but never blocks another user;
    # IDs of images deleted without clear come back once the cap is reached.
    caps = res["caps"]
    assert "error" not in caps, caps
    assert caps["ok"] == caps["cap"] - caps["before"], caps
    assert caps["last"]["error"] == "exhausted" and "max_allocations_per_user" in caps["last"]["message"], caps
    assert caps["after_delete"]["ok"], caps
    assert caps["other_user"]["ok"], caps
    assert caps["state_size"] < 1 << 20
