"""Image selection in OCI layouts, the store as real root (host mode), and the classic-mount
fallback of kernels before 6.8 (the UML kernel is 6.1)."""
from __future__ import annotations

import json
import os
import subprocess

import oci_builder as ob
import pytest
from conftest import TEST_PYTHON, make_user_dir
from runc import run_container
from test_quota_xfs import uml_run


def marker_image(arch: str, docker: bool = False) -> ob.Image:
    return ob.busybox_image([ob.Layer([ob.File("etc/arch", f"{arch}\n".encode())])], architecture=arch, docker=docker)


def read_arch(cli, store, store_runner, image_id) -> str:
    rootfs = os.path.join(store, "images", image_id, "rootfs")
    r = cli("--store", store, "enter", "--", "cat", f"{rootfs}/etc/arch")
    return r.stdout.strip()


def test_oci_layout_platforms_nested_indexes_and_docker_types(cli, store_dir, store_runner, user_tmp):
    multi = ob.multi_platform_index(marker_image("amd64"), marker_image("arm64"), tag="multi")
    nested = ob.ImageIndex([ob.multi_platform_index(marker_image("amd64"), marker_image("arm64"))], tag="nested")
    docker = marker_image("amd64", docker=True)
    lay = ob.write_layout(user_tmp / "multi", [multi, nested, docker], tag=None)
    index = json.loads((lay.path / "index.json").read_text())
    index["manifests"][2].setdefault("annotations", {})[ob.REF_NAME] = "docker"
    (lay.path / "index.json").write_text(json.dumps(index))

    cli("--store", store_dir, "create", lay.uri("multi"), "m1")
    assert read_arch(cli, store_dir, store_runner, "m1") == "amd64"  # this machine
    cli("--store", store_dir, "create", "--platform", "linux/arm64", lay.uri("multi"), "m2")
    assert read_arch(cli, store_dir, store_runner, "m2") == "arm64"
    cli("--store", store_dir, "create", "--platform", "linux/arm64/v8", lay.uri("nested"), "m3")
    assert read_arch(cli, store_dir, store_runner, "m3") == "arm64"
    cli("--store", store_dir, "create", lay.uri("docker"), "m4")
    assert read_arch(cli, store_dir, store_runner, "m4") == "amd64"

    r = cli("--store", store_dir, "create", "--platform", "linux/s390x", lay.uri("multi"), "m5", check=False)
    assert r.returncode == 1 and r.stdout.strip().endswith("has no image for platform linux/s390x")
    r = cli("--store", store_dir, "create", lay.uri("nope"), "m6", check=False)
    assert r.returncode == 1 and "no image tagged `nope`" in r.stdout
    r = cli("--store", store_dir, "create", lay.uri(), "m7", check=False)
    assert r.returncode == 1 and "name one with oci://PATH:TAG" in r.stdout


def root_cli(*args, check=True):
    r = subprocess.run([TEST_PYTHON, "-m", "rootless_groot", *args], capture_output=True, text=True, cwd="/")
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def host_mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@pytest.fixture
def root_store(tmp_path):
    assert os.geteuid() == 0, "host mode is the store as real root: make test runs as root"
    store = tmp_path / "root-store"
    yield str(store)
    root_cli("--store", str(store), "delete-store", check=False)


def test_as_root_mounts_go_in_the_host_namespace(root_store, tmp_path):
    img = ob.busybox_image([ob.Layer([ob.File("srv/www", b"w\n", uid=33, gid=33),
                                      ob.CharDev("dev/zero-ish", 1, 5)])])
    lay = ob.write_layout(tmp_path / "layout", [img], tag="r")
    spec = json.loads(root_cli("--store", root_store, "create", lay.uri("r"), "r1").stdout)
    rootfs = spec["root"]["path"]
    assert f" {rootfs} " in host_mounts()  # no keeper, no namespace: the host sees the mount
    assert not os.path.exists(os.path.join(root_store, "run", "keeper.pid"))
    assert os.stat(os.path.join(rootfs, "srv", "www")).st_uid == 33
    assert os.stat(os.path.join(rootfs, "dev", "zero-ish")).st_rdev == os.makedev(1, 5)  # root may make devices

    def as_root(cmd):
        return subprocess.run(cmd, capture_output=True, text=True)

    r = run_container(rootfs, ["/bin/sh", "-c", "stat -c %u /srv/www; id -u"], runner=as_root,
                      workdir=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["33", "0"]
    assert root_cli("--store", root_store, "delete", "r1").stdout == "Image r1 deleted\n"
    assert f" {rootfs} " not in host_mounts()


def test_as_root_with_mappings_translates_owners(root_store, tmp_path):
    root_cli("--store", root_store, "init-store", "--uid-mapping", "0:300000:65536", "--gid-mapping", "0:300000:65536")
    img = ob.busybox_image([ob.Layer([ob.File("srv/www", b"w\n", uid=33, gid=33)])])
    lay = ob.write_layout(tmp_path / "layout", [img], tag="r")
    spec = json.loads(root_cli("--store", root_store, "create", lay.uri("r"), "r1").stdout)
    st = os.stat(os.path.join(spec["root"]["path"], "srv", "www"))
    assert (st.st_uid, st.st_gid) == (300033, 300033)
    for sub in ("", "diff", "workdir", "rootfs"):  # the container's root owns its image (GrootFS)
        st = os.lstat(os.path.join(root_store, "images", "r1", sub, ""))
        assert (st.st_uid, st.st_gid) == (300000, 300000), sub


def test_classic_mount_fallback_on_a_6_1_kernel_with_130_layers(test_user):
    """The UML kernel (6.1) lacks ``lowerdir+``: 130 layers must mount through short relative paths."""
    work = make_user_dir(test_user, prefix="uml-")
    layers = [ob.Layer([ob.File(f"layers/{i:03d}", f"{i}\n".encode())], compression="none") for i in range(129)]
    lay = ob.write_layout(work / "tall", [ob.busybox_image(layers)], tag="tall")
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", str(work)], check=True)
    store = "/mnt/uml-vol/store"
    env = " ".join(f"{k}={v}" for k, v in test_user.base_env(str(work)).items())
    rg = f"setpriv --reuid={test_user.uid} --regid={test_user.gid} --init-groups env -i {env} {TEST_PYTHON} -m rootless_groot --store {store}"
    script = (
        f"chown {test_user.uid}:{test_user.gid} /mnt/uml-vol && uname -r && "
        f"{rg} create {lay.uri('tall')} tall && "
        f"{rg} enter -- sh -c 'ls {store}/images/tall/rootfs/layers | wc -l; cat {store}/images/tall/rootfs/layers/128'"
    )
    r = subprocess.run([str(uml_run()), "--fs", "xfs", "--", "sh", "-c", script], capture_output=True, text=True,
                       timeout=600, cwd=str(work))
    out = r.stdout.split()
    assert r.returncode == 0, r.stdout + r.stderr
    assert out[0].startswith("6.1"), out
    assert out[-2:] == ["129", "128"], r.stdout + r.stderr
