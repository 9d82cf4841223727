"""Issue 11: the messages that name a cause and a remedy (fake /proc trees for the kernels we
cannot switch to here; the no-userns case runs for real in integration/test_rough_edges.py)."""
import errno
import os

import pytest

from rootless_groot import hints
from rootless_groot.config import build
from rootless_groot.errors import UsageError


def fake_proc(tmp_path, **files):
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_userns_causes(tmp_path):
    host = {"self__uid_map": "0 0 4294967295\n", "self__status": "Seccomp:\t0\n",
            "sys__user__max_user_namespaces": "15000\n"}
    proc = fake_proc(tmp_path / "a", **{**host, "sys__user__max_user_namespaces": "0\n"})
    assert "user.max_user_namespaces=0" in hints.userns_problem(errno.ENOSPC, proc)
    proc = fake_proc(tmp_path / "b", **{**host, "self__uid_map": "1001 1001 1\n"})
    message = hints.userns_problem(errno.ENOSPC, proc)
    assert "sandbox" in message and "bwrap --disable-userns" in message
    proc = fake_proc(tmp_path / "c", **host, sys__kernel__apparmor_restrict_unprivileged_userns="1\n")
    message = hints.userns_problem(errno.EPERM, proc)
    assert "kernel.apparmor_restrict_unprivileged_userns=1" in message and "make install-apparmor" in message
    proc = fake_proc(tmp_path / "d", **{**host, "self__status": "Seccomp:\t2\n"})
    assert "seccomp" in hints.userns_problem(errno.EPERM, proc)
    proc = fake_proc(tmp_path / "e", **host, sys__kernel__unprivileged_userns_clone="0\n")
    assert "kernel.unprivileged_userns_clone=1" in hints.userns_problem(errno.EPERM, proc)


def test_apparmor_blocks_only_unconfined(tmp_path):
    restricted = {"sys__kernel__apparmor_restrict_unprivileged_userns": "1\n"}
    assert hints.apparmor_blocks_us(fake_proc(tmp_path / "a", **restricted, self__attr__current="unconfined\n"))
    assert not hints.apparmor_blocks_us(fake_proc(tmp_path / "b", **restricted,
                                                  self__attr__current="rootless-groot (unconfined)\n"))
    assert not hints.apparmor_blocks_us(fake_proc(tmp_path / "c", self__attr__current="unconfined\n"))


def test_store_problems(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    assert hints.store_problem(str(f)).startswith(f"--store {f} is a file, not a directory")
    assert f"{f} is a file" in hints.store_problem(str(f / "sub"))
    assert hints.store_problem(str(tmp_path / "new" / "store")) is None
    if os.geteuid() != 0:
        assert "belongs to root" in hints.store_problem("/")


def test_reference_hints(tmp_path):
    assert hints.tarball_hint("debian:bookworm", str(tmp_path / "debian:bookworm")) == \
        "; for a registry image, use docker:///debian:bookworm"
    assert hints.tarball_hint("127.0.0.1:5000/x/y:1", str(tmp_path / "nope")) == \
        "; for a registry image, use docker://127.0.0.1:5000/x/y:1"
    (tmp_path / "lay").mkdir()
    (tmp_path / "lay" / "oci-layout").write_text("{}")
    assert hints.tarball_hint("lay", str(tmp_path / "lay")) == f": it is an OCI image layout, use oci://{tmp_path / 'lay'}"
    assert hints.tarball_hint("./x.tar", str(tmp_path / "x.tar")) == ""


def test_yaml_error_has_its_line_and_log_level_is_checked(tmp_path):
    bad = tmp_path / "c.yml"
    bad.write_text("store: /x\ncreate:\n  with_clean: [true\n")
    with pytest.raises(UsageError, match=r"line 4, column 1"):
        build(str(bad), {})
    with pytest.raises(UsageError, match="invalid log level `verbose`"):
        build(None, {"log_level": "verbose"})
    assert build(None, {"log_level": "DEBUG"}).log_level == "DEBUG"
