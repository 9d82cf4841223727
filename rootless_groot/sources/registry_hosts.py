"""Per-host registry settings shared by the full client and the light warm-path check.

No heavy imports here: a warm ``create`` reads these without loading ``ssl`` or ``requests``.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """``host[:port]`` matches a configured name with or without the port."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    for pattern in patterns:
        p = pattern.strip().lower()
        for prefix in ("https://", "http://"):
            p = p.removeprefix(prefix)
        p = p.rstrip("/")
        if p and (p == host or p == bare):
            return True
    return False


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port: this machine itself."""
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return bare in ("localhost", "[::1]") or (bare.startswith("127.") and bare.replace(".", "").isdigit())


def _cert_dirs() -> list[str]:
    home = os.path.expanduser("~")
    return [os.path.join(home, ".config", "containers", "certs.d"), "/etc/containers/certs.d", "/etc/docker/certs.d"]


def ca_files_for(host: str) -> list[str]:
    """``certs.d/HOST[:PORT]/*.crt`` from the containers and docker conventions."""
    out = []
    for base in _cert_dirs():
        directory = os.path.join(base, host)
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        out.extend(os.path.join(directory, n) for n in names if n.endswith(".crt"))
    return out
