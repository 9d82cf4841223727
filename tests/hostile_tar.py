"""Raw tar building for hostile-layer tests: headers with any field value, PAX records, blocks.

``tarfile`` refuses to write most hostile forms (bad numbers, broken sparse maps, NUL in
names...), so these helpers lay out ustar headers byte by byte.
"""
from __future__ import annotations

import contextlib
import os
import resource

BLOCK = 512


def octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """GNU base-256: first byte 0x80 (positive) or 0xff (negative), big-endian two's complement."""
    raw = (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes([0xFF if value < 0 else 0x80]) + raw[1:]


def field(value, width: int) -> bytes:
    if isinstance(value, bytes):
        return value[:width].ljust(width, b"\0")
    if isinstance(value, int) and 0 <= value < 8 ** (width - 1):
        return octal(value, width)
    return base256(value, width)


def header(name: bytes | str, *, type: bytes = b"0", size=0, mode=0o644, uid=0, gid=0, mtime=1_600_000_000,
           link: bytes | str = b"", devmajor=0, devminor=0, prefix: bytes = b"", magic: bytes = b"ustar\x0000",
           checksum: int | None = None, extra: bytes = b"") -> bytes:
    """One 512-byte header. ``size``, ``uid``... may be ints (octal or base-256) or raw bytes."""
    name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    link = link.encode("utf-8", "surrogateescape") if isinstance(link, str) else link
    buf = bytearray(BLOCK)
    buf[0:100] = field(name, 100)
    buf[100:108] = field(mode, 8)
    buf[108:116] = field(uid, 8)
    buf[116:124] = field(gid, 8)
    buf[124:136] = field(size, 12)
    buf[136:148] = field(mtime, 12)
    buf[148:156] = b" " * 8
    buf[156:157] = type[:1]
    buf[157:257] = field(link, 100)
    buf[257:265] = magic[:8].ljust(8, b"\0")
    buf[265:297] = field(b"root", 32)
    buf[297:329] = field(b"root", 32)
    buf[329:337] = field(devmajor, 8)
    buf[337:345] = field(devminor, 8)
    buf[345:500] = field(prefix, 155)
    if extra:
        buf[345:345 + len(extra)] = extra
    total = sum(buf) if checksum is None else checksum
    buf[148:156] = b"%06o\0 " % (total % (8 ** 6))
    return bytes(buf)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name, data: bytes = b"", **kw) -> bytes:
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)


def pax_record(key: str | bytes, value: str | bytes) -> bytes:
    key = key.encode() if isinstance(key, str) else key
    value = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def pax(records: dict | list, *, type: bytes = b"x", size=None) -> bytes:
    """A PAX extended header (``x``) or global header (``g``) holding ``records``."""
    items = records.items() if isinstance(records, dict) else records
    body = b"".join(pax_record(k, v) for k, v in items)
    return header("PaxHeader", type=type, size=len(body) if size is None else size) + pad(body)


def gnu_long(name: bytes | str, *, type: bytes = b"L", size=None) -> bytes:
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    raw += b"\0"
    return header("././@LongLink", type=type, size=len(raw) if size is None else size) + pad(raw)


def end(extra_zero_blocks: int = 0) -> bytes:
    return b"\0" * BLOCK * (2 + extra_zero_blocks)


def tar(*parts: bytes, eof: bool = True) -> bytes:
    return b"".join(parts) + (end() if eof else b"")


@contextlib.contextmanager
def nofile_limit(limit: int):
    """Run with RLIMIT_NOFILE lowered to ``limit`` (e.g. the common ``ulimit -n 1024``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fds_under(path) -> int:
    """Open fds of this process on files under ``path`` (a leak check blind to other tests' sockets)."""
    prefix, count = str(path), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target == prefix or target.startswith(prefix + "/")
    return count
