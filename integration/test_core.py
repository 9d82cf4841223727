"""The core, for real: an unprivileged user, newuidmap, overlay in the store's namespace, runc.

Every test drives the CLI as the test user (``cli`` fixture) on a fresh store, builds its
images with ``oci_builder`` and, where the issue asks for it, runs a container with
rootless runc from the result.
"""
from __future__ import annotations

import json
import os
import stat

import oci_builder as ob
import pytest
from runc import run_container, run_container_from_mount


def create(cli, store, image, image_id, *flags, check=True):
    r = cli("--store", store, "create", *flags, image, image_id, check=check)
    return json.loads(r.stdout) if r.returncode == 0 else r


def layer_dirs(store) -> list[str]:
    path = os.path.join(store, "layers")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def rich_image() -> ob.Image:
    """Three layers (gzip, zstd, plain) with every kind of entry the issue names."""
    middle = ob.Layer([
        ob.Dir("data", mode=0o755),
        ob.File("data/keep", b"keep\n"),
        ob.File("data/gone", b"to be whited out\n"),
        ob.Dir("opq"),
        ob.File("opq/lower-only", b"hidden by the opaque marker above\n"),
        ob.File("srv/www-owned", b"33\n", uid=33, gid=33),
        ob.File("srv/nobody-owned", b"65534\n", uid=65534, gid=65534),
        ob.File("usr/bin/suid", b"#!/bin/sh\necho suid\n", mode=0o4755),
        ob.Dir("tmpdir", mode=0o1777),
    ], compression="zstd")
    top = ob.Layer([
        ob.Whiteout("data/gone"),
        ob.Opaque("opq"),
        ob.File("opq/upper", b"upper\n"),
        ob.File("data/orig", b"linked\n"),
        ob.Hardlink("data/link", "data/orig"),
        ob.Symlink("data/sym", "/data/keep"),
        ob.Fifo("data/fifo"),
        ob.File("data/xattr", b"x", xattrs={"user.note": b"hello", "trusted.overlay.opaque": b"y"}),
    ], compression="none")
    return ob.busybox_image([middle, top], env=["PATH=/bin:/usr/bin", "GREETING=hi"])


@pytest.fixture
def rich_layout(user_tmp):
    img = rich_image()
    lay = ob.write_layout(user_tmp / "rich", [img], tag="v1")
    return lay, img


def in_container(store_runner, store, rootfs, script, **kw):
    return run_container(rootfs, ["/bin/sh", "-c", script], runner=store_runner(store), **kw)


def test_create_mounted_in_store_namespace_runs_in_runc(cli, store_dir, store_runner, rich_layout, test_user):
    lay, img = rich_layout
    spec = create(cli, store_dir, lay.uri("v1"), "c1")
    rootfs = os.path.join(store_dir, "images", "c1", "rootfs")
    assert spec == {"ociVersion": "", "process": {"user": {"uid": 0, "gid": 0},
                                                   "env": ["PATH=/bin:/usr/bin", "GREETING=hi"], "cwd": ""},
                    "root": {"path": rootfs}}
    assert len(layer_dirs(store_dir)) == 3

    script = (
        "cat /data/keep; test -e /data/gone && echo GONE-VISIBLE; ls /opq; "
        "stat -c '%u:%g %n' /srv/www-owned /srv/nobody-owned; stat -c '%a %n' /usr/bin/suid /tmpdir; "
        "stat -c '%i' /data/orig /data/link; readlink /data/sym; stat -c '%F' /data/fifo; id -u; echo $GREETING"
    )
    r = in_container(store_runner, store_dir, rootfs, script, env=spec["process"]["env"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "keep"
    assert "GONE-VISIBLE" not in r.stdout
    assert lines[1] == "upper"  # the opaque dir hides opq/lower-only
    assert lines[2:4] == ["33:33 /srv/www-owned", "65534:65534 /srv/nobody-owned"]
    assert lines[4:6] == ["4755 /usr/bin/suid", "1777 /tmpdir"]
    assert lines[6] == lines[7]  # hardlink shares the inode
    assert lines[8] == "/data/keep"
    assert lines[9] == "fifo"
    assert lines[10] == "0"
    assert lines[11] == "hi"

    # On the host, owners are the mapped subordinate ids: no chown pass, the kernel did it.
    chains = layer_dirs(store_dir)
    found = {}
    for chain in chains:
        for name in ("srv/www-owned", "srv/nobody-owned", "usr/bin/suid"):
            path = os.path.join(store_dir, "layers", chain, "diff", name)
            if os.path.lexists(path):
                found[name] = os.lstat(path)
    assert found["srv/www-owned"].st_uid == test_user.subuid_start + 32
    assert found["srv/nobody-owned"].st_uid == test_user.subuid_start + 65533
    assert found["usr/bin/suid"].st_uid == test_user.uid
    assert stat.S_IMODE(found["usr/bin/suid"].st_mode) == 0o4755


def test_whiteouts_and_overlay_metadata_on_disk(cli, store_dir, rich_layout, as_user):
    lay, img = rich_layout
    create(cli, store_dir, lay.uri("v1"), "c1", "--without-mount")
    tops = [os.path.join(store_dir, "layers", c, "diff") for c in layer_dirs(store_dir)]
    whiteout = next(os.path.join(t, "data", "gone") for t in tops if os.path.lexists(os.path.join(t, "data", "gone"))
                    and stat.S_ISCHR(os.lstat(os.path.join(t, "data", "gone")).st_mode))
    assert os.lstat(whiteout).st_rdev == 0
    top = os.path.dirname(os.path.dirname(whiteout))
    assert os.getxattr(os.path.join(top, "opq"), "user.overlay.opaque") == b"y"
    # a layer must not forge overlay metadata: the trusted.overlay xattr was dropped, user.note kept
    names = os.listxattr(os.path.join(top, "data", "xattr"))
    assert "user.note" in names
    assert not any(".overlay." in n for n in names)


def test_without_mount_returns_overlay_for_the_runtime(cli, store_dir, store_runner, rich_layout, user_tmp):
    lay, _ = rich_layout
    spec = create(cli, store_dir, lay.uri("v1"), "c2", "--without-mount")
    (mount,) = spec["mounts"]
    assert mount["destination"] == "/" and mount["type"] == "overlay" and mount["source"] == "overlay"
    (options,) = mount["options"]
    assert options.startswith(f"lowerdir={store_dir}/l/")
    assert f"upperdir={store_dir}/images/c2/diff" in options and f"workdir={store_dir}/images/c2/workdir" in options
    rootfs = os.path.join(store_dir, "images", "c2", "rootfs")
    assert spec["root"]["path"] == rootfs
    assert not os.listdir(rootfs)  # nothing mounted by us
    r = run_container_from_mount(mount, ["/bin/sh", "-c", "cat /data/keep; stat -c %u /srv/www-owned; touch /new"],
                                 runner=store_runner(store_dir))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["keep", "33"]


def test_stats_list_delete_and_errors(cli, store_dir, rich_layout, store_runner):
    lay, _ = rich_layout
    create(cli, store_dir, lay.uri("v1"), "c1")
    rootfs = os.path.join(store_dir, "images", "c1", "rootfs")
    before = json.loads(cli("--store", store_dir, "stats", "c1").stdout)["disk_usage"]
    r = in_container(store_runner, store_dir, rootfs, "dd if=/dev/zero of=/blob bs=1024 count=2048 2>/dev/null; sync")
    assert r.returncode == 0, r.stderr
    after = json.loads(cli("--store", store_dir, "stats", "c1").stdout)["disk_usage"]
    assert set(after) == {"total_bytes_used", "exclusive_bytes_used", "quota_size_bytes", "committed_space_bytes"}
    # GrootFS's numbers without a quota: nothing accounted, the image's size only
    assert after == before
    assert after["exclusive_bytes_used"] == after["quota_size_bytes"] == 0
    assert after["total_bytes_used"] == after["committed_space_bytes"] > 0

    assert cli("--store", store_dir, "list").stdout == f"{store_dir}/images/c1\n"
    listing = json.loads(cli("--store", store_dir, "list", "--json").stdout)
    assert [i["id"] for i in listing["images"]] == ["c1"]

    dup = create(cli, store_dir, lay.uri("v1"), "c1", check=False)
    assert dup.returncode == 1 and dup.stdout == "image for id `c1` already exists\n"
    bad = create(cli, store_dir, lay.uri("v1"), "a/b", check=False)
    assert bad.returncode == 1 and "invalid characters" in bad.stdout and len(bad.stdout.splitlines()) == 1

    assert cli("--store", store_dir, "delete", f"{store_dir}/images/c1").stdout == "Image c1 deleted\n"
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"
    gone = cli("--store", store_dir, "delete", "c1")
    assert gone.returncode == 0 and gone.stdout == "Image `c1` not found. Skipping delete.\n"
    missing = cli("--store", store_dir, "stats", "c1", check=False)
    assert missing.returncode == 1 and missing.stdout == "Image `c1` not found.\n"
    assert json.loads(cli("--store", store_dir, "capacity").stdout) == {"capacity": 0}
    # the layers stay cached until clean, which now removes them all
    assert len(layer_dirs(store_dir)) == 3
    assert cli("--store", store_dir, "clean").stdout == "clean completed\n"
    assert layer_dirs(store_dir) == []


def test_mappings_recorded_and_checked(cli, store_dir, test_user):
    uid, gid = test_user.uid, test_user.gid
    maps = ["--uid-mapping", f"0:{uid}:1", "--uid-mapping", f"1:{test_user.subuid_start}:1000",
            "--gid-mapping", f"0:{gid}:1", "--gid-mapping", f"1:{test_user.subgid_start}:1000"]
    cli("--store", store_dir, "init-store", *maps)
    cli("--store", store_dir, "init-store", *maps)  # idempotent
    other = cli("--store", store_dir, "init-store", "--uid-mapping", f"0:{uid}:1", "--gid-mapping", f"0:{gid}:1",
                check=False)
    assert other.returncode == 1
    assert other.stdout == "provided UID mappings do not match those already configured in the store\n"


def test_single_id_mapping_squashes_owners_with_a_warning(cli, store_dir, user_tmp, test_user):
    img = ob.busybox_image([ob.Layer([ob.File("srv/www", b"w", uid=33, gid=33)])])
    lay = ob.write_layout(user_tmp / "single", [img], tag="t")
    cli("--store", store_dir, "init-store", "--uid-mapping", f"0:{test_user.uid}:1",
        "--gid-mapping", f"0:{test_user.gid}:1")
    r = cli("--store", store_dir, "create", lay.uri("t"), "s1")
    assert "warning:" in r.stderr and "mapping" in r.stderr
    rootfs = json.loads(r.stdout)["root"]["path"]
    # the file from uid 33 now belongs to the only mapped id: 0 inside, the user outside
    r = cli("--store", store_dir, "enter", "--", "stat", "-c", "%u %n", f"{rootfs}/srv/www")
    assert r.stdout.strip() == f"0 {rootfs}/srv/www"
    assert os.stat(os.path.join(store_dir, "images", "s1")).st_uid == test_user.uid


def test_rootfs_tarball_cached_by_path_size_mtime(cli, store_dir, store_runner, user_tmp):
    tar = ob.write_rootfs_tarball(user_tmp / "stack.tar", ob.busybox_entries() + [ob.File("etc/stack", b"v1\n")])
    os.chmod(tar, 0o644)
    spec = create(cli, store_dir, str(tar), "t1")
    assert "env" not in spec["process"]
    r = in_container(store_runner, store_dir, spec["root"]["path"], "cat /etc/stack")
    assert r.stdout == "v1\n", r.stderr
    create(cli, store_dir, str(tar), "t2")
    assert len(layer_dirs(store_dir)) == 1  # same tarball, same layer
    ob.write_rootfs_tarball(tar, ob.busybox_entries() + [ob.File("etc/stack", b"v2 changed\n")])
    os.utime(tar, (1_800_000_000, 1_800_000_000))
    spec3 = create(cli, store_dir, str(tar), "t3")
    assert len(layer_dirs(store_dir)) == 2  # changed tarball: unpacked again
    r = in_container(store_runner, store_dir, spec3["root"]["path"], "cat /etc/stack")
    assert r.stdout == "v2 changed\n", r.stderr


def test_130_layer_image(cli, store_dir, store_runner, user_tmp):
    layers = [ob.Layer([ob.File(f"layers/{i:03d}", f"{i}\n".encode())], compression="none") for i in range(129)]
    img = ob.busybox_image(layers)
    lay = ob.write_layout(user_tmp / "tall", [img], tag="tall")
    spec = create(cli, store_dir, lay.uri("tall"), "tall")
    assert len(layer_dirs(store_dir)) == 130
    r = in_container(store_runner, store_dir, spec["root"]["path"], "ls /layers | wc -l; cat /layers/000 /layers/128")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["129", "0", "128"]


def test_keeper_restart_remounts_images(cli, store_dir, store_runner, rich_layout):
    lay, _ = rich_layout
    spec = create(cli, store_dir, lay.uri("v1"), "c1")
    with open(os.path.join(store_dir, "run", "keeper.pid")) as f:
        old = int(f.read().split()[0])
    os.kill(old, 9)
    r = in_container(store_runner, store_dir, spec["root"]["path"], "cat /data/keep")
    assert r.returncode == 0 and r.stdout == "keep\n", r.stderr
    with open(os.path.join(store_dir, "run", "keeper.pid")) as f:
        assert int(f.read().split()[0]) != old


def test_keeper_is_detached(cli, store_dir, rich_layout):
    lay, _ = rich_layout
    create(cli, store_dir, lay.uri("v1"), "c1")
    with open(os.path.join(store_dir, "run", "keeper.pid")) as f:
        pid = int(f.read().split()[0])
    fds = os.listdir(f"/proc/{pid}/fd")
    assert sorted(fds) == ["0", "1", "2", "3"]
    for fd in ("0", "1", "2"):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/3") == store_dir  # it watches its store, nothing else
    assert os.getsid(pid) == pid or os.getsid(pid) != os.getsid(0)


def test_clean_removes_exactly_the_unused_layers(cli, store_dir, user_tmp):
    base = ob.busybox_layer()
    a = ob.Image([base, ob.Layer([ob.File("a", b"a")])])
    b = ob.Image([base, ob.Layer([ob.File("b", b"b")])])
    lay = ob.write_layout(user_tmp / "two", [a, b], tag=None)
    index = json.loads((lay.path / "index.json").read_text())
    for entry, tag in zip(index["manifests"], ("a", "b")):
        entry.setdefault("annotations", {})[ob.REF_NAME] = tag
    (lay.path / "index.json").write_text(json.dumps(index))
    for tag in ("a", "b", "b"):
        cli("--store", store_dir, "create", "--without-mount", lay.uri(tag), f"img-{tag}{len(layer_dirs(store_dir))}")
    assert len(layer_dirs(store_dir)) == 3
    before = set(layer_dirs(store_dir))
    for image_id in os.listdir(os.path.join(store_dir, "images")):
        if image_id.startswith("img-b"):
            cli("--store", store_dir, "delete", image_id)
    # a corrupt image record: which layers it needs is unknown, so clean keeps everything
    (user_tmp / "store-corrupt").mkdir()
    corrupt = os.path.join(store_dir, "images", "zz-corrupt")
    cli("--store", store_dir, "enter", "--", "sh", "-c", f"mkdir {corrupt} && echo '{{' > {corrupt}/image.json")
    assert cli("--store", store_dir, "clean").stdout == "clean completed\n"
    assert set(layer_dirs(store_dir)) == before
    cli("--store", store_dir, "enter", "--", "rm", "-rf", corrupt)
    assert cli("--store", store_dir, "clean").stdout == "clean completed\n"
    left = set(layer_dirs(store_dir))
    assert len(left) == 2 and left < before  # base and a's top stay, b's top is gone
    spec = json.loads(cli("--store", store_dir, "create", "--without-mount", lay.uri("a"), "again").stdout)
    assert len(layer_dirs(store_dir)) == 2  # nothing had to be unpacked again
    assert spec["mounts"]


def test_unmounted_image_with_files_only_the_namespace_can_read(cli, store_dir, rich_layout, as_user):
    """stats and delete of a --without-mount image work from outside the store's namespace;
    delete joins it when the container left a directory the user cannot read or empty."""
    lay, _ = rich_layout
    create(cli, store_dir, lay.uri("v1"), "c1", "--without-mount")
    diff = os.path.join(store_dir, "images", "c1", "diff")
    empty = json.loads(cli("--store", store_dir, "stats", "c1").stdout)["disk_usage"]
    # what a container running as uid 33 leaves in its upper dir: a private dir of its own
    cli("--store", store_dir, "enter", "--", "/bin/sh", "-c",
        f"mkdir {diff}/private && dd if=/dev/zero of={diff}/private/blob bs=1024 count=1024 2>/dev/null && "
        f"chown -R 33:33 {diff}/private && chmod 700 {diff}/private")
    unreadable = as_user(["ls", f"{diff}/private"], check=False)
    assert unreadable.returncode != 0  # the user alone cannot walk it
    after = json.loads(cli("--store", store_dir, "stats", "c1").stdout)["disk_usage"]
    assert after == empty and after["exclusive_bytes_used"] == 0  # no quota: nothing accounted (GrootFS)
    assert cli("--store", store_dir, "delete", "c1").stdout == "Image c1 deleted\n"
    assert not os.path.exists(os.path.join(store_dir, "images", "c1"))
    assert os.listdir(os.path.join(store_dir, "tmp")) == []
