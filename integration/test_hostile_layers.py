"""Hostile layers through the CLI, rootless: one line on stdout (never ``internal error``),
nothing kept in tmp/, and the store works afterwards (issue 10). The layers are a sample of
the unpacker's corpus (tests/test_unpack_hostile.py), chosen to cover each kind of refusal.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import oci_builder as ob
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_unpack_hostile as corpus  # noqa: E402

SAMPLE = ["PAX mtime nan", "PAX mtime 1e30", "malformed GNU.sparse.map", "sparse 1 TiB", "sparse 8 GiB",
          "20,000 levels through symlinks", "PAX header declaring 64 MiB", "name of 5000 bytes",
          "self symlink 1,500 times in a path", "hardlink through symlink to root", "truncated data",
          "PAX regex backtracking (CVE-2024-6232)", "1,000 PAX headers in a row", "base-256 negative size",
          "whiteout of ..", "gzip bomb: 2 GiB of zeros after the archive", "dir replaced by symlink",
          "non-UTF-8 name"]


def test_sample_is_in_the_corpus():
    assert set(SAMPLE) <= set(corpus.CASES)


@pytest.mark.parametrize("case", SAMPLE)
def test_hostile_layer_through_create(case, cli, store_dir, user_tmp):
    expect, build = corpus.CASES[case]
    blob = build()
    layer = ob.Layer(raw_tar=blob, compression="none")
    lay = ob.write_layout(user_tmp / "hostile", [ob.Image([layer])], tag="h")
    r = cli("--store", store_dir, "create", "--without-mount", lay.uri("h"), "h1", check=False, timeout=120)
    lines = r.stdout.splitlines()
    assert r.returncode in (0, 1) and "internal error" not in r.stdout and "Traceback" not in r.stdout, r.stdout
    if r.returncode:
        assert expect in ("error", "any") or blob[:2] == b"\x1f\x8b", r.stdout
        assert len(lines) == 1 and f"layer {layer.digest}" in lines[0] and len(lines[0]) < 700, r.stdout
    else:
        assert expect in ("ok", "any"), r.stdout
        c = cli("--store", store_dir, "check", check=False)  # the layer's records hold its odd names too
        assert c.returncode == 0 and "internal error" not in c.stdout, c.stdout + c.stderr
    assert not os.listdir(os.path.join(store_dir, "tmp")) if os.path.isdir(os.path.join(store_dir, "tmp")) else True
    good = ob.write_layout(user_tmp / "good", [ob.busybox_image()], tag="g")
    cli("--store", store_dir, "create", "--without-mount", good.uri("g"), "g1")
