"""A corpus of hostile layers (CVE reproducers, peers' breakout tests, header oddities, bombs).

Every case must end in success or one clean LayerError naming the layer (never another
exception), must leave everything outside the layer untouched, and must cost little: the
inputs are sized so that a quadratic path (depth x hops, holes written as zeros, a PAX regex
that backtracks) would take minutes; a SIGALRM bound per case turns such a hang into a failure.
The whole corpus runs with RLIMIT_NOFILE at 1024, the common default.
"""
from __future__ import annotations

import gc
import gzip
import io
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from hostile_tar import (base256, end, fds_under, gnu_long, header, member, nofile_limit, pad, pax, pax_record,
                         tar)
from rootless_groot.errors import LayerError, QuotaError
from rootless_groot.layers.pipeline import unpack_blob
from rootless_groot.layers.unpack import MAX_DEPTH, UnpackResult, unpack_layer

ROOT = os.geteuid() == 0
CASE_BOUND = 60  # seconds: only a hang guard, far above what any case takes


def p(name: str, data: bytes = b"", **kw) -> bytes:
    """A member whose name may be long (a PAX path record when it does not fit ustar)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) < 100:
        return member(raw, data, **kw)
    records = {"path": name}
    if kw.get("link") and len(kw["link"]) >= 100:
        records["linkpath"] = kw.pop("link")
    return pax(records) + member("placeholder", data, **kw)


def d(name: str, **kw) -> bytes:
    return p(name, type=b"5", mode=kw.pop("mode", 0o755), **kw)


def sym(name: str, target: str, **kw) -> bytes:
    if len(target.encode()) >= 100:
        return pax({"path": name, "linkpath": target}) + member("placeholder", type=b"2", **kw)
    return p(name, type=b"2", link=target, **kw)


def hard(name: str, target: str, **kw) -> bytes:
    return p(name, type=b"1", link=target, **kw)


def gz(data: bytes, level: int = 1) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


_MIB_OF_ZEROS_GZ = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)


def zeros_gz(mib: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """gzip members: ``before``, ``mib`` MiB of zeros (1 kB each, so cheap to build), ``after``."""
    return gz(before) + _MIB_OF_ZEROS_GZ * mib + gz(after)


def sparse01(name: str, realsize: int, regions: list[tuple[int, int]], *, stored: int | None = None,
             raw_map: str | None = None) -> bytes:
    data = b"".join(b"D" * n for _, n in regions)
    records = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": name,
               "GNU.sparse.realsize": str(realsize),
               "GNU.sparse.numblocks": str(len(regions)),
               "GNU.sparse.map": raw_map if raw_map is not None else ",".join(f"{o},{n}" for o, n in regions)}
    return pax(records) + header("GNUSparseFile.0/" + name, size=len(data) if stored is None else stored) + pad(data)


def sparse10(name: str, realsize: int, map_text: bytes, data: bytes = b"") -> bytes:
    body = pad(map_text) + data
    records = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
               "GNU.sparse.realsize": str(realsize)}
    return pax(records) + header("GNUSparseFile.0/" + name, size=len(body)) + pad(body)


def old_gnu_sparse(name: str, realsize: int, extension_blocks: int) -> bytes:
    """An old GNU 'S' header whose map goes on in ``extension_blocks`` blocks (each a region)."""
    extra = bytes(386 - 345) + (b"%011o\0" % 0) + (b"%011o\0" % 1) + bytes(72) + b"\x01" + b"%011o\0" % realsize
    blocks = []
    for i in range(extension_blocks):
        block = bytearray(512)
        block[0:24] = b"%011o\0%011o\0" % (2 * i + 2, 1)
        block[504] = 1 if i + 1 < extension_blocks else 0
        blocks.append(bytes(block))
    return header(name, type=b"S", size=512, extra=extra) + b"".join(blocks) + b"D" * 512


DEEP = "/".join(["a"] * 1990)  # 3,979 bytes: fits PATH_MAX, almost MAX_DEPTH levels


def deep_through_symlinks() -> bytes:
    """The issue's 41-entry layer: 20 x (a 1,990-level tree, a symlink to its bottom)."""
    parts = [d(DEEP)]
    for i in range(20):
        parts.append(sym(f"l{i}", ("l%d/" % (i - 1) if i else "") + DEEP))
        parts.append(d(f"l{i}/{DEEP}"))
    return tar(*parts)


def symlink_hops() -> bytes:
    """40 chained symlinks, each to a long path through the previous one, used 200 times."""
    parts = [d("x/" + "/".join(["y"] * 40))]
    for i in range(40):
        parts.append(sym(f"s{i}", f"s{i - 1}/.." if i else "x"))
    parts += [p(f"s39/f{i}", b"z") for i in range(200)]
    return tar(*parts)


def self_loop_path() -> bytes:
    return tar(sym("s", "."), p("/".join(["s"] * 1500) + "/f", b"x"))


def many_replacements() -> bytes:
    """1,500 directories, then 1,500 overwrites of files: no per-removal scan of all dirs."""
    parts = [d(f"d{i}") for i in range(1500)]
    parts += [p("f", b"1")]
    parts += [p("f", b"2") for _ in range(1500)]
    return tar(*parts)


def redos_pax() -> bytes:
    # tarfile 3.11's "\d+ hdrcharset=" search backtracks quadratically over runs of digits.
    body = b"1" * ((1 << 20) - 600)
    return tar(header("PaxHeader", type=b"x", size=len(body)) + pad(body), member("f", b"x"))


def pax_chain(n: int) -> bytes:
    return tar(*[pax({"comment": "x"}) for _ in range(n)], member("f", b"x"))


def many_entries_deep_parent() -> bytes:
    """1,000 files in one directory 1,900 levels down: the parent resolves once, not per level."""
    base = "/".join(["p"] * 1900)
    return tar(d(base), *[p(f"{base}/f{i}", b"x") for i in range(1000)])


def implicit_deep_dirs() -> bytes:
    """3 new 1,000-level trees whose parents are all implicit (no directory entries)."""
    return tar(*[p(f"t{i}/" + "/".join(["q"] * 1000) + "/f", b"x") for i in range(3)])


def wide_then_whiteout() -> bytes:
    tree = [d("w")] + [p(f"w/{i}/{j}", b"x") for i in range(30) for j in range(30)]
    return tar(*tree, p(".wh.w"))


CASES: dict[str, tuple[str, object]] = {
    # -- escapes through names ----------------------------------------------------------
    "absolute path": ("error", lambda: tar(member("/outside/pwned", b"x"))),
    "dotdot path": ("error", lambda: tar(member("../outside/pwned", b"x"))),
    "inner dotdot": ("error", lambda: tar(d("a"), member("a/../../outside/pwned", b"x"))),
    "dotdot dir": ("error", lambda: tar(d("a/.."))),
    "dot slash dotdot": ("error", lambda: tar(member("./../pwned", b"x"))),
    "NUL in PAX path": ("error", lambda: tar(pax({"path": "ok\0/../../outside/pwned"}), member("a", b"x"))),
    "NUL in ustar name": ("ok", lambda: tar(member(b"ok\0/../../pwned", b"x"))),
    "empty name": ("error", lambda: tar(member(b"", b"x"))),
    "root as file": ("error", lambda: tar(member(".", b"x"))),
    "root dir entry": ("ok", lambda: tar(d("./"), d("."))),
    "name of 5000 bytes": ("error", lambda: tar(p("n" * 5000, b"x"))),
    "non-UTF-8 name": ("ok", lambda: tar(member(b"caf\xe9", b"x"))),
    "non-UTF-8 PAX path, BINARY": ("ok", lambda: tar(pax([("hdrcharset", "BINARY"), ("path", b"b\xff\xfe")]),
                                                     member("x", b"x"))),
    "non-UTF-8 PAX keyword": ("any", lambda: tar(pax([(b"\xff\xfe", "v")]), member("x", b"x"))),
    # -- escapes through symlinks ---------------------------------------------------------
    "symlink parent to ..": ("error", lambda: tar(sym("l", "../outside"), p("l/pwned", b"x"))),
    "symlink parent absolute": ("ok", lambda: tar(sym("l", "/outside"), d("l"), p("l/pwned", b"x"))),
    "symlink to root then up": ("any", lambda: tar(sym("r", "/"), p("r/../outside/pwned", b"x"))),
    "symlink chain escape": ("any", lambda: tar(d("a"), sym("a/b", "../.."), sym("c", "a/b/outside"),
                                                p("c/pwned", b"x"))),
    "symlink loop": ("error", lambda: tar(sym("a", "b"), sym("b", "a"), p("a/x", b"x"))),
    "file over symlink": ("ok", lambda: tar(sym("f", "../outside/secret"), p("f", b"pwned"))),
    "dir replaced by symlink": ("error", lambda: tar(d("a"), p("a/x", b"1"), sym("a", "../outside"),
                                                  p("a/pwned", b"x"))),
    "symlink replaced by dir": ("ok", lambda: tar(sym("a", "../outside"), d("a"), p("a/x", b"x"))),
    "symlink then whiteout through it": ("error", lambda: tar(sym("l", "../outside"), p("l/.wh.secret"))),
    "opaque marker through symlink": ("any", lambda: tar(sym("l", "/"), p("l/.wh..wh..opq"))),
    "symlink target of 5000 bytes": ("error", lambda: tar(sym("l", "t/" * 2500))),
    "symlink target with NUL": ("error", lambda: tar(pax({"path": "l", "linkpath": "a\0b"}),
                                                     member("l", type=b"2"))),
    "20,000 levels through symlinks": ("error", deep_through_symlinks),
    "40 symlink hops, 200 files": ("any", symlink_hops),
    "self symlink 1,500 times in a path": ("error", self_loop_path),
    "file where a parent should be": ("error", lambda: tar(p("a", b"x"), p("a/b", b"y"))),
    # -- hardlinks ----------------------------------------------------------------------
    "hardlink absolute": ("error", lambda: tar(hard("h", "/outside/secret"))),
    "hardlink dotdot": ("error", lambda: tar(hard("h", "../outside/secret"))),
    "hardlink through symlink dir": ("error", lambda: tar(sym("l", "../outside"), hard("h", "l/secret"))),
    "hardlink through symlink to root": ("error", lambda: tar(sym("l", "/"), hard("h", "l/../outside/secret"))),
    "hardlink to symlink to outside": ("ok", lambda: tar(sym("s", "/outside/secret"), hard("h", "s"),
                                                         p("h", b"pwned"))),
    "hardlink to directory": ("error", lambda: tar(d("dir"), hard("h", "dir"))),
    "hardlink to itself": ("ok", lambda: tar(p("f", b"x"), hard("f", "f"))),
    "hardlink to missing": ("error", lambda: tar(hard("h", "nothere"))),
    "hardlink to root": ("error", lambda: tar(hard("h", "."))),
    "hardlink replacing its own target's dir": ("error", lambda: tar(d("a"), p("a/f", b"x"), hard("a", "a/f"))),
    "hardlink chain then write": ("ok", lambda: tar(p("f", b"x"), hard("g", "f"), hard("h", "g"), p("g", b"new"))),
    "hardlink NUL target": ("error", lambda: tar(p("f", b"x"), pax({"linkpath": "f\0x"}), member("h", type=b"1"))),
    # -- whiteouts ------------------------------------------------------------------------
    "whiteout of ..": ("error", lambda: tar(p(".wh.."))),
    "whiteout of ... in dir": ("error", lambda: tar(d("a"), p("a/.wh..."))),
    "whiteout empty": ("error", lambda: tar(p(".wh."))),
    "whiteout of a wide tree": ("any", wide_then_whiteout),
    # -- special files --------------------------------------------------------------------
    "char device": ("ok", lambda: tar(member("null", type=b"3", devmajor=1, devminor=3, mode=0o666))),
    "block device": ("ok", lambda: tar(member("sda", type=b"4", devmajor=8, devminor=0))),
    "device with huge numbers": ("any", lambda: tar(member("dev", type=b"3", devmajor=base256(1 << 40, 8),
                                                           devminor=-1))),
    "fifo": ("ok", lambda: tar(member("pipe", type=b"6"))),
    "unknown type with data": ("ok", lambda: tar(member("z", b"data" * 100, type=b"Z"), member("after", b"x"))),
    "contiguous file type": ("ok", lambda: tar(member("c", b"data", type=b"7"))),
    "GNU volume header": ("ok", lambda: tar(member("vol", type=b"V"), member("after", b"x"))),
    # -- numbers ------------------------------------------------------------------------
    "base-256 huge size": ("error", lambda: tar(header("f", size=base256(1 << 80, 12)), b"x" * 512)),
    "base-256 negative size": ("error", lambda: tar(header("f", size=-1024), b"x" * 1024, member("g", b"y"))),
    "size field garbage": ("error", lambda: tar(header("f", size=b"zzzz"), member("g", b"y"))),
    "base-256 uid 2^40": ("error", lambda: tar(member("f", b"x", uid=1 << 40))),
    "negative uid": ("error", lambda: tar(member("f", b"x", uid=-5))),
    "base-256 huge mtime": ("error", lambda: tar(header("f", mtime=base256(1 << 80, 12), size=1), pad(b"x"))),
    "PAX mtime nan": ("error", lambda: tar(pax({"mtime": "nan"}), member("f", b"x"))),
    "PAX mtime 1e30": ("error", lambda: tar(pax({"mtime": "1e30"}), member("f", b"x"))),
    "PAX mtime -inf": ("error", lambda: tar(pax({"mtime": "-inf"}), member("f", b"x"))),
    "PAX atime garbage": ("error", lambda: tar(pax({"atime": "soon"}), member("f", b"x"))),
    "PAX mtime on dir nan": ("error", lambda: tar(pax({"mtime": "nan"}), member("d", type=b"5"))),
    "PAX mtime on symlink 1e30": ("error", lambda: tar(pax({"mtime": "1e30"}), member("s", type=b"2", link="t"))),
    "PAX size negative": ("error", lambda: tar(pax({"size": "-5"}), member("f", b"x"))),
    "PAX size huge": ("error", lambda: tar(pax({"size": "9" * 30}), member("f", b"x"))),
    "PAX uid garbage": ("error", lambda: tar(pax({"uid": "root"}), member("f", b"x"))),
    # -- extended headers ---------------------------------------------------------------
    "PAX record length garbage": ("error", lambda: tar(header("PaxHeader", type=b"x", size=10), pad(b"zz path=x\n"),
                                                       member("f", b"x"))),
    "PAX record length zero": ("error", lambda: tar(header("PaxHeader", type=b"x", size=9), pad(b"0 path=x\n"),
                                                    member("f", b"x"))),
    "PAX record past its header": ("error", lambda: tar(header("PaxHeader", type=b"x", size=10),
                                                        pad(b"99 path=x\n"), member("f", b"x"))),
    "PAX header declaring 64 MiB": ("error", lambda: tar(pax({"SCHILY.xattr.user.big": "v" * 4096},
                                                             size=64 << 20), member("f", b"x"))),
    "PAX header of 2 MiB": ("error", lambda: tar(pax({"SCHILY.xattr.user.big": "v" * (2 << 20)}),
                                                 member("f", b"x"))),
    "xattr of 900 KiB": ("error", lambda: tar(pax({"SCHILY.xattr.user.big": "v" * (900 << 10)}), member("f", b"x"))),
    "forged overlay xattrs": ("ok", lambda: tar(pax({"SCHILY.xattr.trusted.overlay.opaque": "y",
                                                     "SCHILY.xattr.user.overlay.redirect": "/etc"}),
                                                member("d", type=b"5", mode=0o755))),
    "PAX regex backtracking (CVE-2024-6232)": ("error", redos_pax),
    "1,000 PAX headers in a row": ("error", lambda: pax_chain(1000)),
    "global PAX header with path": ("any", lambda: tar(pax({"path": "../../outside/pwned"}, type=b"g"),
                                                       member("f", b"x"), member("g", b"y"))),
    "GNU long name of 2 MiB": ("error", lambda: tar(gnu_long("n" * (2 << 20)), member("f", b"x"))),
    "1,000 GNU long names in a row": ("error", lambda: tar(*[gnu_long(f"n{i}") for i in range(1000)],
                                                           member("f", b"x"))),
    "GNU long link escape": ("error", lambda: tar(gnu_long("../outside/secret", type=b"K"),
                                                  member("h", type=b"1", link="x"))),
    # -- sparse files -------------------------------------------------------------------
    "sparse 1 TiB": ("error", lambda: tar(sparse01("big", 1 << 40, [(0, 4), ((1 << 40) - 4, 4)]))),
    "sparse 8 GiB": ("ok", lambda: tar(sparse01("big", 8 << 30, [(0, 4), ((8 << 30) - 4, 4)]))),
    "sparse 40 x 6 GiB": ("error", lambda: tar(*[sparse01(f"s{i}", 6 << 30, [(0, 1)]) for i in range(45)])),
    "malformed GNU.sparse.map": ("error", lambda: tar(sparse01("s", 100, [(0, 4)], raw_map="0,4,x"))),
    "odd GNU.sparse.map": ("error", lambda: tar(sparse01("s", 100, [(0, 4)], raw_map="0,4,8"))),
    "sparse map overlapping": ("error", lambda: tar(sparse01("s", 100, [(0, 8), (4, 8)]))),
    "sparse map past realsize": ("error", lambda: tar(sparse01("s", 10, [(0, 4), (8, 8)]))),
    "sparse map with more data than stored": ("error", lambda: tar(sparse01("s", 1 << 20, [(0, 4096)], stored=512),
                                                                   member("next", b"x"))),
    "sparse 1.0 count huge": ("error", lambda: tar(sparse10("s", 100, b"99999999999\n0\n4\n"))),
    "sparse 1.0 garbage": ("error", lambda: tar(sparse10("s", 100, b"1\nzz\n4\n"))),
    "sparse 1.0 endless number": ("error", lambda: tar(sparse10("s", 100, b"1" * 100_000))),
    "sparse 1.0 good": ("ok", lambda: tar(sparse10("s", 3 << 30, b"1\n1024\n4\n", pad(b"DATA")))),
    "old GNU sparse: 5,000 extension blocks": ("error", lambda: tar(old_gnu_sparse("s", 1 << 20, 5000))),
    "old GNU sparse: 3 extension blocks": ("ok", lambda: tar(old_gnu_sparse("s", 1 << 20, 3))),
    "old GNU sparse bad extension": ("any", lambda: tar(header("s", type=b"S", size=512,
                                                               extra=b"\0" * 137 + b"\x01"),
                                                        b"\xff" * 512, b"x" * 512)),
    # -- stream shape -------------------------------------------------------------------
    "truncated header": ("error", lambda: member("f", b"x")[:300]),
    "truncated data": ("error", lambda: member("f", b"x" * 5000)[:2048]),
    "bad checksum mid-stream": ("error", lambda: tar(member("a", b"x"), header("b", checksum=1), member("c", b"y"))),
    "entries after the end marker": ("ok", lambda: tar(member("a", b"x")) + member("late", b"y") + end()),
    "garbage": ("error", lambda: os.urandom(4096)),
    "empty stream": ("ok", lambda: b""),
    "only zeros, 64 KiB": ("ok", lambda: b"\0" * 65536),
    "garbage gzip": ("error", lambda: b"\x1f\x8b\x08\x00" + b"\x55" * 4000),
    "truncated gzip": ("error", lambda: gz(tar(member("f", os.urandom(100_000))))[:20_000]),
    "gzip then garbage": ("error", lambda: gz(tar(member("f", b"x"))) + b"\x1f\x8bjunk"),
    "empty gzip members": ("ok", lambda: b"".join(gz(b"") for _ in range(2000)) + gz(tar(member("f", b"x")))),
    "zstd garbage": ("error", lambda: b"\x28\xb5\x2f\xfd" + b"\x00\xff" * 100),
    "zstd window too large": ("error", lambda: b"\x28\xb5\x2f\xfd\x00\xf8" + b"\x00" * 64),
    "gzip bomb: 2 GiB of zeros": ("error", lambda: zeros_gz(2048)),
    "gzip bomb: 2 GiB of zeros after the archive": ("error", lambda: zeros_gz(2048, tar(member("f", b"x")))),
    "gzip bomb: a 512 MiB file of zeros": ("ok", lambda: zeros_gz(512, header("zero", size=512 << 20), end())),
    "duplicate entries": ("ok", lambda: tar(p("f", b"1"), d("f"), p("f", b"2"), sym("f", "x"), p("f", b"3"))),
    "1,500 overwrites among 1,500 dirs": ("ok", many_replacements),
    "1,000 files 1,900 levels deep": ("ok", many_entries_deep_parent),
    "3 implicit 1,000-level trees": ("ok", implicit_deep_dirs),
}


def snapshot(path: Path) -> dict:
    out = {}
    for item in sorted(path.rglob("*")):
        st = item.lstat()
        out[str(item)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)
    return out


@pytest.fixture(scope="module")
def fd_limit_1024():
    with nofile_limit(1024):
        yield


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"case still running after {CASE_BOUND} s")


def run_case(blob: bytes, box: Path, **kw) -> UnpackResult | LayerError:
    dest = box / "dest"
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_BOUND)
    try:
        return unpack_blob(io.BytesIO(blob), str(dest), digest=None, size=None, diff_id=None,
                           chown=kw.pop("chown", ROOT), what="layer sha256:hostile", **kw)
    except LayerError as exc:
        return exc
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def box(tmp_path):
    box = tmp_path / "box"
    (box / "dest").mkdir(parents=True)
    (box / "outside").mkdir()
    (box / "outside" / "secret").write_bytes(b"victim")
    yield box
    subprocess.run(["rm", "-rf", str(box)], check=True)  # any depth


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_layer(case, box, fd_limit_1024):
    expect, build = CASES[case]
    blob = build()
    before = snapshot(box / "outside")
    gc.collect()  # sockets earlier tests left to the collector must not close mid-case
    fds_before = fds_under(box)
    outcome = run_case(blob, box)
    if isinstance(outcome, LayerError):
        message = str(outcome)
        assert expect in ("error", "any"), message
        assert message.startswith("layer sha256:hostile"), message
        assert "\n" not in message and len(message) < 600, message
    else:
        assert expect in ("ok", "any"), f"accepted: {outcome}"
    assert snapshot(box / "outside") == before
    assert sorted(os.listdir(box)) == ["dest", "outside"]
    assert fds_under(box) == fds_before == 0  # no fd leaked, whatever the outcome
    # and an ordinary layer unpacks afterwards
    fresh = box / "fresh"
    fresh.mkdir()
    unpack_blob(io.BytesIO(tar(member("etc/os-release", b"ok"))), str(fresh), digest=None, size=None,
                diff_id=None, chown=False, what="layer ok")
    assert (fresh / "etc" / "os-release").read_bytes() == b"ok"


def test_the_corpus_is_broad():
    assert len(CASES) >= 80


def test_sparse_holes_stay_holes(box):
    blob = tar(sparse01("big", 8 << 30, [(0, 4), ((8 << 30) - 4, 4)]), sparse10("s10", 3 << 30, b"1\n1024\n4\n",
                                                                              pad(b"DATA")))
    run_case(blob, box)
    big = (box / "dest" / "big")
    st = big.stat()
    assert st.st_size == 8 << 30 and st.st_blocks * 512 < 1 << 20
    with open(big, "rb") as f:
        assert f.read(4) == b"DDDD"
        f.seek((8 << 30) - 4)
        assert f.read() == b"DDDD"
    with open(box / "dest" / "s10", "rb") as f:
        f.seek(1024)
        assert f.read(4) == b"DATA"
    assert (box / "dest" / "s10").stat().st_size == 3 << 30


def test_zero_chunks_become_holes(box):
    data = b"head" + bytes(4 << 20) + b"tail"
    outcome = run_case(tar(member("f", data)), box)
    assert isinstance(outcome, UnpackResult) and outcome.size == len(data)
    path = box / "dest" / "f"
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 < 2 << 20


def test_caps_are_clear_errors(box):
    cases = {
        "sparse file of 1099511627776 bytes": tar(sparse01("big", 1 << 40, [(0, 4)])),
        "name longer than 4095 bytes": tar(p("n" * 5000, b"x")),
        f"deeper than {MAX_DEPTH} directory levels": deep_through_symlinks(),
        "xattr 'user.big' of 921600 bytes": tar(pax({"SCHILY.xattr.user.big": "v" * (900 << 10)}), member("f")),
        "PAX header of 67108864 bytes": tar(pax({"SCHILY.xattr.user.big": "v"}, size=64 << 20), member("f")),
        "invalid mtime 'nan'": tar(pax({"mtime": "nan"}), member("f", b"x")),
        "invalid mtime '1e30'": tar(pax({"mtime": "1e30"}), member("f", b"x")),
        "malformed GNU.sparse.map": tar(sparse01("s", 100, [(0, 4)], raw_map="0,4,x")),
    }
    for expected, blob in cases.items():
        subprocess.run(["rm", "-rf", str(box / "dest")], check=True)
        (box / "dest").mkdir()
        outcome = run_case(blob, box)
        assert isinstance(outcome, LayerError) and expected in str(outcome), (expected, outcome)


def test_long_names_are_shortened_in_messages(box):
    name = "start-" + "m" * 200_000 + "-end"
    outcome = run_case(tar(pax({"path": name + "/../x"}), member("x", b"x")), box)
    message = str(outcome)
    assert isinstance(outcome, LayerError) and len(message) < 400
    assert "'start-mmm" in message and "mmm-end/../x'" in message


def test_quota_stops_a_hostile_sparse_file_without_writing(box):
    with pytest.raises(QuotaError):
        unpack_blob(io.BytesIO(tar(sparse01("big", 8 << 30, [(0, 4)]))), str(box / "dest"), digest=None,
                    size=None, diff_id=None, chown=False, what="layer q", max_size=1 << 30)
    assert os.listdir(box / "dest") == []


def test_unmapped_setuid_loses_its_bits(box):
    def translate(uid, gid):
        if uid >= 1000:
            raise LookupError(uid)
        return os.geteuid(), os.getegid()

    blob = tar(member("suid", b"x", uid=5000, mode=0o6755), member("fine", b"x", uid=0, mode=0o4755),
               member("dir", type=b"5", uid=5000, mode=0o2775))
    outcome = run_case(blob, box, chown=True, id_translate=translate)
    assert isinstance(outcome, UnpackResult) and outcome.stripped_setid == 2
    assert stat.S_IMODE((box / "dest" / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((box / "dest" / "fine").stat().st_mode) == 0o4755
    assert stat.S_IMODE((box / "dest" / "dir").stat().st_mode) == 0o775


def test_a_pax_header_near_the_cap_survives_short_reads(box):
    """A PAX header of 1 MiB - 100 bytes (its blocks: exactly 1 MiB) through a reader that
    returns at most 512 bytes a call: short reads are not a truncated header."""
    class Trickle(io.BytesIO):
        def read(self, n=-1):
            return super().read(min(n, 512) if n is not None and n >= 0 else 512)

    target = (1 << 20) - 100
    records = [pax_record(f"GROOT.pad{i}", "v" * 60_000) for i in range(17)]
    rest = target - sum(map(len, records))
    records.append(pax_record("GROOT.last", "w" * (rest - len(pax_record("GROOT.last", "")))))
    body = b"".join(records)
    assert (1 << 20) - 512 < len(body) <= 1 << 20  # blocks: exactly 1 MiB
    blob = tar(header("PaxHeader", type=b"x", size=len(body)) + pad(body), member("f", b"x"))
    result = unpack_layer(Trickle(blob), str(box / "dest"), chown=False, what="layer trickle")
    assert result.entries == 1 and (box / "dest" / "f").read_bytes() == b"x"
