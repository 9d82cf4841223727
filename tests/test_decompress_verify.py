"""open_decompressed and DigestReader."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import zlib

import pytest

from rootless_groot.errors import LayerError
from rootless_groot.layers import decompress
from rootless_groot.layers.decompress import open_decompressed
from rootless_groot.layers.verify import DigestReader

PAYLOAD = os.urandom(200_000) + b"\0" * (6 << 20) + os.urandom(50_000)


class CountingReader(io.RawIOBase):
    """A raw stream that records how many bytes were handed out."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)
        self.delivered = 0

    def read(self, n=-1):
        data = self._inner.read(n)
        self.delivered += len(data)
        return data


def read_all(reader, n=1 << 20) -> bytes:
    out = []
    while chunk := reader.read(n):
        assert len(chunk) <= n
        out.append(chunk)
    return b"".join(out)


# -- decompression ---------------------------------------------------------------------------------

def test_plain_passthrough():
    assert read_all(open_decompressed(io.BytesIO(PAYLOAD)), 4096) == PAYLOAD
    assert read_all(open_decompressed(io.BytesIO(b"ab"))) == b"ab"
    assert read_all(open_decompressed(io.BytesIO(b""))) == b""


@pytest.mark.parametrize("backend", ["default", "zlib"])
def test_gzip_multi_member(backend, monkeypatch):
    if backend == "zlib":
        monkeypatch.setattr(decompress, "_fast_zlib", None)
    blob = gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]) + gzip.compress(b"")
    reader = open_decompressed(io.BytesIO(blob))
    expected = zlib if backend == "zlib" else (decompress._fast_zlib or zlib)
    assert reader._zlib is expected
    assert read_all(reader, 65536) == PAYLOAD


def test_isal_is_used_when_installed():
    from isal import isal_zlib
    reader = open_decompressed(io.BytesIO(gzip.compress(b"x")))
    assert reader._zlib is isal_zlib


@pytest.mark.parametrize("backend", [None, zlib])
def test_gzip_truncated_or_corrupt(backend):
    blob = gzip.compress(PAYLOAD)
    for bad in (blob[: len(blob) // 2], blob[:-1], blob[:3], blob + b"trailing junk"):
        with pytest.raises(LayerError, match="layer X: .*gzip"):
            read_all(open_decompressed(io.BytesIO(bad), what="layer X", zlib_module=backend))
    corrupt = bytearray(blob)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(LayerError):
        read_all(open_decompressed(io.BytesIO(bytes(corrupt)), zlib_module=backend))


def test_gzip_trailing_zero_padding_tolerated():
    blob = gzip.compress(b"data") + b"\0" * 3000
    assert read_all(open_decompressed(io.BytesIO(blob))) == b"data"


def test_gzip_output_bounded_per_read():
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # ~64 KiB -> 64 MiB
    reader = open_decompressed(io.BytesIO(bomb))
    assert len(reader.read(4096)) <= 4096
    assert len(reader.read(1 << 20)) <= 1 << 20


def test_zstd_multi_frame_and_skippable():
    import zstandard
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    blob = (zstandard.ZstdCompressor(write_checksum=True).compress(PAYLOAD[:300_000]) + skippable
            + zstandard.ZstdCompressor(level=19).compress(PAYLOAD[300_000:]))
    assert read_all(open_decompressed(io.BytesIO(blob)), 65536) == PAYLOAD


def test_zstd_streamed_frame_without_content_size():
    import zstandard
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as w:
        for i in range(0, len(PAYLOAD), 100_000):
            w.write(PAYLOAD[i:i + 100_000])
    assert read_all(open_decompressed(io.BytesIO(out.getvalue()))) == PAYLOAD


def test_zstd_truncated_or_corrupt():
    import zstandard
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(PAYLOAD)
    for bad in (blob[: len(blob) // 2], blob[:-1], blob[:6], blob + b"junk"):
        with pytest.raises(LayerError, match="layer Z: .*zstd"):
            read_all(open_decompressed(io.BytesIO(bad), what="layer Z"))


def test_zstd_output_bounded_per_read():
    import zstandard
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 << 20))
    reader = open_decompressed(io.BytesIO(bomb))
    assert len(reader.read(4096)) <= 4096


def test_zstandard_imported_lazily(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def guard(name, *args, **kwargs):
        if name == "zstandard":
            raise AssertionError("zstandard imported for a gzip layer")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guard)
    assert read_all(open_decompressed(io.BytesIO(gzip.compress(b"x")))) == b"x"
    assert read_all(open_decompressed(io.BytesIO(b"plain"))) == b"plain"


# -- DigestReader ---------------------------------------------------------------------------------

BLOB = os.urandom(300_000)
SHA256 = "sha256:" + hashlib.sha256(BLOB).hexdigest()
SHA512 = "sha512:" + hashlib.sha512(BLOB).hexdigest()


@pytest.mark.parametrize("expected", [SHA256, SHA512])
def test_digest_reader_accepts_good_blob(expected):
    reader = DigestReader(io.BytesIO(BLOB), expected, len(BLOB), "layer A")
    assert read_all(reader, 10_000) == BLOB
    assert reader.finish() == expected


def test_digest_reader_without_expectations_reports_sha256():
    reader = DigestReader(io.BytesIO(BLOB), None, None, "layer A")
    read_all(reader)
    assert reader.finish() == SHA256


def test_digest_reader_wrong_digest():
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    reader = DigestReader(io.BytesIO(BLOB), wrong, len(BLOB), "layer A")
    read_all(reader)
    with pytest.raises(LayerError, match="layer A: digest mismatch"):
        reader.finish()


def test_digest_reader_short_blob():
    reader = DigestReader(io.BytesIO(BLOB[:-10]), SHA256, len(BLOB), "layer A")
    read_all(reader)
    with pytest.raises(LayerError, match=f"layer A: size mismatch: expected {len(BLOB)}, got {len(BLOB) - 10}"):
        reader.finish()


def test_digest_reader_overlong_blob_stops_at_size_plus_one():
    raw = CountingReader(BLOB + b"x" * (1 << 20))
    reader = DigestReader(raw, SHA256, len(BLOB), "layer A")
    with pytest.raises(LayerError, match="layer A: size mismatch"):
        read_all(reader, 1 << 20)
    assert raw.delivered == len(BLOB) + 1


def test_digest_reader_read_all_at_once():
    reader = DigestReader(io.BytesIO(BLOB), SHA256, len(BLOB), "layer A")
    assert reader.read() == BLOB
    assert reader.finish() == SHA256


@pytest.mark.parametrize("bad", [
    "sha256:abc",
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha256:" + "a" * 65,
    "sha512:" + "a" * 64,
    "md5:" + "a" * 32,
    "sha256" + "a" * 64,
    " sha256:" + "a" * 64,
    "sha256:" + "a" * 64 + "\n",
    "SHA256:" + "a" * 64,
    "sha256+b64u:" + "a" * 43,
    "",
])
def test_digest_reader_rejects_malformed_digest(bad):
    with pytest.raises(LayerError, match="layer A: malformed"):
        DigestReader(io.BytesIO(BLOB), bad, len(BLOB), "layer A")


@pytest.mark.parametrize("size", [-1, 1.5, "10"])
def test_digest_reader_rejects_bad_size(size):
    with pytest.raises(LayerError):
        DigestReader(io.BytesIO(BLOB), SHA256, size, "layer A")
