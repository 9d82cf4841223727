"""Garden's production mode: root runs the plugin on a store that root initialised with
mappings; the mapped user can use the same store in rootless mode. Ownership on disk is the
mapped ids either way. (Quotas on such stores: quota_scenario.py, XFS and btrfs.)
"""
from __future__ import annotations

import json
import os
import select
import subprocess

import pytest

import oci_builder as ob
from conftest import IS_ROOT, TEST_PYTHON, make_user_dir

MAXIMUS = 4294967294  # garden-runc-release: 0 -> maximus, 1.. -> 1..


def root_cli(*args, check=True):
    r = subprocess.run([TEST_PYTHON, "-m", "rootless_groot", *args], capture_output=True, text=True, timeout=300,
                       cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    if check and r.returncode:
        raise AssertionError(f"{args} exited {r.returncode}: {r.stdout} {r.stderr}")
    return r


def mappings(kind: str, *maps: str) -> list[str]:
    return [a for m in maps for a in (f"--{kind}-mapping", m)]


@pytest.fixture
def image_layout(user_tmp):
    img = ob.busybox_image([ob.Layer([ob.Dir("srv", uid=33, gid=33), ob.File("srv/www", b"www\n", uid=33, gid=33),
                                      ob.Whiteout("etc/hostname")])])
    lay = ob.write_layout(user_tmp / "layout", [img], tag="t")
    subprocess.run(["chmod", "-R", "a+rX", str(user_tmp)], check=True)
    return lay


def owners(path: str, *names: str) -> dict[str, tuple[int, int]]:
    return {n: (os.lstat(os.path.join(path, n)).st_uid, os.lstat(os.path.join(path, n)).st_gid) for n in names}


@pytest.fixture
def root_store(test_user):
    parent = make_user_dir(test_user, prefix="rootstore-")
    store = parent / "store"
    yield str(store)
    root_cli("--store", str(store), "delete-store", check=False)
    subprocess.run(["rm", "-rf", str(parent)])


@pytest.mark.skipif(not IS_ROOT, reason="Garden's production mode: root runs the plugin")
def test_root_on_garden_production_mappings(root_store, image_layout):
    s = ["--store", root_store]
    root_cli(*s, "init-store", *mappings("uid", f"0:{MAXIMUS}:1", f"1:1:{MAXIMUS - 1}"),
             *mappings("gid", f"0:{MAXIMUS}:1", f"1:1:{MAXIMUS - 1}"))
    spec = json.loads(root_cli(*s, "create", image_layout.uri("t"), "c1").stdout)
    rootfs = spec["root"]["path"]
    assert "mounts" not in spec and os.path.ismount(rootfs)  # root mounts in the host's namespace
    assert open(os.path.join(rootfs, "srv/www")).read() == "www\n"
    assert not os.path.exists(os.path.join(rootfs, "etc/hostname"))  # the whiteout works
    got = owners(rootfs, "etc", "bin/busybox", "srv", "srv/www")
    assert got == {"etc": (MAXIMUS, MAXIMUS), "bin/busybox": (MAXIMUS, MAXIMUS), "srv": (33, 33),
                   "srv/www": (33, 33)}, got
    # what root made in the store belongs to the store's owner (the mapped root)
    assert {os.stat(os.path.join(root_store, d)).st_uid for d in ("layers", "images", "images/c1", "locks")} == {MAXIMUS}
    stats = json.loads(root_cli(*s, "stats", "c1").stdout)["disk_usage"]
    assert stats["quota_size_bytes"] == 0 and stats["total_bytes_used"] > 0
    root_cli(*s, "delete", "c1")
    assert root_cli(*s, "clean", "--threshold-bytes", "0").stdout.strip() == "clean completed"
    assert os.listdir(os.path.join(root_store, "layers")) == []


@pytest.mark.skipif(not IS_ROOT, reason="root initialises the store for the test user")
def test_root_and_mapped_user_share_a_store(root_store, image_layout, cli, test_user):
    """GrootFS's suite: a store mapped 0:<uid>:1 (+ subordinate ids) is used by root and by that user."""
    s = ["--store", root_store]
    root_cli(*s, "init-store", *mappings("uid", f"0:{test_user.uid}:1", f"1:{test_user.subuid_start}:65536"),
             *mappings("gid", f"0:{test_user.gid}:1", f"1:{test_user.subgid_start}:65536"))
    root_spec = json.loads(root_cli(*s, "create", image_layout.uri("t"), "by-root").stdout)
    rootfs = root_spec["root"]["path"]
    expect = {"etc": (test_user.uid, test_user.gid),
              "srv/www": (test_user.subuid_start + 32, test_user.subgid_start + 32)}
    assert owners(rootfs, "etc", "srv/www") == expect
    # Garden with create.without_mount: runc mounts the overlay from the JSON, as root
    nomount = json.loads(root_cli(*s, "create", "--without-mount", image_layout.uri("t"), "by-root-2").stdout)
    # the user (rootless mode) reuses root's layers and creates its own image
    user_spec = json.loads(cli(*s, "create", "--without-mount", image_layout.uri("t"), "by-user").stdout)
    assert user_spec["mounts"][0]["type"] == "overlay"
    assert len(os.listdir(os.path.join(root_store, "layers"))) == 2
    assert json.loads(cli(*s, "stats", "by-root-2").stdout)["disk_usage"]["total_bytes_used"] > 0
    # each deletes the other's image (a rootfs root keeps mounted can only be deleted by root, as in GrootFS)
    cli(*s, "delete", "by-root-2")
    assert not os.path.exists(os.path.dirname(nomount["root"]["path"]))
    root_cli(*s, "delete", "by-user")
    root_cli(*s, "delete", "by-root")
    assert cli(*s, "clean", "--threshold-bytes", "0").stdout.strip() == "clean completed"
    assert os.listdir(os.path.join(root_store, "layers")) == []
    json.loads(root_cli(*s, "create", image_layout.uri("t"), "again").stdout)
    root_cli(*s, "delete", "again")
    # root's delete-store also stops the user's keeper of that store
    keeper = int(open(os.path.join(root_store, "run", "keeper.pid")).read())
    pidfd = os.pidfd_open(keeper)  # readable once the process has exited
    try:
        root_cli(*s, "delete-store")
        assert not os.path.exists(root_store)
        assert select.select([pidfd], [], [], 10)[0], f"keeper {keeper} still runs"
    finally:
        os.close(pidfd)
