import os

from rootless_groot.store.layers import remove_tree


def test_removes_trees_deeper_than_path_max_and_recursion_limit(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(3000):  # 3000 levels of "dd/" is longer than PATH_MAX
        os.mkdir("dd", dir_fd=fd)
        nxt = os.open("dd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
    os.close(fd)
    remove_tree(str(root))
    assert not root.exists()


def test_read_only_dirs_and_missing_paths(tmp_path):
    d = tmp_path / "ro"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("x")
    os.chmod(d / "sub", 0o555)
    try:
        remove_tree(str(d))
    finally:
        if (d / "sub").exists():
            os.chmod(d / "sub", 0o755)
    assert not d.exists()
    remove_tree(str(tmp_path / "never-existed"))  # nothing to do is fine


def test_symlinks_are_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "to-dir").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "keep")
    os.mkfifo(tree / "fifo")
    remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep").read_text() == "keep"
