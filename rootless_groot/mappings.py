"""UID/GID mappings of a store: parsing ``NS:HOST:SIZE``, defaults from /etc/subuid, translation."""
from __future__ import annotations

import os
from .errors import UsageError
from .record import Record


class IDMapping(Record):
    """One line of a uid_map: ``size`` ids starting at ``ns_id`` inside map to ``host_id`` outside."""

    __slots__ = ("ns_id", "host_id", "size")
    ns_id: int
    host_id: int
    size: int

    @classmethod
    def parse(cls, text: str) -> "IDMapping":
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"invalid mapping `{text}`: expected NS:HOST:SIZE")
        try:
            ns_id, host_id, size = (int(p, 10) for p in parts)
        except ValueError:
            raise UsageError(f"invalid mapping `{text}`: expected three decimal numbers") from None
        if ns_id < 0 or host_id < 0 or size < 1 or ns_id + size > 2**32 or host_id + size > 2**32:
            raise UsageError(f"invalid mapping `{text}`: out of range")
        return cls(ns_id, host_id, size)

    def __str__(self) -> str:
        return f"{self.ns_id}:{self.host_id}:{self.size}"


def parse_mappings(texts: list[str]) -> tuple[IDMapping, ...]:
    """Parse and sort mappings, refusing overlaps (the kernel would refuse them later, less clearly)."""
    maps = tuple(sorted(IDMapping.parse(t) for t in texts))
    for a, b in zip(maps, maps[1:]):
        if a.ns_id + a.size > b.ns_id:
            raise UsageError(f"mappings `{a}` and `{b}` overlap inside the namespace")
    hosts = sorted(maps, key=lambda m: m.host_id)
    for a, b in zip(hosts, hosts[1:]):
        if a.host_id + a.size > b.host_id:
            raise UsageError(f"mappings `{a}` and `{b}` overlap on the host")
    return maps


def subordinate_range(user: str, uid: int, path: str) -> tuple[int, int] | None:
    """First ``start, count`` range for ``user`` (by name or uid) in /etc/subuid-style ``path``."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            return int(fields[1]), int(fields[2])
        except ValueError:
            continue
    return None


def _user_name(uid: int) -> str:
    import pwd  # only for the default mappings at init time

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def default_mappings(
    uid: int | None = None, gid: int | None = None, subuid_path: str = "/etc/subuid", subgid_path: str = "/etc/subgid"
) -> tuple[tuple[IDMapping, ...], tuple[IDMapping, ...]]:
    """The rootless default: own uid/gid to 0, then the user's subordinate ranges from 1 on.

    Without subordinate ids, only the single-ID mapping is returned (owners get squashed).
    """
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    name = _user_name(uid)
    uids = [IDMapping(0, uid, 1)]
    gids = [IDMapping(0, gid, 1)]
    sub = subordinate_range(name, uid, subuid_path)
    if sub:
        uids.append(IDMapping(1, sub[0], sub[1]))
    subg = subordinate_range(name, uid, subgid_path)
    if subg:
        gids.append(IDMapping(1, subg[0], subg[1]))
    return tuple(uids), tuple(gids)


def to_host(maps: tuple[IDMapping, ...], ns_id: int) -> int | None:
    """Host id for a namespace id, or None if it is not mapped."""
    for m in maps:
        if m.ns_id <= ns_id < m.ns_id + m.size:
            return m.host_id + (ns_id - m.ns_id)
    return None


def is_single_id(maps: tuple[IDMapping, ...]) -> bool:
    return sum(m.size for m in maps) == 1


def newidmap_args(maps: tuple[IDMapping, ...]) -> list[str]:
    """Arguments for newuidmap/newgidmap after the pid: ``ns host size`` triples."""
    out: list[str] = []
    for m in maps:
        out += [str(m.ns_id), str(m.host_id), str(m.size)]
    return out
