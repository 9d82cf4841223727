"""A rootfs tarball on disk (a Cloud Foundry stack): one layer, plain or compressed.

It has no digest to check, so its cache key is GrootFS-like: a hash of the real path, size
and mtime. A changed tarball gets a new key and is unpacked again; ``clean`` drops the old.
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

            raise NotFound(f"image `{self.ref.path}` not found: no such file"
                           f"{tarball_hint(self.ref.given, self.ref.path)}") from None
        except PermissionError:
            raise ImageError(f"cannot read `{self.ref.path}`: permission denied") from None
        if not os.path.isfile(path):
            from ..hints import tarball_hint

            raise ImageError(f"`{self.ref.path}` is not a tarball file{tarball_hint(self.ref.given, path)}")
        key = sha256_hex(f"{path}-{st.st_size}-{st.st_mtime_ns}".encode())
        layer = LayerDescriptor(key, None, None, None, "application/vnd.oci.image.layer.v1.tar")
        return ResolvedImage([layer])

    def open_blob(self, layer: LayerDescriptor) -> BinaryIO:
        try:
            return open(self.ref.path, "rb", buffering=0)
        except OSError as e:
            raise ImageError(f"cannot read `{self.ref.path}`: {e.strerror}") from None

    def close(self) -> None:
        pass
