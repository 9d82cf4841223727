"""Digest validation and GrootFS-compatible chain IDs."""
from __future__ import annotations

from .errors import ImageError
from .refs import is_digest


def sha256_hex(data: bytes) -> str:
    """sha256 of a small document, without loading OpenSSL (``hashlib`` costs ~5 ms to import)."""
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    return sha256(data).hexdigest()


def document_digest_matches(digest: str, data: bytes) -> bool:
    """Whether ``data`` hashes to the (already validated) ``digest``."""
    algorithm, _, expected = digest.partition(":")
    if algorithm == "sha256":
        return sha256_hex(data) == expected
    import hashlib

    return hashlib.new(algorithm, data).hexdigest() == expected


def check_digest(digest: str, what: str = "digest") -> str:
    """Return ``digest`` if well-formed; digests end up in paths and URLs, so validate first."""
    if not is_digest(digest):
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
            out.append(sha256_hex(f"{out[-1]} {hex_id}".encode()))
    return out
