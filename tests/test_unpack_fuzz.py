"""Fuzz-style test of the unpacker: generated tar streams with random header fields.

A fixed seed makes every run build the same streams; the loop stops after ITERATIONS
streams or TIME_BUDGET seconds, whichever comes first. Every outcome must be a success or
one clean LayerError naming the layer, never another exception; nothing outside the layer
may change; no fd may leak.
"""
from __future__ import annotations

import gc
import gzip
import io
import os
import random
import subprocess
import time
from pathlib import Path

from hostile_tar import base256, fds_under, gnu_long, header, nofile_limit, pad, pax, tar
from rootless_groot.errors import LayerError, QuotaError
from rootless_groot.layers.pipeline import unpack_blob
from rootless_groot.layers.unpack import UnpackResult

SEED = 20261130
ITERATIONS = 1500
TIME_BUDGET = 10.0
ROOT = os.geteuid() == 0

TYPES = [b"0", b"0", b"0", b"5", b"5", b"2", b"2", b"1", b"1", b"6", b"3", b"4", b"7", b"S", b"x", b"g",
         b"L", b"K", b"V", b"Z", b"\0"]
PAX_KEYS = ["path", "linkpath", "size", "mtime", "atime", "uid", "gid", "uname", "hdrcharset", "comment",
            "GNU.sparse.map", "GNU.sparse.size", "GNU.sparse.realsize", "GNU.sparse.major",
            "GNU.sparse.minor", "GNU.sparse.name", "GNU.sparse.offset", "GNU.sparse.numbytes",
            "SCHILY.xattr.user.x", "SCHILY.xattr.security.capability", "SCHILY.xattr.trusted.overlay.opaque"]


class Fuzzer:
    def __init__(self, rng: random.Random, outside: str):
        self.r = rng
        self.outside = outside

    def component(self) -> str:
        r = self.r
        if r.random() < 0.93:
            return r.choice(["a", "b", "c", "e", ".wh.b"])
        return r.choice(["a", "b", "c", "..", ".", "", ".wh.a", ".wh..wh..opq", ".wh..", "d" * r.randint(1, 300),
                         "caf\udce9", "x\0y", "\u00e9"])

    def name(self) -> str:
        r = self.r
        name = "/".join(self.component() for _ in range(r.choice([1, 1, 2, 3, 5, 40])))
        if r.random() < 0.03:
            name = "/" + name
        if r.random() < 0.02:
            name = self.outside + "/" + name
        return name

    def target(self) -> str:
        r = self.r
        return r.choice([self.name(), self.name(), self.name(), "/", "..", "../outside/secret", self.outside, self.outside + "/secret",
                         "a", "a/b", ".", "/" * r.randint(1, 3)])

    def number(self, width: int):
        r = self.r
        return r.choice([0, 1, 7, 0o777, 0o7777, 1000, 65534, r.randint(0, 8 ** (width - 1) - 1),
                         -1, -r.randint(1, 1 << 40), 1 << 40, 1 << (8 * width - 10),
                         base256(r.randint(-(1 << 60), 1 << 60), width), b"garbage!", b"\xff" * width])

    def pax_value(self, key: str) -> str:
        r = self.r
        return r.choice(["0", "1", "-1", "nan", "inf", "1e30", "-1e30", "1.5", "12345678901234567890123",
                         "0,4", "0,4,x", "0,4,8", "1", "0", "BINARY", "", "x" * r.randint(0, 3000),
                         self.target(), str(r.randint(0, 1 << 41))])

    def entry(self) -> bytes:
        r = self.r
        kind = r.choice(TYPES)
        data = b""
        if kind in (b"0", b"7", b"Z") or r.random() < 0.05:
            data = r.choice([b"", b"x", os.urandom(r.randint(0, 3000)), bytes(r.randint(0, 5000))])
        out = b""
        if r.random() < 0.15:
            items = [(key, self.pax_value(key)) for key in r.sample(PAX_KEYS, r.randint(1, 4))]
            out += pax(items, type=r.choice([b"x", b"x", b"g"]))
        if r.random() < 0.05:
            out += gnu_long(self.name(), type=r.choice([b"L", b"K"]))
        size = len(data) if r.random() < 0.95 else self.number(12)
        fields = dict(type=kind, size=size, link=self.target() if kind in (b"1", b"2") or r.random() < 0.05 else "")
        for key, width in (("mode", 8), ("uid", 8), ("gid", 8), ("mtime", 12), ("devmajor", 8), ("devminor", 8)):
            if r.random() < 0.04:
                fields[key] = self.number(width)
        if r.random() < 0.01:
            fields["checksum"] = r.randint(0, 1 << 18)
        if r.random() < 0.03:
            fields["magic"] = r.choice([b"", b"ustar  \0", b"garbage!"])
        name = self.name()
        raw = name.encode("utf-8", "surrogateescape")
        try:
            head = header(raw[:99], **fields)
        except (ValueError, OverflowError):
            head = header(raw[:99], type=kind, size=len(data))
        return out + head + pad(data)

    def stream(self) -> bytes:
        r = self.r
        blob = tar(*[self.entry() for _ in range(r.randint(1, 12))], eof=r.random() < 0.9)
        for _ in range(r.choice([0, 0, 0, 0, 0, 1, 3, 10])):  # flip bytes, mostly in headers
            pos = r.randrange(len(blob))
            blob = blob[:pos] + bytes([r.randrange(256)]) + blob[pos + 1:]
            start = pos - pos % 512
            if blob[start + 257:start + 262] == b"ustar" and r.random() < 0.8:  # still a valid header
                block = bytearray(blob[start:start + 512])
                block[148:156] = b" " * 8
                block[148:156] = b"%06o\0 " % (sum(block) % 8 ** 6)
                blob = blob[:start] + bytes(block) + blob[start + 512:]
        if r.random() < 0.1:
            blob = blob[:r.randrange(len(blob) + 1)]
        if r.random() < 0.15:
            blob = gzip.compress(blob, compresslevel=1, mtime=0)
            if r.random() < 0.2:
                blob = blob[:r.randrange(len(blob) + 1)]
        return blob


def snapshot(path: Path) -> dict:
    return {str(p): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_random_streams_end_in_success_or_a_layer_error(tmp_path):
    box = tmp_path / "box"
    outside = box / "outside"
    outside.mkdir(parents=True)
    (outside / "secret").write_bytes(b"victim")
    before = snapshot(outside)
    fuzz = Fuzzer(random.Random(SEED), str(outside))
    outcomes = {"ok": 0, "error": 0, "quota": 0}
    started = time.monotonic()
    try:
        with nofile_limit(1024):
            gc.collect()  # sockets earlier tests left to the collector must not close mid-loop
            fds = fds_under(box)
            for i in range(ITERATIONS):
                if time.monotonic() - started > TIME_BUDGET:
                    break
                blob = fuzz.stream()
                dest = box / f"d{i}"
                dest.mkdir()
                try:
                    result = unpack_blob(io.BytesIO(blob), str(dest), digest=None, size=None, diff_id=None,
                                         chown=ROOT, what="layer fuzz", max_size=1 << 30)
                    assert isinstance(result, UnpackResult)
                    outcomes["ok"] += 1
                except LayerError as exc:
                    message = str(exc)
                    assert message.startswith("layer fuzz") and "\n" not in message and len(message) < 800, \
                        (i, message)
                    outcomes["error"] += 1
                except QuotaError:
                    outcomes["quota"] += 1
                assert snapshot(outside) == before, (i, blob[:2048])
                assert fds_under(box) == fds, i
                if i % 100 == 99:
                    assert set(os.listdir(box)) == {"outside"} | {f"d{j}" for j in range(i - 99, i + 1)}
                    subprocess.run(["rm", "-rf", *[str(box / f"d{j}") for j in range(i - 99, i + 1)]], check=True)
    finally:
        subprocess.run(["rm", "-rf", str(box)], check=True)
    assert outcomes["ok"] > 20 and outcomes["error"] > 20, outcomes
