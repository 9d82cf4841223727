"""OCI image layouts on disk (``oci:///abs/path[:tag]``): index.json, nested indexes, platforms."""
from __future__ import annotations

import os

from ..digests import document_digest_matches
from ..errors import ImageError, NotFound
from ..jsonutil import loads_strict
from ..refs import OCILayoutRef
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

from .base import (
    INDEX_TYPES,
    MAX_DOCUMENT,
    LayerDescriptor,
    ResolvedImage,
    descriptor,
    image_from_documents,
    parse_manifest,
    runtime_platform,
    select_platform,
)

REF_NAME = "org.opencontainers.image.ref.name"
MAX_NESTING = 8


class OCILayoutSource:
    def __init__(self, ref: OCILayoutRef, platform: dict[str, str] | None = None):
        self.ref = ref
        self.platform = platform or runtime_platform()

    def _blob_path(self, digest: str) -> str:
        algorithm, hex_digest = digest.split(":", 1)  # digest was validated by descriptor()
        return os.path.join(self.ref.path, "blobs", algorithm, hex_digest)

    def _read_document(self, digest: str, size: int, what: str) -> bytes:
        """Read a small blob, checking its size and digest before anything parses it."""
        if size > MAX_DOCUMENT:
            raise ImageError(f"{what} is larger than {MAX_DOCUMENT} bytes")
        try:
            with open(self._blob_path(digest), "rb") as f:
                data = f.read(size + 1)
        except FileNotFoundError:
            raise ImageError(f"{what}: blob {digest} is missing from the layout") from None
        if len(data) != size:
            raise ImageError(f"{what}: blob {digest} has size {len(data) if len(data) <= size else 'over ' + str(size)}, expected {size}")
        if not document_digest_matches(digest, data):
            raise ImageError(f"{what}: blob {digest} does not match its digest")
        return data

    def _index(self) -> dict[str, Any]:
        path = os.path.join(self.ref.path, "index.json")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_DOCUMENT + 1)
        except FileNotFoundError:
            if not os.path.isdir(self.ref.path):
                raise NotFound(f"OCI layout {self.ref.path} does not exist") from None
            raise ImageError(f"{self.ref.path} is not an OCI layout: no index.json") from None
        if len(data) > MAX_DOCUMENT:
            raise ImageError(f"{path} is too large")
        return loads_strict(data, path)

    def _pick_from_top(self, index: dict[str, Any]) -> dict[str, Any]:
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise ImageError(f"OCI layout {self.ref.path} holds no images")
        if self.ref.tag is not None:
            named = [m for m in manifests if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_NAME) == self.ref.tag]
            if not named:
                raise NotFound(f"OCI layout {self.ref.path} has no image tagged `{self.ref.tag}`")
            if len(named) > 1:
                return select_platform({"manifests": named}, self.platform, str(self.ref))
            return named[0]
        if len(manifests) == 1:
            return manifests[0]
        if any(isinstance(m, dict) and "platform" in m for m in manifests):
            return select_platform(index, self.platform, str(self.ref))
        raise ImageError(f"OCI layout {self.ref.path} holds {len(manifests)} images: name one with oci://PATH:TAG")

    def resolve(self) -> ResolvedImage:
        what = str(self.ref)
        desc = self._pick_from_top(self._index())
        for _ in range(MAX_NESTING):
            digest, size, media_type = descriptor(desc, what)
            data = self._read_document(digest, size, f"manifest of {what}")
            doc = parse_manifest(data, f"manifest {digest} of {what}")
            actual_type = doc.get("mediaType", media_type)
            if media_type and actual_type and media_type != actual_type:
                raise ImageError(f"manifest {digest} of {what}: media type `{actual_type}` does not match its descriptor's `{media_type}`")
            if actual_type in INDEX_TYPES or (not actual_type and "manifests" in doc):
                desc = select_platform(doc, self.platform, what)
                continue
            cdigest, csize, _ = descriptor(doc.get("config"), f"config of {what}")
            config = self._read_document(cdigest, csize, f"config of {what}")
            return image_from_documents(doc, config, cdigest, digest, what)
        raise ImageError(f"{what}: indexes nested more than {MAX_NESTING} deep")

    def open_blob(self, layer: LayerDescriptor) -> BinaryIO:
        assert layer.digest is not None
        try:
            return open(self._blob_path(layer.digest), "rb", buffering=0)
        except FileNotFoundError:
            raise ImageError(f"{layer.name}: blob is missing from the layout {self.ref.path}") from None

    def close(self) -> None:
        pass
