"""Bad input, concurrency and crashes: the store stays consistent and the next command works."""
from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import oci_builder as ob
import pytest
from conftest import popen_cli


def layer_dirs(store) -> list[str]:
    path = os.path.join(store, "layers")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def tmp_entries(store) -> list[str]:
    path = os.path.join(store, "tmp")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.fixture
def victim(user_tmp, test_user):
    """A directory and file outside the store that hostile layers aim at."""
    d = user_tmp / "victim"
    d.mkdir()
    f = d / "file"
    f.write_text("precious\n")
    os.chown(d, test_user.uid, test_user.gid)
    os.chown(f, test_user.uid, test_user.gid)
    os.chmod(d, 0o777)
    return d


def victim_untouched(victim) -> bool:
    return sorted(os.listdir(victim)) == ["file"] and (victim / "file").read_text() == "precious\n" \
        and os.stat(victim / "file").st_nlink == 1


HOSTILE = {
    "dotdot": lambda v: [ob.Raw("../evil", b"x")],
    "dotdot-inside": lambda v: [ob.Dir("a"), ob.Raw("a/../../evil", b"x")],
    "absolute": lambda v: [ob.Raw(f"{v}/abs", b"x")],
    "whiteout-dotdot": lambda v: [ob.Dir("d"), ob.Raw("d/.wh..", b"")],
    "whiteout-dotdotdot": lambda v: [ob.Dir("d"), ob.Raw("d/.wh...", b"")],
    "hardlink-out": lambda v: [ob.Hardlink("hl", "../../../../../../../../" + str(v).lstrip("/") + "/file")],
}
# Cases that may unpack (confined) or fail, but must never touch anything outside the layer.
CONFINED = {
    "symlink-parent-absolute": lambda v: [ob.Symlink("esc", str(v)), ob.File("esc/pwned", b"x")],
    "symlink-parent-relative": lambda v: [ob.Symlink("up", "../../../../../../../../../../" + str(v).lstrip("/")),
                                          ob.File("up/pwned", b"x")],
    "hardlink-through-symlink": lambda v: [ob.Symlink("s", str(v)), ob.Hardlink("hl", "s/file")],
    "symlink-then-overwrite": lambda v: [ob.Symlink("f", f"{v}/file"), ob.File("f", b"overwritten")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_and_nothing_kept(case, cli, store_dir, user_tmp, victim):
    img = ob.Image([ob.Layer(HOSTILE[case](victim), compression="gzip")])
    lay = ob.write_layout(user_tmp / "hostile", [img], tag="h")
    r = cli("--store", store_dir, "create", lay.uri("h"), "h1", check=False)
    assert r.returncode == 1
    assert len(r.stdout.splitlines()) == 1 and f"layer {img.layers[0].digest}" in r.stdout, r.stdout
    assert victim_untouched(victim)
    assert layer_dirs(store_dir) == [] and tmp_entries(store_dir) == []
    assert not os.path.exists(os.path.join(store_dir, "images", "h1"))
    # the store still works
    good = ob.write_layout(user_tmp / "good", [ob.busybox_image()], tag="g")
    cli("--store", store_dir, "create", good.uri("g"), "h1")


@pytest.mark.parametrize("case", sorted(CONFINED))
def test_symlinks_never_redirect_writes_outside(case, cli, store_dir, user_tmp, victim):
    img = ob.Image([ob.Layer(CONFINED[case](victim), compression="none")])
    lay = ob.write_layout(user_tmp / "confined", [img], tag="c")
    r = cli("--store", store_dir, "create", "--without-mount", lay.uri("c"), "c1", check=False)
    assert victim_untouched(victim)
    if r.returncode != 0:
        assert len(r.stdout.splitlines()) == 1 and "layer" in r.stdout
        assert layer_dirs(store_dir) == [] and tmp_entries(store_dir) == []


def test_device_nodes_skipped_rootless(cli, store_dir, user_tmp):
    img = ob.busybox_image([ob.Layer([ob.CharDev("dev/evilmem", 1, 1), ob.BlockDev("dev/sda", 8, 0),
                                      ob.File("dev/ok", b"ok")])])
    lay = ob.write_layout(user_tmp / "dev", [img], tag="d")
    cli("--store", store_dir, "create", "--without-mount", lay.uri("d"), "d1")
    for chain in layer_dirs(store_dir):
        diff = os.path.join(store_dir, "layers", chain, "diff")
        assert not os.path.lexists(os.path.join(diff, "dev", "evilmem"))
        assert not os.path.lexists(os.path.join(diff, "dev", "sda"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "delete"])
def test_corrupt_blob_is_refused_and_nothing_cached(damage, cli, store_dir, user_tmp):
    img = ob.busybox_image([ob.Layer([ob.File("etc/payload", os.urandom(300_000))], compression="gzip")])
    lay = ob.write_layout(user_tmp / "corrupt", [img], tag="c")
    bad = img.layers[1].digest
    ob.corrupt_blob(lay.path, bad, how=damage)
    r = cli("--store", store_dir, "create", lay.uri("c"), "c1", check=False)
    assert r.returncode == 1
    assert len(r.stdout.splitlines()) == 1 and f"layer {bad}" in r.stdout, r.stdout
    assert not any(c == img.layers[1].diff_id.split(":")[1] for c in layer_dirs(store_dir))
    assert len(layer_dirs(store_dir)) <= 1  # at most the intact base layer
    assert tmp_entries(store_dir) == []
    assert not os.path.exists(os.path.join(store_dir, "images", "c1"))


def test_wrong_diff_id_is_refused(cli, store_dir, user_tmp):
    img = ob.busybox_image([ob.Layer([ob.File("x", b"x")])], bad_diff_id=1)
    lay = ob.write_layout(user_tmp / "baddiff", [img], tag="c")
    r = cli("--store", store_dir, "create", lay.uri("c"), "c1", check=False)
    assert r.returncode == 1 and f"layer {img.layers[1].digest}" in r.stdout and "diff" in r.stdout.lower()
    assert len(layer_dirs(store_dir)) <= 1
    # skip-layer-validation (GrootFS) accepts it
    cli("--store", store_dir, "create", "--skip-layer-validation", lay.uri("c"), "c1")


def test_twenty_parallel_creates_and_a_clean(cli, store_dir, user_tmp):
    img = ob.busybox_image([ob.Layer([ob.File(f"f/{i}", os.urandom(2000)) for i in range(300)]),
                            ob.Layer([ob.File("top", b"top")], compression="zstd")])
    lay = ob.write_layout(user_tmp / "par", [img], tag="p")
    cli("--store", store_dir, "init-store")

    def one(i):
        if i == 20:
            return cli("--store", store_dir, "--log-level", "info", "clean", check=False)
        return cli("--store", store_dir, "--log-level", "info", "create", lay.uri("p"), f"p{i}", check=False)

    with ThreadPoolExecutor(max_workers=21) as pool:
        results = list(pool.map(one, range(21)))
    for r in results:
        assert r.returncode == 0, r.stdout + r.stderr
    unpacked = [line for r in results for line in r.stderr.splitlines() if "layer.unpacked" in line]
    assert len(unpacked) == 3, unpacked  # each layer once, across all twenty creates
    assert len(layer_dirs(store_dir)) == 3
    assert len(os.listdir(os.path.join(store_dir, "images"))) == 20


def start_big_unpack(cli, store_dir, user_tmp, test_user, image_id: str):
    """A create of a 15,000-file layer, returned (as a Popen) once that layer is being unpacked
    (its many/ dir appears in a tmp work dir), with its layout."""
    many = ob.Layer([ob.File(f"many/{i // 1000}/{i}", b"x" * 100) for i in range(15_000)], compression="gzip")
    lay = ob.write_layout(user_tmp / "big", [ob.busybox_image([many])], tag="b")
    cli("--store", store_dir, "init-store")
    proc = popen_cli(test_user, user_tmp, "--store", store_dir, "create", lay.uri("b"), image_id)
    deadline = time.monotonic() + 120
    tmp = os.path.join(store_dir, "tmp")
    while time.monotonic() < deadline and proc.poll() is None:
        if any(os.path.isdir(os.path.join(tmp, d, "diff", "many")) for d in tmp_entries(store_dir)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "create finished before it could be stopped"
    return proc, lay


def test_sigkill_mid_unpack_leaves_store_usable(cli, store_dir, user_tmp, test_user):
    proc, lay = start_big_unpack(cli, store_dir, user_tmp, test_user, "k1")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # the killed layer never looks finished
    big_chain_present = [c for c in layer_dirs(store_dir)
                         if os.path.isdir(os.path.join(store_dir, "layers", c, "diff", "many"))]
    assert big_chain_present == []
    assert not os.path.exists(os.path.join(store_dir, "images", "k1"))
    assert tmp_entries(store_dir) != []  # what the killed command was unpacking
    spec = json.loads(cli("--store", store_dir, "create", lay.uri("b"), "k1").stdout)
    assert spec["root"]["path"].endswith("/images/k1/rootfs")
    assert tmp_entries(store_dir) == []  # reclaimed by the next create of those layers, no clean needed
    assert cli("--store", store_dir, "clean").stdout == "clean completed\n"
    assert tmp_entries(store_dir) == []


@pytest.fixture
def small_disk_store(tmpfs_store):
    """A store on a 3 MiB tmpfs of the test user's: a full disk, for real."""
    return tmpfs_store("3m")[1]


def test_full_disk_is_one_line_and_the_store_stays_usable(cli, small_disk_store, user_tmp, test_user):
    store = small_disk_store
    big = ob.busybox_image([ob.Layer([ob.File("big", os.urandom(4 << 20))], compression="gzip")])
    lay = ob.write_layout(user_tmp / "big", [big], tag="b")
    r = cli("--store", store, "create", lay.uri("b"), "b1", check=False)
    assert r.returncode == 1
    assert len(r.stdout.splitlines()) == 1 and "No space left on device" in r.stdout, r.stdout
    assert f"layer {big.layers[1].digest}" in r.stdout and f"{store}/tmp" in r.stdout, r.stdout  # which, where
    assert not os.path.exists(os.path.join(store, "images", "b1"))
    big_chain = [c for c in layer_dirs(store) if os.path.exists(os.path.join(store, "layers", c, "diff", "big"))]
    assert big_chain == []  # the layer that did not fit is not in the cache
    assert cli("--store", store, "clean").stdout == "clean completed\n"
    assert tmp_entries(store) == []
    small = ob.write_layout(user_tmp / "small", [ob.busybox_image()], tag="s")
    spec = json.loads(cli("--store", store, "create", small.uri("s"), "s1").stdout)
    r = cli("--store", store, "enter", "--", "ls", spec["root"]["path"] + "/bin/busybox")
    assert r.returncode == 0
    cli("--store", store, "delete-store")
