"""Digest validation and GrootFS-compatible chain IDs."""
from __future__ import annotations

import hashlib

from .errors import ImageError
from .refs import DIGEST_RE


def check_digest(digest: str, what: str = "digest") -> str:
    """Return ``digest`` if well-formed; digests end up in paths and URLs, so validate first."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ImageError(f"invalid {what} `{digest}`")
    return digest


def chain_ids(diff_ids: list[str]) -> list[str]:
    """Chain IDs as GrootFS computes them (hex, no prefix), one per layer, base first.

    First layer: the diffID's hex. Later: sha256 of ``"<parent chain hex> <diffID hex>"``.
    """
    out: list[str] = []
    for diff_id in diff_ids:
        hex_id = check_digest(diff_id, "diffID").split(":", 1)[1]
        if not out:
            out.append(hex_id)
        else:
            out.append(hashlib.sha256(f"{out[-1]} {hex_id}".encode()).hexdigest())
    return out
