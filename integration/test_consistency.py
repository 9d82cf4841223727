"""Issue 9: a store that never lies. Every state a killed command can leave, damaged metadata,
lost keepers and read-only stores: a clear one-line error or a correct self-heal."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import oci_builder as ob
import pytest
from conftest import session_keepers
from test_core import create
from test_core_robustness import start_big_unpack, tmp_entries


def listed(cli, store) -> list[str]:
    out = cli("--store", store, "list").stdout
    return [] if out == "Store empty\n" else [os.path.basename(line) for line in out.split()]


def listed_json(cli, store) -> dict:
    return {i["id"]: i for i in json.loads(cli("--store", store, "list", "--json").stdout)["images"]}


def in_store(cli, store, *cmd, check=True):
    return cli("--store", store, "enter", "--", *cmd, check=check)


def layer_with(store, path) -> str:
    """The chain ID (directory name in layers/) of the cached layer that holds ``path``."""
    found = [c for c in os.listdir(os.path.join(store, "layers"))
             if os.path.lexists(os.path.join(store, "layers", c, "diff", path))]
    assert len(found) == 1, found
    return found[0]


def keeper_pid(store) -> int:
    with open(os.path.join(store, "run", "keeper.pid")) as f:
        return int(f.read().split()[0])


def wait_gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def layout(user_tmp):
    img = ob.busybox_image([ob.Layer([ob.File("etc/motd", b"hello\n"), ob.File("data/big", os.urandom(50_000))])])
    return ob.write_layout(user_tmp / "img", [img], tag="v1"), img


def half_made(store, image_id, *, mounted: bool, cli):
    """What a create killed before its last step, or a delete killed after its first, leaves:
    the image directory without ``image.json`` (its record under the pending name)."""
    d = os.path.join(store, "images", image_id)
    os.rename(os.path.join(d, "image.json"), os.path.join(d, "image.json.pending"))
    if not mounted:
        in_store(cli, store, "umount", os.path.join(d, "rootfs"))


@pytest.mark.parametrize("mounted", [False, True], ids=["create-killed", "delete-killed"])
def test_half_made_image_is_invisible_and_finished_by_the_next_command(mounted, cli, store_dir, layout):
    lay, _ = layout
    for i in ("a", "b", "c"):
        create(cli, store_dir, lay.uri("v1"), i)
    for i in ("a", "b", "c"):
        half_made(store_dir, i, mounted=mounted, cli=cli)
    # never listed, never a stats answer
    assert listed(cli, store_dir) == []
    assert listed_json(cli, store_dir) == {}
    r = cli("--store", store_dir, "stats", "a", check=False)
    assert r.returncode == 1 and r.stdout == "Image `a` not found.\n"
    # finished by the next create of the id, by delete, by clean
    spec = create(cli, store_dir, lay.uri("v1"), "a")
    assert in_store(cli, store_dir, "cat", spec["root"]["path"] + "/etc/motd").stdout == "hello\n"
    assert cli("--store", store_dir, "delete", "b").stdout == "Image b deleted\n"
    assert not os.path.exists(os.path.join(store_dir, "images", "b"))
    cli("--store", store_dir, "clean")
    assert sorted(os.listdir(os.path.join(store_dir, "images"))) == ["a"]
    assert tmp_entries(store_dir) == []
    assert listed(cli, store_dir) == ["a"]


def test_an_image_still_being_made_is_left_alone(cli, store_dir, layout, test_user):
    lay, _ = layout
    create(cli, store_dir, lay.uri("v1"), "x")
    half_made(store_dir, "x", mounted=False, cli=cli)
    d = os.path.join(store_dir, "images", "x")
    # a live command holds the image directory's lock (as create does until the image is real)
    holder = subprocess.Popen([*test_user.prefix(), "flock", "-x", d, "-c", "echo locked; read line"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        r = create(cli, store_dir, lay.uri("v1"), "x", check=False)
        assert r.returncode == 1 and r.stdout == "image for id `x` already exists\n"
        cli("--store", store_dir, "clean")
        assert os.path.isdir(d)
        assert listed(cli, store_dir) == []
    finally:
        holder.communicate("\n", timeout=30)
    create(cli, store_dir, lay.uri("v1"), "x")
    assert listed(cli, store_dir) == ["x"]


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage"])
def test_delete_succeeds_whatever_the_image_metadata(damage, cli, store_dir, layout):
    lay, _ = layout
    spec = create(cli, store_dir, lay.uri("v1"), "m")
    meta = os.path.join(store_dir, "images", "m", "image.json")
    if damage == "truncated":
        with open(meta, "r+") as f:
            f.truncate(os.path.getsize(meta) // 2)
    elif damage == "missing":
        os.unlink(meta)
    else:
        with open(meta, "w") as f:
            f.write("[1, 2]")
    if damage != "missing":
        # listed, and list --json says what is wrong instead of dropping it
        assert listed(cli, store_dir) == ["m"]
        entry = listed_json(cli, store_dir)["m"]
        assert "corrupt" in entry["error"] and "delete m" in entry["error"]
        r = cli("--store", store_dir, "stats", "m", check=False)
        assert r.returncode == 1 and len(r.stdout.splitlines()) == 1 and "corrupt" in r.stdout
        r = create(cli, store_dir, lay.uri("v1"), "m", check=False)
        assert r.returncode == 1 and "already exists" in r.stdout
    assert cli("--store", store_dir, "delete", "m").stdout == "Image m deleted\n"
    assert not os.path.exists(os.path.dirname(meta))
    assert not os.path.exists(spec["root"]["path"])
    spec = create(cli, store_dir, lay.uri("v1"), "m")
    assert in_store(cli, store_dir, "cat", spec["root"]["path"] + "/etc/motd").stdout == "hello\n"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_store_json_says_how_to_recover_and_delete_store_force_works(damage, cli, store_dir, layout):
    lay, _ = layout
    create(cli, store_dir, lay.uri("v1"), "s")
    pid = keeper_pid(store_dir)
    meta = os.path.join(store_dir, "store.json")
    content = {"truncated": open(meta).read()[:20], "empty": "", "garbage": '{"version": 1}'}[damage]
    with open(meta, "w") as f:
        f.write(content)
    for cmd in (["list"], ["create", lay.uri("v1"), "t"], ["delete", "s"], ["delete-store"]):
        r = cli("--store", store_dir, *cmd, check=False)
        assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, r.stdout
        assert "corrupt" in r.stdout and f"--store {store_dir} delete-store --force" in r.stdout
    cli("--store", store_dir, "delete-store", "--force")
    assert not os.path.exists(store_dir)
    assert wait_gone(pid)


def test_damaged_layer_json_is_rebuilt(cli, store_dir, layout):
    lay, img = layout
    create(cli, store_dir, lay.uri("v1"), "l1")
    sizes = json.loads(cli("--store", store_dir, "stats", "l1").stdout)["disk_usage"]
    chain = layer_with(store_dir, "data/big")
    with open(os.path.join(store_dir, "layers", chain, "layer.json"), "w") as f:
        f.write('{"size": ')
    create(cli, store_dir, lay.uri("v1"), "l2")
    again = json.loads(cli("--store", store_dir, "stats", "l2").stdout)["disk_usage"]
    assert again["total_bytes_used"] == sizes["total_bytes_used"] > 50_000
    with open(os.path.join(store_dir, "layers", chain, "layer.json")) as f:
        assert json.load(f)["size"] >= 50_000


def test_keeper_ends_with_its_store_and_is_found_without_its_pid_file(cli, store_dir, layout):
    lay, _ = layout
    create(cli, store_dir, lay.uri("v1"), "k")
    pid = keeper_pid(store_dir)
    # the pid file is lost: the next command finds the keeper (no second one), delete-store kills it
    os.unlink(os.path.join(store_dir, "run", "keeper.pid"))
    cli("--store", store_dir, "stats", "k")
    assert [p for p, s in session_keepers().items() if s == store_dir] == [pid]
    os.unlink(os.path.join(store_dir, "run", "keeper.pid"))
    cli("--store", store_dir, "delete-store")
    assert wait_gone(pid)
    # a store removed by hand: its keeper exits by itself
    create(cli, store_dir, lay.uri("v1"), "k")
    pid = keeper_pid(store_dir)
    in_store(cli, store_dir, "umount", os.path.join(store_dir, "images", "k", "rootfs"))
    shutil.rmtree(store_dir)
    assert wait_gone(pid)


def test_remount_failure_surfaces_and_heals(cli, store_dir, layout, user_tmp):
    lay, img = layout
    spec = create(cli, store_dir, lay.uri("v1"), "r")
    os.kill(keeper_pid(store_dir), signal.SIGKILL)
    chain = layer_with(store_dir, "data/big")
    parked = str(user_tmp / "parked")
    os.rename(os.path.join(store_dir, "layers", chain), parked)  # the layer is gone (damage)
    r = cli("--store", store_dir, "stats", "r", check=False)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1
    assert "`r` should be mounted" in r.stdout, r.stdout
    entry = listed_json(cli, store_dir)["r"]
    assert entry["mounted"] is False and "should be mounted" in entry["error"]
    # a create that brings the layer back remounts the image
    create(cli, store_dir, lay.uri("v1"), "r2")
    assert listed_json(cli, store_dir)["r"]["mounted"] is True
    assert in_store(cli, store_dir, "cat", spec["root"]["path"] + "/etc/motd").stdout == "hello\n"
    cli("--store", store_dir, "stats", "r")
    shutil.rmtree(parked, ignore_errors=True)


def test_read_only_store_refuses_delete_and_clean(cli, tmpfs_store, layout):
    mnt, store = tmpfs_store("64m")
    lay, _ = layout
    spec = create(cli, store, lay.uri("v1"), "ro")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    for cmd in (["delete", "ro"], ["clean"], ["create", lay.uri("v1"), "ro2"]):
        r = cli("--store", store, *cmd, check=False)
        assert r.returncode == 1 and r.stdout == f"store {store} is on a read-only filesystem: nothing was changed\n"
    subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
    assert listed(cli, store) == ["ro"]
    assert in_store(cli, store, "cat", spec["root"]["path"] + "/etc/motd").stdout == "hello\n"


def test_sigterm_mid_unpack_is_handled_like_sigint(cli, store_dir, user_tmp, test_user):
    proc, _ = start_big_unpack(cli, store_dir, user_tmp, test_user, "t1")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and out == "terminated\n", (out, err)
    assert tmp_entries(store_dir) == []
    assert not os.path.exists(os.path.join(store_dir, "images", "t1"))


def test_damaged_layer_is_never_silent_and_check_repairs_it(cli, store_dir, layout):
    lay, _ = layout
    spec = create(cli, store_dir, lay.uri("v1"), "d1")
    chain = layer_with(store_dir, "data/big")
    diff = os.path.join(store_dir, "layers", chain, "diff")
    assert cli("--store", store_dir, "check").stdout == "store is consistent\n"
    # a file removed from the cached layer: the next create refuses to build on it
    os.unlink(os.path.join(diff, "data", "big"))
    r = create(cli, store_dir, lay.uri("v1"), "d2", check=False)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, r.stdout
    assert "damaged (/data changed since it was unpacked)" in r.stdout and "check --repair" in r.stdout
    assert listed(cli, store_dir) == ["d1"]
    # a file changed in place: only the full check sees it
    with open(os.path.join(diff, "etc", "motd"), "w") as f:
        f.write("changed\n")
    r = cli("--store", store_dir, "check", check=False)
    assert r.returncode == 1
    assert f"layer {chain}: damaged: /data/big missing, /etc/motd changed" in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1] == "check: 1 problem(s) found: `check --repair` fixes what it can"
    # repair: the layer is fetched again from the image d1 was made from, d1 is remounted
    r = cli("--store", store_dir, "check", "--repair")
    assert r.stdout == "store is consistent\n", r.stdout + r.stderr
    assert in_store(cli, store_dir, "cat", spec["root"]["path"] + "/etc/motd").stdout == "hello\n"
    assert in_store(cli, store_dir, "test", "-f", spec["root"]["path"] + "/data/big").returncode == 0
    create(cli, store_dir, lay.uri("v1"), "d2")
    assert cli("--store", store_dir, "check").stdout == "store is consistent\n"
