"""The overlay work directory takes GrootFS's name (``workdir``, which Garden-facing tooling and
GrootFS's suite read in create's mount JSON); images made by older versions keep ``work``."""
from rootless_groot.store.images import IMAGE_SUBDIRS, overlay_workdir


def test_new_images_use_grootfs_name(tmp_path):
    assert "workdir" in IMAGE_SUBDIRS and "work" not in IMAGE_SUBDIRS
    (tmp_path / "workdir").mkdir()
    assert overlay_workdir(str(tmp_path)) == str(tmp_path / "workdir")


def test_images_of_older_versions_keep_their_work_dir(tmp_path):
    (tmp_path / "work").mkdir()
    assert overlay_workdir(str(tmp_path)) == str(tmp_path / "work")
