"""fd-based checks on the caller's directories: symlinks, FIFOs, foreign owners, hardlinks."""
from __future__ import annotations

import os
import time

import pytest

from privileged_helper.ops import IMAGE_ENTRIES, _check_fresh, _open_image
from privileged_helper.paths import as_caller, fs_magic, open_registered
from privileged_helper.protocol import HelperError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root to set up")
USER, VICTIM = 61001, 61002


def own(path, uid=USER):
    os.lchown(path, uid, uid)


@pytest.fixture
def store(tmp_path):
    os.chmod(tmp_path, 0o755)
    root = tmp_path / "store"
    (root / "images").mkdir(parents=True)
    own(root)
    own(root / "images")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_text("x")
    own(victim, VICTIM)
    own(victim / "secret", VICTIM)
    return root, victim


def make_image(root, name="img"):
    d = root / "images" / name
    d.mkdir()
    for sub in ("diff", "workdir", "rootfs"):
        (d / sub).mkdir()
        own(d / sub)
    (d / "image.json").write_text("{}")
    own(d / "image.json")
    own(d)
    return d


def open_img(root, name):
    fd = open_registered(str(root))
    try:
        with as_caller(USER, USER):
            img, _ = _open_image(fd, name, USER)
        os.close(img)
    finally:
        os.close(fd)


def denied(fn, *a):
    with pytest.raises(HelperError) as e:
        fn(*a)
    assert e.value.code == "denied"


def test_own_fresh_image_is_accepted(store):
    root, _ = store
    d = make_image(root)
    open_img(root, "img")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with as_caller(USER, USER):
            _check_fresh(fd, USER, IMAGE_ENTRIES)
    finally:
        os.close(fd)


@pytest.mark.parametrize("target", ["victim", "/", "/var/lib"])
def test_symlinked_image_dir_is_denied(store, target):
    root, victim = store
    link = root / "images" / "img"
    os.symlink(str(victim) if target == "victim" else target, link)
    own(link)
    denied(open_img, root, "img")


def test_other_users_dir_file_fifo_device(store):
    root, _ = store
    other = root / "images" / "other"
    other.mkdir()
    own(other, VICTIM)
    denied(open_img, root, "other")
    (root / "images" / "file").write_text("x")
    own(root / "images" / "file")
    denied(open_img, root, "file")
    os.mkfifo(root / "images" / "fifo")
    own(root / "images" / "fifo")
    start = time.monotonic()
    denied(open_img, root, "fifo")
    assert time.monotonic() - start < 1
    os.mknod(root / "images" / "dev", 0o600 | 0o020000, os.makedev(1, 3))
    denied(open_img, root, "dev")
    denied(open_img, root, "missing")


def test_symlinked_images_or_store_is_denied(store, tmp_path):
    root, victim = store
    make_image(root)
    link = tmp_path / "linkstore"
    os.symlink(root, link)
    with pytest.raises(HelperError):
        open_registered(str(link))
    with pytest.raises(HelperError):
        open_registered(str(root) + "/../store")


def test_hardlink_to_victim_file_is_denied(store):
    root, victim = store
    d = make_image(root)
    os.link(victim / "secret", d / "diff" / "secret")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        denied(_check_fresh, fd, USER, IMAGE_ENTRIES)
        os.unlink(d / "diff" / "secret")
        os.unlink(d / "image.json")
        os.link(victim / "secret", d / "image.json")
        denied(_check_fresh, fd, USER, IMAGE_ENTRIES)
        os.unlink(d / "image.json")
        (d / "extra").mkdir()
        denied(_check_fresh, fd, USER, IMAGE_ENTRIES)
    finally:
        os.close(fd)


def test_as_caller_drops_dac_override(store):
    root, victim = store
    os.chmod(victim, 0o700)
    with as_caller(USER, USER):
        with pytest.raises(PermissionError):
            os.listdir(victim)
    assert os.listdir(victim) == ["secret"]


def test_fs_magic(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert fs_magic(fd) > 0
    finally:
        os.close(fd)


def test_denied_answers_do_not_leak(store):
    """A missing name, someone else's dir and a symlink give the same answer (no oracle)."""
    root, victim = store
    other = root / "images" / "other"
    other.mkdir()
    own(other, VICTIM)
    os.symlink(victim, root / "images" / "link")
    answers = set()
    for name in ("missing", "other", "link"):
        try:
            open_img(root, name)
        except HelperError as e:
            answers.add((e.code, e.detail, str(e.answer())))
    assert len(answers) == 1
