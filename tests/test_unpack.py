"""unpack_layer and unpack_blob: confinement, rejections, whiteouts, metadata, digests."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from hostile_tar import nofile_limit
from rootless_groot.errors import LayerError
from rootless_groot.layers.pipeline import unpack_blob
from rootless_groot.layers.unpack import UnpackResult, unpack_layer

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent
MTIME = 1_600_000_000


# -- building tars -----------------------------------------------------------------------

def entry(name, kind=tarfile.REGTYPE, data=b"", *, mode=None, uid=0, gid=0, link="", mtime=MTIME,
          pax=None, dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.uid, info.gid = uid, gid
    info.linkname = link
    info.mtime = mtime
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = dict(pax)
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info, data


def d(name, **kw):
    return entry(name, tarfile.DIRTYPE, **kw)


def sym(name, target, **kw):
    return entry(name, tarfile.SYMTYPE, link=target, **kw)


def hard(name, target, **kw):
    return entry(name, tarfile.LNKTYPE, link=target, **kw)


def tar_bytes(*entries, fmt=tarfile.PAX_FORMAT, trailing=b""):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue() + trailing


@pytest.fixture
def box(tmp_path):
    """tmp/box/{dest, outside}: outside holds a victim file and must never change."""
    root = tmp_path / "box"
    dest = root / "dest"
    outside = root / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"victim")
    os.chmod(outside, 0o750)
    return root


def snapshot(path: Path):
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns,
                                        p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    st = path.lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


def unpack(data: bytes, dest: Path, **kw) -> UnpackResult:
    kw.setdefault("chown", ROOT)
    return unpack_layer(io.BytesIO(data), str(dest), what="layer test", **kw)


def can_mknod_whiteout(tmp_path) -> bool:
    try:
        os.mknod(tmp_path / "probe", stat.S_IFCHR, os.makedev(0, 0))
    except PermissionError:
        return False
    os.unlink(tmp_path / "probe")
    return True


# -- rejections ---------------------------------------------------------------------------

BAD_LAYERS = {
    "absolute": [entry("/etc/passwd", data=b"x")],
    "absolute dir": [d("/tmp/x")],
    "dotdot": [entry("../outside/secret", data=b"x")],
    "inner dotdot": [d("a"), entry("a/../../outside/pwned", data=b"x")],
    "trailing dotdot": [d("a/..")],
    "dotslash dotdot": [entry("./../pwned", data=b"x")],
    "nul in name": [entry("a", data=b"x", pax={"path": "ok\x00/../../outside/pwned"})],
    "whiteout dot": [entry(".wh..")],
    "whiteout dotdot": [d("a"), entry("a/.wh...")],
    "whiteout empty": [entry(".wh.")],
    "hardlink absolute": [hard("stolen", "/outside/secret")],
    "hardlink dotdot": [hard("stolen", "../outside/secret")],
    "hardlink inner dotdot": [d("a"), hard("a/stolen", "a/../../outside/secret")],
    "hardlink missing": [hard("stolen", "nothere")],
    "hardlink nul": [entry("f", data=b"x"), hard("h", "f", pax={"linkpath": "f\x00x"})],
    "root not a dir": [entry(".", data=b"x")],
}


@pytest.mark.parametrize("case", sorted(BAD_LAYERS))
def test_rejects_hostile_layer(box, case):
    before = snapshot(box / "outside")
    with pytest.raises(LayerError) as err:
        unpack(tar_bytes(*BAD_LAYERS[case]), box / "dest")
    assert "layer test" in str(err.value)
    assert "entry" in str(err.value)
    assert sorted(os.listdir(box)) == ["dest", "outside"]
    assert snapshot(box / "outside") == before


def test_rejection_names_the_entry(box):
    with pytest.raises(LayerError, match=r"layer test: entry '\.\./evil'"):
        unpack(tar_bytes(entry("ok", data=b"1"), entry("../evil")), box / "dest")


def test_corrupt_header_mid_stream_is_an_error(box):
    data = bytearray(tar_bytes(entry("a", data=b"1" * 600), entry("b", data=b"2")))
    data[1536 + 148:1536 + 156] = b"9999999\0"  # break the second header's checksum
    with pytest.raises(LayerError, match="corrupt tar header"):
        unpack(bytes(data), box / "dest")


def test_truncated_file_data_is_an_error(box):
    data = tar_bytes(entry("a", data=b"1" * 5000))
    with pytest.raises(LayerError):
        unpack(data[:2048], box / "dest")


def test_garbage_is_not_a_tar(box):
    with pytest.raises(LayerError, match="not a tar"):
        unpack(b"hello, this is not a tar archive" * 40, box / "dest")


def test_empty_stream_is_an_empty_layer(box):
    result = unpack(b"", box / "dest")
    assert result.entries == 0
    assert result.diff_id == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert os.listdir(box / "dest") == []


# -- confinement through symlinks ------------------------------------------------------------

@pytest.mark.parametrize("target", ["ABS", "../outside", "../../outside", "/", "../../../.."])
def test_symlink_parent_cannot_redirect_writes(box, target):
    target = str(box / "outside") if target == "ABS" else target
    layer = tar_bytes(sym("evil", target), entry("evil/pwned", data=b"gotcha"),
                      d("evil/newdir"), sym("evil/newlink", "x"))
    before = snapshot(box / "outside")
    try:
        unpack(layer, box / "dest")
    except LayerError:
        pass  # refusing is fine too; escaping is not
    assert snapshot(box / "outside") == before
    assert sorted(os.listdir(box)) == ["dest", "outside"]


def test_symlink_to_root_resolves_inside_dest(box):
    dest = box / "dest"
    unpack(tar_bytes(sym("evil", "/"), entry("evil/pwned", data=b"in")), dest)
    assert (dest / "pwned").read_bytes() == b"in"


def test_relative_symlink_is_resolved_inside_dest(box):
    dest = box / "dest"
    layer = tar_bytes(d("outside"), d("a"), sym("a/evil", "../../../outside"),
                      entry("a/evil/pwned", data=b"in"))
    before = snapshot(box / "outside")
    unpack(layer, dest)
    assert (dest / "outside" / "pwned").read_bytes() == b"in"
    assert snapshot(box / "outside") == before


def test_symlink_chain_escape(box):
    dest = box / "dest"
    layer = tar_bytes(sym("a", "b/c"), d("b"), sym("b/c", "../../../outside"),
                      entry("a/pwned", data=b"x"))
    before = snapshot(box / "outside")
    try:
        unpack(layer, dest)
    except LayerError:
        pass
    assert snapshot(box / "outside") == before


def test_hardlink_through_symlink_cannot_reach_outside(box):
    layer = tar_bytes(sym("evil", str(box / "outside")), hard("stolen", "evil/secret"))
    before = snapshot(box / "outside")
    with pytest.raises(LayerError, match="not in this layer"):
        unpack(layer, box / "dest")
    assert snapshot(box / "outside") == before
    assert (box / "outside" / "secret").stat().st_nlink == 1


def test_file_replacing_a_symlink_does_not_write_through_it(box):
    dest = box / "dest"
    layer = tar_bytes(sym("f", str(box / "outside" / "secret")), entry("f", data=b"new"),
                      sym("dd", str(box / "outside")), d("dd", mode=0o777))
    before = snapshot(box / "outside")
    unpack(layer, dest)
    assert snapshot(box / "outside") == before
    assert (dest / "f").read_bytes() == b"new" and not (dest / "f").is_symlink()
    assert (dest / "dd").is_dir() and not (dest / "dd").is_symlink()
    assert stat.S_IMODE((dest / "dd").lstat().st_mode) == 0o777


def test_directory_metadata_pass_stays_inside(box):
    """A directory entry later replaced by a symlink to outside: the final chmod must not follow it."""
    layer = tar_bytes(d("x", mode=0o777), sym("x", str(box / "outside")))
    before = snapshot(box / "outside")
    unpack(layer, box / "dest")
    assert snapshot(box / "outside") == before
    assert (box / "dest" / "x").is_symlink()


# -- entry types and metadata ----------------------------------------------------------------------

def test_regular_files_dirs_and_size(box):
    dest = box / "dest"
    big = os.urandom(3 * (1 << 20) + 17)
    result = unpack(tar_bytes(d("./"), d("./usr/bin"), entry("./usr/bin/tool", data=big),
                              entry("usr/empty"), entry("implicit/parent/file", data=b"abc")), dest)
    assert (dest / "usr/bin/tool").read_bytes() == big
    assert (dest / "usr/empty").read_bytes() == b""
    assert (dest / "implicit/parent/file").read_bytes() == b"abc"
    assert stat.S_IMODE((dest / "implicit").stat().st_mode) == 0o755
    assert result.size == len(big) + 3
    assert result.entries == 5
    assert result.skipped == 0


@pytest.mark.skipif(not ROOT, reason="setting arbitrary owners needs root")
def test_owners_and_special_modes_as_root(box):
    dest = box / "dest"
    layer = tar_bytes(
        d(".", mode=0o755, uid=0, gid=0),
        entry("suid", data=b"x", mode=0o4755, uid=1234, gid=5678),
        entry("sgid", data=b"x", mode=0o2711, uid=42, gid=43),
        d("tmp", mode=0o1777, uid=7, gid=8),
        d("sgdir", mode=0o2775, uid=1, gid=2),
        sym("link", "suid", uid=11, gid=12),
    )
    unpack(layer, dest, chown=True)
    st = (dest / "suid").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o4755)
    st = (dest / "sgid").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (42, 43, 0o2711)
    st = (dest / "tmp").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 8, 0o1777)
    assert stat.S_IMODE((dest / "sgdir").stat().st_mode) == 0o2775
    st = (dest / "link").lstat()
    assert (st.st_uid, st.st_gid) == (11, 12)


@pytest.mark.skipif(not ROOT, reason="setting arbitrary owners needs root")
def test_id_translate(box):
    dest = box / "dest"
    unpack(tar_bytes(entry("f", data=b"x", uid=5, gid=6)), dest, chown=True,
           id_translate=lambda u, g: (u + 100000, g + 200000))
    st = (dest / "f").stat()
    assert (st.st_uid, st.st_gid) == (100005, 200006)


def test_modes_without_chown(box):
    dest = box / "dest"
    layer = tar_bytes(entry("suid", data=b"x", mode=0o4755), entry("none", data=b"x", mode=0),
                      d("ro", mode=0o555), entry("ro/child", data=b"c"), d("sticky", mode=0o1777))
    unpack(layer, dest, chown=False)
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "none").stat().st_mode) == 0
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro/child").read_bytes() == b"c"
    assert stat.S_IMODE((dest / "sticky").stat().st_mode) == 0o1777
    os.chmod(dest / "ro", 0o755)  # let tmp_path cleanup work as non-root


def test_mtimes_preserved_with_nanoseconds(box):
    dest = box / "dest"
    ns_pax = {"mtime": "1700000000.123456789"}
    layer = tar_bytes(
        d(".", mtime=1_500_000_000),
        d("dir", pax=ns_pax),
        d("dir/sub", mtime=1_400_000_000),
        entry("dir/sub/file", data=b"x", mtime=1_300_000_000),
        entry("dir/file", data=b"x", pax=ns_pax),
        sym("dir/link", "file", mtime=1_200_000_000),
    )
    unpack(layer, dest)
    assert (dest / "dir").stat().st_mtime_ns == 1_700_000_000_123_456_789
    assert (dest / "dir/file").stat().st_mtime_ns == 1_700_000_000_123_456_789
    assert (dest / "dir/sub").stat().st_mtime_ns == 1_400_000_000 * 10**9
    assert (dest / "dir/sub/file").stat().st_mtime_ns == 1_300_000_000 * 10**9
    assert (dest / "dir/link").lstat().st_mtime_ns == 1_200_000_000 * 10**9
    assert dest.stat().st_mtime_ns == 1_500_000_000 * 10**9


def test_hardlinks_share_inode_and_link_symlinks_themselves(box):
    dest = box / "dest"
    layer = tar_bytes(d("a"), entry("a/f", data=b"data"), hard("b", "a/f"), hard("./c", "./a/f"),
                      sym("s", "/etc/passwd"), hard("s2", "s"))
    unpack(layer, dest)
    ino = (dest / "a/f").stat().st_ino
    assert (dest / "b").stat().st_ino == ino == (dest / "c").stat().st_ino
    assert (dest / "a/f").stat().st_nlink == 3
    assert (dest / "s2").is_symlink()
    assert (dest / "s2").lstat().st_ino == (dest / "s").lstat().st_ino
    assert os.readlink(dest / "s2") == "/etc/passwd"


def test_hardlink_to_directory_is_rejected(box):
    with pytest.raises(LayerError):
        unpack(tar_bytes(d("dir"), hard("h", "dir")), box / "dest")


def test_fifo_and_devices(box):
    dest = box / "dest"
    layer = tar_bytes(entry("fifo", tarfile.FIFOTYPE, mode=0o640),
                      entry("null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
                      entry("sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0)))
    result = unpack(layer, dest)
    st = (dest / "fifo").lstat()
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert not (dest / "null").exists() and not (dest / "sda").exists()
    assert result.skipped == 2


@pytest.mark.skipif(not ROOT, reason="device nodes need root")
def test_devices_when_allowed(box):
    dest = box / "dest"
    result = unpack(tar_bytes(entry("null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))), dest,
                    allow_devices=True)
    st = (dest / "null").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert result.skipped == 0


def test_later_entry_replaces_earlier(box):
    dest = box / "dest"
    layer = tar_bytes(
        entry("f", data=b"old"), entry("f", data=b"new"),
        d("dir", mode=0o700), entry("dir/keep", data=b"k"), d("dir", mode=0o750),
        d("gone"), entry("gone/child", data=b"c"), entry("gone", data=b"now a file"),
        entry("link"), sym("link", "f"),
        sym("x", "f"), d("x"), entry("x/inside", data=b"i"),
    )
    unpack(layer, dest)
    assert (dest / "f").read_bytes() == b"new"
    assert (dest / "dir/keep").read_bytes() == b"k"
    assert stat.S_IMODE((dest / "dir").stat().st_mode) == 0o750
    assert (dest / "gone").read_bytes() == b"now a file"
    assert os.readlink(dest / "link") == "f"
    assert (dest / "x/inside").read_bytes() == b"i"
    assert (dest / "f").read_bytes() == b"new"


def test_cached_parent_invalidated_after_replacement(box):
    dest = box / "dest"
    layer = tar_bytes(d("real"), d("other"), sym("p", "real"), entry("p/one", data=b"1"),
                      sym("p", "other"), entry("p/two", data=b"2"))
    unpack(layer, dest)
    assert sorted(os.listdir(dest / "real")) == ["one"]
    assert sorted(os.listdir(dest / "other")) == ["two"]


@pytest.fixture
def low_fd_limit():
    """Run with at most 256 open files: the parent-fd cache must stay bounded."""
    with nofile_limit(256):
        yield


def test_many_directories_do_not_exhaust_fds(box, low_fd_limit):
    dest = box / "dest"
    entries = [entry(f"d{i}/f", data=b"x") for i in range(600)]
    result = unpack(tar_bytes(*entries), dest)
    assert result.entries == 600
    assert len(os.listdir(dest)) == 600


def test_deep_paths(box, low_fd_limit):
    dest = box / "dest"
    name = "/".join(["d"] * 1500) + "/f"  # deeper than Python's recursion limit
    try:
        unpack(tar_bytes(entry(name, data=b"deep")), dest)
        assert (dest / name).read_bytes() == b"deep"
    finally:  # shutil.rmtree (pytest's cleanup) recurses once per level
        subprocess.run(["rm", "-rf", str(dest / "d")], check=True)


def test_replacing_a_deep_tree_works_with_few_fds(box, low_fd_limit):
    dest = box / "dest"
    name = "/".join(["d"] * 1500) + "/f"  # deeper than the fd limit and the recursion limit
    try:
        unpack(tar_bytes(entry(name, data=b"deep"), entry("d", data=b"file now")), dest)
        assert (dest / "d").read_bytes() == b"file now"
    finally:
        subprocess.run(["rm", "-rf", str(dest / "d")], check=True)


def test_non_utf8_names_round_trip(box):
    dest = box / "dest"
    name = b"caf\xe9-latin1".decode("utf-8", "surrogateescape")
    unpack(tar_bytes(entry(name, data=b"x"), fmt=tarfile.GNU_FORMAT), dest)
    assert os.listdir(os.fsencode(dest)) == [b"caf\xe9-latin1"]


def test_gnu_sparse_file(box, tmp_path):
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.seek(8 << 20)
        f.write(b"tail")
        f.seek(0)
        f.write(b"head")
    archive = tmp_path / "sparse.tar"
    assert shutil.which("tar"), "GNU tar is needed to write a sparse archive (make test installs it)"
    subprocess.run(["tar", "--sparse", "-C", str(tmp_path), "-cf", str(archive), "sparse"], check=True)
    dest = box / "dest"
    unpack(archive.read_bytes(), dest)
    data = (dest / "sparse").read_bytes()
    assert len(data) == (8 << 20) + 4 and data.startswith(b"head") and data.endswith(b"tail")
    assert data.count(0) == len(data) - 8


# -- whiteouts and xattrs ---------------------------------------------------------------------------

def test_whiteouts_and_opaque_dirs(box):
    if not can_mknod_whiteout(box):
        pytest.skip("mknod(0:0) not permitted here (not root, no user namespace)")
    dest = box / "dest"
    layer = tar_bytes(
        d("etc"), entry("etc/.wh.motd"),
        d("var"), d("var/cache"), entry("var/cache/.wh..wh..opq"), entry("var/cache/new", data=b"n"),
        d("usr"), entry("usr/old", data=b"o"), d("usr/olddir"), entry("usr/olddir/x", data=b"x"),
        entry("usr/.wh.old"), entry("usr/.wh.olddir"),
        entry("deep/missing/.wh.thing"),
        entry(".wh..wh.plnk"), entry("usr/.wh..wh.aufs"),
        entry(".wh..hidden"),
    )
    unpack(layer, dest)
    for path in ("etc/motd", "usr/old", "usr/olddir", "deep/missing/thing", ".hidden"):
        st = (dest / path).lstat()
        assert stat.S_ISCHR(st.st_mode), path
        assert st.st_rdev == 0, path
    assert os.getxattr(dest / "var/cache", "user.overlay.opaque") == b"y"
    assert (dest / "var/cache/new").read_bytes() == b"n"
    assert not (dest / ".wh..wh.plnk").exists() and not (dest / "usr/.wh..wh.aufs").exists()
    assert sorted(os.listdir(dest / "usr")) == ["old", "olddir"]


def test_xattr_filtering(box):
    dest = box / "dest"
    cap = bytes.fromhex("0100000201040000000000000000000000000000")  # v2, cap_net_bind_service
    pax = {
        "SCHILY.xattr.user.keep": "kept",
        "SCHILY.xattr.user.binary": b"\xff\x00\xfe".decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.overlay.redirect": "/etc",
        "SCHILY.xattr.user.overlay.opaque": "y",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.trusted.other": "t",
        "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
    }
    dirpax = {k: v for k, v in pax.items() if "capability" not in k}
    layer = tar_bytes(entry("f", data=b"x", pax=pax), d("dir", pax=dirpax),
                      sym("link", "f", pax={"SCHILY.xattr.user.keep": "no"}))
    unpack(layer, dest)
    for path in ("f", "dir"):
        names = set(os.listxattr(dest / path))
        assert "user.keep" in names, path
        assert os.getxattr(dest / path, "user.keep") == b"kept"
        assert os.getxattr(dest / path, "user.binary") == b"\xff\x00\xfe"
        assert not any(".overlay." in n for n in names), names
        assert not any(n.startswith("trusted.") for n in names), names
        assert "security.selinux" not in names or os.getxattr(dest / path, "security.selinux") != \
            b"system_u:object_r:bin_t:s0"
    if ROOT:
        assert os.getxattr(dest / "f", "security.capability") == cap
    assert "security.capability" not in os.listxattr(dest / "dir")


def test_capability_survives_chown(box):
    if not ROOT:
        pytest.skip("setting security.capability needs root")
    dest = box / "dest"
    cap = bytes.fromhex("0100000201040000000000000000000000000000")
    pax = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    unpack(tar_bytes(entry("ping", data=b"x", uid=3, gid=3, mode=0o755, pax=pax)), dest, chown=True)
    assert os.getxattr(dest / "ping", "security.capability") == cap


# -- user namespace: squashing unmapped owners -------------------------------------------------------

def test_unmapped_owners_squashed_in_user_namespace(tmp_path):
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    assert probe.returncode == 0, f"this test needs unprivileged user namespaces (util-linux unshare): {probe.stderr!r}"
    archive = tmp_path / "layer.tar"
    archive.write_bytes(tar_bytes(entry("mapped", data=b"x", uid=0, gid=0),
                                  entry("unmapped", data=b"x", uid=1000, gid=1000, mode=0o4755),
                                  entry("half", data=b"x", uid=0, gid=999),
                                  entry("again", data=b"x", uid=1000, gid=0),
                                  entry(".wh.gone")))
    dest = tmp_path / "dest"
    dest.mkdir()
    script = textwrap.dedent(f"""
        import sys, os, json
        sys.path.insert(0, {str(REPO)!r})
        from rootless_groot.layers.unpack import unpack_layer
        with open({str(archive)!r}, "rb") as f:
            r = unpack_layer(f, {str(dest)!r}, chown=True)
        print(json.dumps(r.__dict__))
    """)
    out = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json
    result = json.loads(out.stdout)
    assert result["squashed_owners"] == 3
    assert result["stripped_setid"] == 1
    me = (os.geteuid(), os.getegid())
    for name in ("mapped", "unmapped", "half", "again"):
        st = (dest / name).stat()
        assert (st.st_uid, st.st_gid) == me, name
    assert stat.S_IMODE((dest / "unmapped").stat().st_mode) == 0o755  # no setuid for the store owner
    st = (dest / "gone").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# -- diffID and the pipeline -----------------------------------------------------------------------

def test_diff_id_covers_trailing_zero_blocks(box):
    data = tar_bytes(entry("f", data=b"x"), trailing=b"\0" * 7000)
    result = unpack(data, box / "dest")
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


def test_diff_id_covers_bytes_after_end_marker(box):
    data = tar_bytes(entry("f", data=b"x"), trailing=b"junk after the end-of-archive marker")
    result = unpack(data, box / "dest")
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_args(tar: bytes, blob: bytes):
    return dict(digest=digest(blob), size=len(blob), diff_id=digest(tar))


@pytest.mark.parametrize("compression", ["plain", "gzip", "zstd"])
def test_pipeline_happy_path(box, compression):
    tar = tar_bytes(d("dir"), entry("dir/f", data=os.urandom(100_000)))
    if compression == "gzip":
        blob = gzip.compress(tar)
    elif compression == "zstd":
        import zstandard
        blob = zstandard.ZstdCompressor().compress(tar)
    else:
        blob = tar
    result = unpack_blob(io.BytesIO(blob), str(box / "dest"), chown=ROOT, what="layer sha256:abcd",
                         **blob_args(tar, blob))
    assert result.diff_id == digest(tar)
    assert result.size == 100_000


def test_pipeline_sha512_diff_id(box):
    tar = tar_bytes(entry("f", data=b"x"))
    blob = gzip.compress(tar)
    args = blob_args(tar, blob)
    args["diff_id"] = "sha512:" + hashlib.sha512(tar).hexdigest()
    unpack_blob(io.BytesIO(blob), str(box / "dest"), chown=ROOT, what="layer L", **args)
    args["diff_id"] = "sha512:" + "0" * 128
    shutil.rmtree(box / "dest")
    (box / "dest").mkdir()
    with pytest.raises(LayerError, match="layer L: diffID"):
        unpack_blob(io.BytesIO(blob), str(box / "dest"), chown=ROOT, what="layer L", **args)


@pytest.mark.parametrize("breakage", ["digest", "size_short", "size_long", "diff_id", "junk_after_gzip",
                                      "malformed_digest", "malformed_diff_id"])
def test_pipeline_mismatches(box, breakage):
    tar = tar_bytes(entry("f", data=b"hello" * 1000))
    blob = gzip.compress(tar)
    args = blob_args(tar, blob)
    if breakage == "digest":
        args["digest"] = digest(b"other")
    elif breakage == "size_short":
        args["size"] = len(blob) - 1
    elif breakage == "size_long":
        args["size"] = len(blob) + 1
    elif breakage == "diff_id":
        args["diff_id"] = digest(b"other")
    elif breakage == "junk_after_gzip":
        blob += b"junk"
    elif breakage == "malformed_digest":
        args["digest"] = "sha256:XYZ"
    elif breakage == "malformed_diff_id":
        args["diff_id"] = "md5:abc"
    with pytest.raises(LayerError, match="layer sha256:feed"):
        unpack_blob(io.BytesIO(blob), str(box / "dest"), chown=ROOT, what="layer sha256:feed", **args)


def test_pipeline_hostile_entry_names_the_layer(box):
    tar = tar_bytes(entry("../x", data=b"x"))
    blob = gzip.compress(tar)
    with pytest.raises(LayerError, match=r"layer sha256:beef: entry '\.\./x'"):
        unpack_blob(io.BytesIO(blob), str(box / "dest"), what="layer sha256:beef", **blob_args(tar, blob))


def test_memory_stays_bounded(box):
    import tracemalloc

    tar_path = box / "big.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("big")
        info.size = 48 << 20
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
        for i in range(2000):
            tf.addfile(tarfile.TarInfo(f"small/{i}"), io.BytesIO(b""))
    blob = gzip.compress(tar_path.read_bytes(), compresslevel=1)
    tar_path.unlink()
    tracemalloc.start()
    try:
        unpack_blob(io.BytesIO(blob), str(box / "dest"), chown=ROOT, what="layer big",
                    digest=digest(blob), size=len(blob), diff_id=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert (box / "dest/big").stat().st_size == 48 << 20
