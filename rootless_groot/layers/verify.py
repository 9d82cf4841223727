"""Verify a blob's size and digest while it streams past."""
from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from ..errors import LayerError

# The algorithms registered by the OCI image spec, with their exact encodings.
_DIGEST_RE = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}


def parse_digest(digest: str, what: str) -> tuple[str, str]:
    """Split ``algorithm:hex`` and check it strictly; raise LayerError on anything else."""
    algorithm, sep, encoded = digest.partition(":") if isinstance(digest, str) else ("", "", "")
    pattern = _DIGEST_RE.get(algorithm)
    if not sep or pattern is None or not pattern.fullmatch(encoded):
        raise LayerError(f"{what}: malformed or unsupported digest {digest!r}")
    return algorithm, encoded


class DigestReader:
    """Wrap a raw blob stream; count and hash what is read, stop at ``expected_size + 1`` bytes.

    ``finish()`` reads nothing more: the caller must have read the stream to EOF.
    Without ``expected_digest`` the blob is hashed with sha256.
    """

    def __init__(self, raw: BinaryIO, expected_digest: str | None, expected_size: int | None, what: str):
        self._raw = raw
        self._what = what
        self._expected_digest = expected_digest
        algorithm = parse_digest(expected_digest, what)[0] if expected_digest is not None else "sha256"
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        if expected_size is not None and (type(expected_size) is not int or expected_size < 0):
            raise LayerError(f"{what}: invalid expected size {expected_size!r}")
        self._expected_size = expected_size
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        if self._expected_size is not None:
            # Never ask for more than one byte past the expected end.
            n = min(n, self._expected_size - self.count + 1)
        data = self._raw.read(n)
        if data:
            self.count += len(data)
            if self._expected_size is not None and self.count > self._expected_size:
                raise LayerError(
                    f"{self._what}: size mismatch: expected {self._expected_size}, got more "
                    "(layer size is different from the value in the manifest)"
                )
            self._hash.update(data)
        return data

    def readinto(self, buf) -> int:  # some consumers prefer readinto
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def finish(self) -> str:
        """Check size and digest of what was read; return ``algorithm:hex``."""
        if self._expected_size is not None and self.count != self._expected_size:
            raise LayerError(
                f"{self._what}: size mismatch: expected {self._expected_size}, got {self.count} "
                "(layer size is different from the value in the manifest)"
            )
        actual = f"{self._algorithm}:{self._hash.hexdigest()}"
        if self._expected_digest is not None and actual != self._expected_digest:
            raise LayerError(
                f"{self._what}: digest mismatch: expected {self._expected_digest}, got {actual} (layerID digest mismatch)"
            )
        return actual
