"""A rootfs tarball on disk (a Cloud Foundry stack): one layer, plain or compressed.

It has no digest to check, so its cache key is GrootFS-like: a hash of the real path, size,
mtime, and (better than GrootFS) inode and ctime, so a tarball replaced with its mtime kept
(``cp -p``, ``rsync -t``) is noticed too. A changed tarball gets a new key and is unpacked
again; ``clean`` drops the old. Garden's preloaded+layer base layer gets the same key.
"""
from __future__ import annotations

import os

from ..digests import sha256_hex
from ..errors import ImageError, NotFound
from ..refs import TarballRef
from .base import LayerDescriptor, ResolvedImage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO


class TarballSource:
    def __init__(self, ref: TarballRef):
        self.ref = ref

    def resolve(self) -> ResolvedImage:
        path = os.path.realpath(self.ref.path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            from ..hints import tarball_hint

            raise NotFound(f"stat {self.ref.path}: no such file or directory"
                           f"{tarball_hint(self.ref.given, self.ref.path)}") from None
        except PermissionError:
            raise ImageError(f"cannot read `{self.ref.path}`: permission denied") from None
        if not os.path.isfile(path):
            from ..hints import tarball_hint

            if os.path.isdir(path):  # GrootFS's words, then our hint
                raise ImageError("invalid base image: directory provided instead of a tar file"
                                 f"{tarball_hint(self.ref.given, path)}")

            raise ImageError(f"`{self.ref.path}` is not a tarball file{tarball_hint(self.ref.given, path)}")
        layer = LayerDescriptor(file_key(path, st), None, None, None, "application/vnd.oci.image.layer.v1.tar")
        return ResolvedImage([layer])

    def open_blob(self, layer: LayerDescriptor) -> BinaryIO:
        try:
            return open(self.ref.path, "rb", buffering=0)
        except OSError as e:
            raise ImageError(f"cannot read `{self.ref.path}`: {e.strerror}") from None

    def close(self) -> None:
        pass


def file_key(real_path: str, st: os.stat_result) -> str:
    """The cache key of a layer that is a local file with no content digest."""
    return sha256_hex(f"{real_path}-{st.st_size}-{st.st_mtime_ns}-{st.st_dev}-{st.st_ino}-{st.st_ctime_ns}".encode())
