"""The per-layer records (store/integrity.py): what create's quick check and `check` find."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from rootless_groot.errors import LayerError
from rootless_groot.store import integrity
from rootless_groot.store.layout import Store


@pytest.fixture
def layer(tmp_path):
    store = Store(str(tmp_path))
    ctx = SimpleNamespace(store=store, in_namespace=False, meta=SimpleNamespace(rootless=False))
    layer_dir = store.layer_dir("c1")
    diff = os.path.join(layer_dir, "diff")
    os.makedirs(os.path.join(diff, "etc", "odd\nname dir"))
    with open(os.path.join(diff, "etc", "motd"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(diff, "etc", "odd\nname dir", "a b\\c"), "w") as f:
        f.write("x")
    os.symlink("motd", os.path.join(diff, "etc", "link"))
    integrity.write_records(ctx, layer_dir)
    return ctx, diff


def test_intact_layer_passes_both_checks(layer):
    ctx, _ = layer
    integrity.quick_check(ctx, "c1", "layer sha256:x")
    assert integrity.full_check(ctx, "c1") == []


def test_removed_file_fails_the_quick_check_and_is_named_by_the_full_one(layer):
    ctx, diff = layer
    os.unlink(os.path.join(diff, "etc", "odd\nname dir", "a b\\c"))
    with pytest.raises(LayerError, match=r"layer sha256:x in the store is damaged \(/etc/odd\nname dir changed"):
        integrity.quick_check(ctx, "c1", "layer sha256:x")
    assert integrity.full_check(ctx, "c1") == ["/etc/odd\nname dir/a b\\c missing"]


def test_changes_in_place_are_seen_by_the_full_check_only(layer):
    ctx, diff = layer
    with open(os.path.join(diff, "etc", "motd"), "r+") as f:
        f.write("HELLO")
    os.chmod(os.path.join(diff, "etc", "motd"), 0o600)
    integrity.quick_check(ctx, "c1", "layer sha256:x")  # no directory changed
    assert integrity.full_check(ctx, "c1") == ["/etc/motd changed"]


def test_added_file_and_missing_records(layer):
    ctx, diff = layer
    with open(os.path.join(diff, "new"), "w") as f:
        f.write("n")
    assert integrity.full_check(ctx, "c1") == ["/new added"]
    os.unlink(os.path.join(ctx.store.layer_dir("c1"), integrity.DIRS))
    integrity.quick_check(ctx, "c1", "layer sha256:x")  # a layer cached before records: passes
    with pytest.raises(LayerError, match="it is missing"):
        integrity.quick_check(ctx, "gone", "layer sha256:y")


def test_content_change_with_size_mode_and_mtime_kept_is_found(layer):
    ctx, diff = layer
    motd = os.path.join(diff, "etc", "motd")
    st = os.stat(motd)
    with open(motd, "r+") as f:
        f.write("jello")
    os.utime(motd, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert integrity.full_check(ctx, "c1") == ["/etc/motd changed"]


def test_records_with_sha256_sums_of_earlier_versions_are_still_checked(layer):
    ctx, diff = layer
    manifest, _ = integrity.walk_records(diff, integrity.host_ids(ctx), integrity._file_sha256)
    assert all(" crc32:" not in line for line in manifest)
    with open(os.path.join(ctx.store.layer_dir("c1"), integrity.MANIFEST), "w", errors="surrogateescape") as f:
        f.write("\n".join(manifest) + "\n")
    assert integrity.full_check(ctx, "c1") == []
    with open(os.path.join(diff, "etc", "motd"), "r+") as f:
        f.write("jello")
    assert integrity.full_check(ctx, "c1") == ["/etc/motd changed"]


def test_new_records_use_crc32(layer):
    ctx, _ = layer
    with open(os.path.join(ctx.store.layer_dir("c1"), integrity.MANIFEST)) as f:
        files = [line for line in f.read().splitlines() if line.startswith("f ")]
    assert files and all(line.split(" ")[5].startswith("crc32:") for line in files)
