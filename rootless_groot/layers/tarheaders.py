"""Tar header parsing that costs at most linear time on any input, on top of ``tarfile``.

``tarfile`` (3.11) is fine for the fixed 512-byte header, but its extended headers are not
safe on hostile input: the PAX parser runs a backtracking regex over the whole record block
(quadratic; CVE-2024-6232), reads any declared size into memory, recurses once per chained
extended header, and the GNU sparse parsers raise ValueError (or loop, copying) on a bad map.
``HardTarInfo`` replaces those parts with linear parsers and caps, and turns every parse
failure into ``tarfile.InvalidHeaderError``, which the unpacker reports as a corrupt header.
"""
from __future__ import annotations

import struct
import tarfile
from tarfile import BLOCKSIZE, InvalidHeaderError

MAX_SPECIAL = 1 << 20  # bytes of one PAX header or GNU long name (Go's archive/tar limit too)
MAX_CHAIN = 16  # extended headers in a row before one member
MAX_SPARSE_ENTRIES = 1 << 17  # data regions of one sparse file
_DIGITS = 20  # a record length or sparse number longer than this is garbage

# What a hostile header can make tarfile raise besides its HeaderErrors.
PARSE_ERRORS = (ValueError, OverflowError, TypeError, IndexError, KeyError, UnicodeError,
                AttributeError, struct.error, RecursionError)


def _int(token: bytes, what: str) -> int:
    if not token.isdigit() or len(token) > _DIGITS:
        raise InvalidHeaderError(f"malformed {what}")
    return int(token)


def parse_pax_records(buf: bytes) -> list[tuple[bytes, bytes]]:
    """``"%d %s=%s\\n"`` records, strictly and in one pass (NUL padding after the last ends it)."""
    records = []
    pos, end = 0, len(buf)
    while pos < end:
        if buf[pos] == 0:
            break
        space = buf.find(b" ", pos, pos + _DIGITS + 1)
        if space < 0:
            raise InvalidHeaderError("malformed PAX record length")
        length = _int(buf[pos:space], "PAX record length")
        stop = pos + length
        if length <= space - pos + 2 or stop > end or buf[stop - 1] != 0x0A:
            raise InvalidHeaderError("malformed PAX record")
        keyword, eq, value = buf[space + 1:stop - 1].partition(b"=")
        if not eq or not keyword:
            raise InvalidHeaderError("malformed PAX record: no keyword")
        records.append((keyword, value))
        pos = stop
    return records


class HardTarInfo(tarfile.TarInfo):
    """A TarInfo whose extended-header parsing is linear and capped (see the module doc)."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            obj = super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            tar._groot_bad_header = exc  # tarfile ends the archive quietly on these
            raise
        except tarfile.HeaderError:
            raise
        except PARSE_ERRORS as exc:
            bad = InvalidHeaderError(f"{type(exc).__name__}: {str(exc)[:200]}")
            tar._groot_bad_header = bad
            raise bad from None
        return obj

    def _next_header(self, tar):
        depth = getattr(tar, "_groot_chain", 0) + 1
        if depth > MAX_CHAIN:
            raise InvalidHeaderError(f"more than {MAX_CHAIN} extended headers in a row")
        tar._groot_chain = depth
        try:
            return self.fromtarfile(tar)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None
        finally:
            tar._groot_chain = depth - 1

    def _read_special(self, tar, kind: str) -> bytes:
        if not 0 <= self.size <= MAX_SPECIAL:
            raise InvalidHeaderError(f"{kind} of {self.size} bytes (the limit is {MAX_SPECIAL})")
        want = self._block(self.size)
        parts, got = [], 0
        while got < want:  # the stream may return less than asked (a decompressor's chunk)
            piece = tar.fileobj.read(want - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        buf = b"".join(parts)
        if len(buf) < self.size:
            raise tarfile.TruncatedHeaderError(f"truncated {kind}")
        return buf[:self.size]

    def _proc_sparse(self, tar):
        """Old GNU sparse ('S'): the map goes on in extension blocks, at most 1 MiB of them."""
        structs, extended, realsize = self._sparse_structs
        del self._sparse_structs
        blocks = 0
        while extended:
            blocks += 1
            if blocks * BLOCKSIZE > MAX_SPECIAL:
                raise InvalidHeaderError("GNU sparse map too long")
            buf = tar.fileobj.read(BLOCKSIZE)
            if len(buf) < BLOCKSIZE:
                raise tarfile.TruncatedHeaderError("truncated GNU sparse map")
            for pos in range(0, 21 * 24, 24):
                try:
                    offset, numbytes = tarfile.nti(buf[pos:pos + 12]), tarfile.nti(buf[pos + 12:pos + 24])
                except InvalidHeaderError:
                    break
                if offset and numbytes:
                    structs.append((offset, numbytes))
            extended = bool(buf[504])
        self.sparse = structs
        self.offset_data = tar.fileobj.tell()
        tar.offset = self.offset_data + self._block(self.size)
        self.size = realsize
        return self

    def _proc_gnulong(self, tar):
        buf = self._read_special(tar, "GNU long name")
        following = self._next_header(tar)
        following.offset = self.offset
        if self.type == tarfile.GNUTYPE_LONGNAME:
            following.name = tarfile.nts(buf, tar.encoding, tar.errors)
        else:
            following.linkname = tarfile.nts(buf, tar.encoding, tar.errors)
        if following.isdir():
            following.name = following.name.rstrip("/")
        return following

    def _proc_pax(self, tar):
        records = parse_pax_records(self._read_special(tar, "PAX header"))
        pax = tar.pax_headers if self.type == tarfile.XGLTYPE else tar.pax_headers.copy()
        charset = [v for k, v in records if k == b"hdrcharset"]
        encoding = tar.encoding if (charset[-1] if charset else pax.get("hdrcharset")) in (b"BINARY", "BINARY") \
            else "utf-8"
        offsets, numbytes = [], []
        for raw_key, raw_value in records:
            key = self._decode_pax_field(raw_key, "utf-8", "utf-8", tar.errors)
            if key in tarfile.PAX_NAME_FIELDS:
                value = self._decode_pax_field(raw_value, encoding, tar.encoding, tar.errors)
            else:
                value = self._decode_pax_field(raw_value, "utf-8", "utf-8", tar.errors)
            if key == "GNU.sparse.offset":
                offsets.append(_int(raw_value, "GNU.sparse.offset"))
            elif key == "GNU.sparse.numbytes":
                numbytes.append(_int(raw_value, "GNU.sparse.numbytes"))
            pax[key] = value

        following = self._next_header(tar)
        if "GNU.sparse.map" in pax:  # sparse format 0.1
            following.sparse = _pairs([_int(x.encode(), "GNU.sparse.map") for x in
                                       pax["GNU.sparse.map"].split(",")] if pax["GNU.sparse.map"] else [])
        elif "GNU.sparse.size" in pax:  # sparse format 0.0
            if len(offsets) != len(numbytes):
                raise InvalidHeaderError("malformed GNU sparse map")
            following.sparse = _pairs([n for pair in zip(offsets, numbytes) for n in pair])
        elif pax.get("GNU.sparse.major") == "1" and pax.get("GNU.sparse.minor") == "0":
            _sparse_10(following, tar)

        if self.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            for key in ("GNU.sparse.size", "GNU.sparse.realsize", "size", "uid", "gid"):
                if key in pax and not _is_int(pax[key]):
                    raise InvalidHeaderError(f"malformed PAX {key} {pax[key][:40]!r}")
            following._apply_pax_info(pax, tar.encoding, tar.errors)
            following.offset = self.offset
            if "size" in pax:
                offset = following.offset_data
                if following.isreg() or following.type not in tarfile.SUPPORTED_TYPES:
                    offset += following._block(following.size)
                tar.offset = offset
        return following


def _is_int(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= _DIGITS


def _pairs(numbers: list[int]) -> list[tuple[int, int]]:
    if len(numbers) % 2 or len(numbers) > 2 * MAX_SPARSE_ENTRIES:
        raise InvalidHeaderError("malformed GNU sparse map")
    return list(zip(numbers[::2], numbers[1::2]))


def _sparse_10(following, tar) -> None:
    """GNU sparse 1.0: the map is a list of decimal lines at the start of the data."""
    data, numbers, need, consumed = b"", [], -1, 0
    while need < 0 or len(numbers) < need:
        newline = data.find(b"\n")
        if newline < 0:
            if len(data) > _DIGITS or consumed >= MAX_SPECIAL:
                raise InvalidHeaderError("malformed GNU sparse map")
            block = tar.fileobj.read(BLOCKSIZE)
            if len(block) < BLOCKSIZE:
                raise tarfile.TruncatedHeaderError("truncated GNU sparse map")
            consumed += BLOCKSIZE
            data += block
            continue
        value = _int(data[:newline], "GNU sparse map")
        data = data[newline + 1:]
        if need < 0:
            if value > MAX_SPARSE_ENTRIES:
                raise InvalidHeaderError("GNU sparse map too long")
            need = 2 * value
        else:
            numbers.append(value)
    following.offset_data = tar.fileobj.tell()
    following.sparse = _pairs(numbers)
