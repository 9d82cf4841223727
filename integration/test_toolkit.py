"""Smoke tests of the integration toolkit itself (fixtures, oci_builder, runc helpers).

They do not use rootless-groot's CLI: a stand-in keeper (runc.UsernsKeeper) holds the
user+mount namespace, the rootfs is oci_builder's busybox layer extracted with tar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import oci_builder as ob
from runc import run_container, run_container_from_mount



# --------------------------------------------------------------------------- oci_builder


def test_layers_are_deterministic():
    a = ob.Layer([ob.Dir("d"), ob.File("d/f", b"x", uid=33, gid=33, xattrs={"user.k": b"v"})])
    b = ob.Layer([ob.Dir("d"), ob.File("d/f", b"x", uid=33, gid=33, xattrs={"user.k": b"v"})])
    assert a.digest == b.digest and a.diff_id == b.diff_id
    assert ob.busybox_image().digest == ob.busybox_image().digest
    for comp, mt in (("none", ob.OCI_LAYER), ("gzip", ob.OCI_LAYER_GZIP), ("zstd", ob.OCI_LAYER_ZSTD)):
        layer = ob.Layer([ob.File("f", b"hello")], compression=comp)
        assert layer.media_type() == mt
        assert layer.diff_id == ob.sha256_digest(layer.tar)
    assert ob.Layer([ob.File("f")]).media_type(docker=True) == ob.DOCKER_LAYER_GZIP


def test_layout_structure(tmp_path):
    top = ob.Layer([ob.Dir("srv"), ob.File("srv/x", "hi\n", uid=33, gid=33),
                    ob.Whiteout("etc/hostname"), ob.Opaque("var"), ob.Hardlink("srv/y", "srv/x"),
                    ob.Fifo("srv/p"), ob.CharDev("srv/null"), ob.Raw("../evil", b"x"),
                    ob.Raw("/etc/abs", b"y")], compression="zstd")
    img = ob.busybox_image([top], env=["PATH=/bin", "FOO=bar"], cmd=["/bin/sh"], tag="v1")
    docker = ob.busybox_image(docker=True, tag="docker")
    multi = ob.multi_platform_index(ob.busybox_image(architecture="amd64"),
                                    ob.busybox_image(architecture="arm64"), tag="multi")
    lay = ob.write_layout(tmp_path / "layout", [img, docker, multi])
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    names = {m["annotations"][ob.REF_NAME]: m for m in index["manifests"]}
    assert set(names) == {"v1", "docker", "multi"}
    assert names["docker"]["mediaType"] == ob.DOCKER_MANIFEST
    assert names["multi"]["mediaType"] == ob.OCI_INDEX
    mi = json.loads(lay.blob_path(multi.digest).read_bytes())
    assert [m["platform"]["architecture"] for m in mi["manifests"]] == ["amd64", "arm64"]
    cfg = json.loads(lay.blob_path(img.config_digest).read_bytes())
    assert cfg["config"]["Env"] == ["PATH=/bin", "FOO=bar"]
    assert cfg["rootfs"]["diff_ids"] == [l.diff_id for l in img.layers]
    for digest in img.blobs():
        assert ob.sha256_digest(lay.blob_path(digest).read_bytes()) == digest
    assert lay.uri("v1") == f"oci://{(tmp_path / 'layout').resolve()}:v1"

    nested = ob.write_layout(tmp_path / "nested", [ob.busybox_image()], tag="n", wrap_in_index=True)
    assert nested.index["manifests"][0]["mediaType"] == ob.OCI_INDEX

    bad = ob.Image([ob.busybox_layer()], bad_diff_id=0)
    assert bad.config["rootfs"]["diff_ids"][0] != bad.layers[0].diff_id
    p = ob.corrupt_blob(lay.path, top.digest)
    assert ob.sha256_digest(p.read_bytes()) != top.digest

    if shutil.which("skopeo"):
        # (skopeo 1.9's oci: transport ignores index entries with Docker media types;
        # to get a Docker schema2 image into a registry, copy with --format v2s2)
        r = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'layout'}:v1"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["config"]["digest"] == img.config_digest


def test_rootfs_tarball(tmp_path):
    p = ob.write_rootfs_tarball(tmp_path / "stack.tar", ob.busybox_layer())
    names = subprocess.run(["tar", "tf", str(p)], capture_output=True, text=True,
                           check=True).stdout.split()
    assert "./bin/busybox" in names and "./etc/passwd" in names


# --------------------------------------------------------------------------- fixtures


def test_test_user_and_venv(test_user, as_user, cli):
    r = as_user(["id", "-u"])
    assert int(r.stdout) == test_user.uid
    if os.geteuid() == 0:
        assert test_user.uid != 0 and test_user.subuid_count and test_user.subgid_count
    # the package is importable by the test user from the test venv, wherever the checkout is
    r = as_user([cli.python, "-c", "import rootless_groot, sys; print(rootless_groot.__file__)"])
    assert "rootless_groot" in r.stdout


def test_store_dir_owned_by_user(store_dir, test_user, as_user):
    parent = os.path.dirname(store_dir)
    assert os.stat(parent).st_uid == test_user.uid
    assert not os.path.exists(store_dir)
    as_user(["mkdir", "-p", store_dir + "/run"])


# --------------------------------------------------------------------------- runc


def _prepare_lower(user_tmp, keeper):
    """busybox base + a file owned by 33, extracted with tar inside the namespace."""
    extra = ob.Layer([ob.Dir("etc"), ob.File("etc/x", "hello from x\n", uid=33, gid=33, mode=0o640)])
    flat = user_tmp / "rootfs.tar"
    flat.write_bytes(ob.tar_bytes(ob.busybox_entries() + extra.entries))
    os.chmod(flat, 0o644)
    lower = user_tmp / "lower"
    keeper.run(["sh", "-c", f"mkdir -p {lower} {user_tmp}/upper {user_tmp}/work {user_tmp}/merged"
                            f" && tar --numeric-owner -xpf {flat} -C {lower}"], check=True)
    return lower


def test_keeper_namespace(userns_keeper, test_user):
    r = userns_keeper.run(["cat", "/proc/self/uid_map"], check=True)
    rows = [l.split() for l in r.stdout.strip().splitlines()]
    assert rows[0] == ["0", str(test_user.uid), "1"]
    if test_user.subuid:
        assert rows[1] == ["1", str(test_user.subuid_start), str(test_user.subuid_count)]
    assert userns_keeper.run(["id", "-u"], check=True).stdout.strip() == "0"


def test_runc_in_store_namespace(user_tmp, userns_keeper, test_user):
    """Mode (a): the overlay is mounted in the keeper namespace; runc runs there."""
    if not test_user.subuid:
        pytest.skip("test user has no subordinate ids")
    lower = _prepare_lower(user_tmp, userns_keeper)
    merged = user_tmp / "merged"
    userns_keeper.run(["mount", "-t", "overlay", "overlay", "-o",
                       f"lowerdir={lower},upperdir={user_tmp}/upper,workdir={user_tmp}/work,userxattr",
                       str(merged)], check=True)
    owner = (test_user.uid, test_user.gid)
    try:
        r = run_container(str(merged), ["/bin/id"], runner=userns_keeper.run, workdir=str(user_tmp),
                          owner=owner)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("uid=0(root) gid=0(root)"), r.stdout
        r = run_container(str(merged), ["/bin/stat", "-c", "%u %g", "/etc/x"],
                          runner=userns_keeper.run, workdir=str(user_tmp), owner=owner)
        assert r.stdout.strip() == "33 33", (r.stdout, r.stderr)
        r = run_container(str(merged), ["/bin/cat", "/etc/x"], runner=userns_keeper.run,
                          workdir=str(user_tmp), owner=owner)
        assert r.stdout == "hello from x\n"
        r = run_container(str(merged), ["/bin/sh", "-c", "echo w > /new; echo out; echo err >&2; exit 7"],
                          runner=userns_keeper.run, workdir=str(user_tmp), owner=owner)
        assert (r.returncode, r.stdout, r.stderr.strip().splitlines()[-1]) == (7, "out\n", "err")
        # the write went to the upper dir, owned by the store owner (ns root) on the host
        assert (user_tmp / "upper" / "new").read_text() == "w\n"
        assert os.stat(user_tmp / "upper" / "new").st_uid == test_user.uid
        # uid 33 inside == subuid_start + 32 on the host
        assert os.stat(lower / "etc" / "x").st_uid == test_user.subuid_start + 32
    finally:
        userns_keeper.run(["umount", str(merged)])
    # no container state left behind
    assert not any(p.name.startswith("bundle-") for p in user_tmp.iterdir())


def test_runc_without_mount(user_tmp, userns_keeper, test_user):
    """Mode (b): the consumer gets the overlay mount spec and mounts it itself."""
    if not test_user.subuid:
        pytest.skip("test user has no subordinate ids")
    lower = _prepare_lower(user_tmp, userns_keeper)
    mount = {"destination": "/", "type": "overlay", "source": "overlay",
             "options": [f"lowerdir={lower},upperdir={user_tmp}/upper,workdir={user_tmp}/work,userxattr"]}
    r = run_container_from_mount(mount, ["/bin/sh", "-c", "id; stat -c %u /etc/x"],
                                 runner=userns_keeper.run, workdir=str(user_tmp),
                                 owner=(test_user.uid, test_user.gid))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("uid=0(root) gid=0(root)") and lines[1] == "33", r.stdout
    # unmounted afterwards
    mounts = userns_keeper.run(["cat", "/proc/self/mountinfo"], check=True).stdout
    assert str(user_tmp) not in mounts
