"""Streaming decompression of layer blobs: gzip (isal or zlib), zstd, or plain tar.

``open_decompressed`` sniffs the first bytes of a blob and returns a reader with
``read(n)``. Memory stays bounded: input is read in 1 MiB pieces and every
``read`` returns at most ``n`` bytes, whatever the compression ratio. A stream
that ends in the middle of a gzip member or zstd frame is an error, not a short
layer.
"""
from __future__ import annotations

import zlib
from typing import BinaryIO

from ..errors import LayerError

try:  # ISA-L's zlib-compatible API is several times faster than zlib's inflate.
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _fast_zlib = None

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Prefixed:
    """A reader that first returns ``head`` (bytes already sniffed), then ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self._head = head
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(n)
        if n is None or n < 0:
            data, self._head = self._head, b""
            return data + self._raw.read()
        data, self._head = self._head[:n], self._head[n:]
        return data


def _read_at_least(raw: BinaryIO, n: int) -> bytes:
    """Read until ``n`` bytes or EOF (raw readers may return short reads)."""
    buf = b""
    while len(buf) < n:
        piece = raw.read(n - len(buf))
        if not piece:
            break
        buf += piece
    return buf


class GzipReader:
    """Multi-member gzip inflater with bounded output per ``read``."""

    def __init__(self, raw: BinaryIO, what: str, zlib_module=None):
        self._raw = raw
        self._what = what
        self._zlib = zlib_module or _fast_zlib or zlib
        self._d = self._zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed input not yet given to the inflater
        self._in_member = True
        self._raw_eof = False
        self._eof = False

    def _fill(self) -> None:
        if not self._pending and not self._raw_eof:
            self._pending = self._raw.read(CHUNK)
            if not self._pending:
                self._raw_eof = True

    def _next_member(self) -> bool:
        """Between members: skip zero padding; True if another member starts."""
        while True:
            self._fill()
            stripped = self._pending.lstrip(b"\0")
            if stripped:
                self._pending = stripped
                self._d = self._zlib.decompressobj(wbits=31)
                self._in_member = True
                return True
            self._pending = b""
            if self._raw_eof:
                return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        while not self._eof:
            if not self._in_member:
                if not self._next_member():
                    self._eof = True
                    break
            self._fill()
            if not self._pending:
                raise LayerError(f"{self._what}: truncated gzip stream")
            try:
                out = self._d.decompress(self._pending, n)
            except Exception as exc:  # zlib.error / isal_zlib.error
                raise LayerError(f"{self._what}: corrupt gzip stream: {exc}") from None
            if self._d.eof:
                # zlib keeps the bytes after the member in unused_data (and,
                # with max_length, a stale copy in unconsumed_tail: ignore it).
                self._pending = self._d.unused_data
                self._in_member = False
            else:
                self._pending = self._d.unconsumed_tail
            if out:
                return out
        return b""


class _ZstdFrameTracker:
    """Follows zstd frame boundaries in the compressed bytes.

    python-zstandard's stream reader returns a clean EOF on a truncated frame;
    tracking frame and block headers lets us tell a complete stream from a cut one.
    """

    def __init__(self):
        self._buf = b""  # an incomplete header carried over between feeds
        self._skip = 0  # bytes of block content / skippable frame still to pass
        self._state = "magic"
        self._checksum = False

    def feed(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, end = 0, len(buf)
        while True:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if self._skip:
                    break
            need = self._header_size(buf, pos, end)
            if need is None or end - pos < need:
                break
            pos += self._consume(buf, pos, need)
        self._buf = bytes(buf[pos:])

    def _header_size(self, buf: bytes, pos: int, end: int) -> int | None:
        """How many bytes the next header needs (None: not known yet)."""
        if self._state == "magic":
            if end - pos >= 4 and int.from_bytes(buf[pos:pos + 4], "little") & 0xFFFFFFF0 == 0x184D2A50:
                return 8  # skippable frame: magic + 4-byte size
            return 4
        if self._state == "header":
            if pos >= end:
                return None
            fhd = buf[pos]
            single = (fhd >> 5) & 1
            return 1 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        return 3 if self._state == "block" else 4  # block header / checksum

    def _consume(self, buf: bytes, pos: int, size: int) -> int:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(buf[pos:pos + 4], "little")
            if size == 8:
                self._skip = int.from_bytes(buf[pos + 4:pos + 8], "little")
            elif magic == 0xFD2FB528:
                self._state = "header"
            else:
                raise LayerError("corrupt zstd stream: bad frame magic")
        elif state == "header":
            self._checksum = bool(buf[pos] & 4)
            self._state = "block"
        elif state == "block":
            hdr = int.from_bytes(buf[pos:pos + 3], "little")
            btype = (hdr >> 1) & 3
            if btype == 3:
                raise LayerError("corrupt zstd stream: reserved block type")
            self._skip = 1 if btype == 1 else hdr >> 3
            if hdr & 1:  # last block of the frame
                self._state = "checksum" if self._checksum else "magic"
        else:  # checksum
            self._state = "magic"
        return size

    def complete(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip


class _Tee:
    def __init__(self, raw: BinaryIO, tracker: _ZstdFrameTracker):
        self._raw = raw
        self._tracker = tracker
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            self._tracker.feed(data)
        else:
            self.eof = True
        return data


class ZstdReader:
    """zstd (multi-frame) via python-zstandard's bounded stream reader."""

    def __init__(self, raw: BinaryIO, what: str):
        import zstandard  # imported lazily: most layers are gzip

        self._what = what
        self._tracker = _ZstdFrameTracker()
        self._tee = _Tee(raw, self._tracker)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._tee, read_size=CHUNK, read_across_frames=True, closefd=False
        )
        self._error = zstandard.ZstdError

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        try:
            data = self._reader.read(n)
        except LayerError as exc:
            raise LayerError(f"{self._what}: {exc}") from None
        except self._error as exc:
            raise LayerError(f"{self._what}: corrupt zstd stream: {exc}") from None
        if not data:
            while not self._tee.eof:  # let the tracker see everything
                self._tee.read(CHUNK)
            if not self._tracker.complete():
                raise LayerError(f"{self._what}: truncated zstd stream")
        return data


def open_decompressed(raw: BinaryIO, *, what: str = "layer", zlib_module=None) -> BinaryIO:
    """Sniff the first bytes of ``raw`` and return a reader of the uncompressed tar.

    gzip (1f 8b) -> isal's zlib if importable, else zlib (``zlib_module`` forces one);
    zstd (28 b5 2f fd) -> python-zstandard, imported only when needed;
    anything else -> passed through as plain tar.
    """
    head = _read_at_least(raw, 4)
    stream = _Prefixed(head, raw)
    if head.startswith(GZIP_MAGIC):
        return GzipReader(stream, what, zlib_module)  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        try:
            return ZstdReader(stream, what)  # type: ignore[return-value]
        except ImportError:
            raise LayerError(f"{what}: zstd-compressed, but the zstandard module is not installed") from None
    return stream  # type: ignore[return-value]
