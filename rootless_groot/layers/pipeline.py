"""One layer blob, end to end: verify -> decompress -> unpack -> check the diffID."""
from __future__ import annotations

from typing import BinaryIO, Callable

from ..errors import LayerError
from .decompress import CHUNK, open_decompressed
from .unpack import UnpackResult, unpack_layer
from .verify import DigestReader, parse_digest


def unpack_blob(raw: BinaryIO, dest: str, *, digest: str | None, size: int | None, diff_id: str | None,
                chown: bool = True, allow_devices: bool = False,
                id_translate: Callable[[int, int], tuple[int, int]] | None = None,
                what: str, max_size: int | None = None) -> UnpackResult:
    """Stream the blob ``raw`` into the existing empty directory ``dest`` in one pass.

    The compressed bytes are counted and hashed (``digest``, ``size``), the
    uncompressed stream is hashed for the diffID; both are checked once the
    stream is read to EOF. Any mismatch or hostile entry raises LayerError naming
    ``what`` (e.g. "layer sha256:abcd…"). ``max_size`` (a disk limit) stops a layer whose
    files would exceed it with QuotaError, as soon as a tar header says so.

    On ANY exception ``dest`` holds a partial or unverified layer: the caller must
    delete it and never install it.
    """
    if diff_id is not None:
        parse_digest(diff_id, f"{what}: diffID")  # fail before touching dest
    verifier = DigestReader(raw, digest, size, what)
    stream: BinaryIO = open_decompressed(verifier, what=what)  # type: ignore[arg-type]
    other_diff = None
    if diff_id is not None and not diff_id.startswith("sha256:"):
        # unpack_layer hashes with sha256; check a sha512 diffID on the side.
        other_diff = DigestReader(stream, diff_id, None, f"{what}: diffID")
        stream = other_diff  # type: ignore[assignment]
    result = unpack_layer(stream, dest, chown=chown, allow_devices=allow_devices,
                          id_translate=id_translate, what=what, max_size=max_size)
    # The decompressor stops at the end of its data; anything after it in the
    # blob still belongs to the digest (and makes it wrong).
    while verifier.read(CHUNK):
        pass
    verifier.finish()
    if other_diff is not None:
        other_diff.finish()
    elif diff_id is not None and result.diff_id != diff_id:
        raise LayerError(f"{what}: diffID digest mismatch: expected {diff_id}, got {result.diff_id}")
    return result
