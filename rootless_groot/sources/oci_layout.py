"""OCI image layouts on disk (``oci:///abs/path[:tag]``): index.json, nested indexes, platforms.

GrootFS's rules, which Garden's ``preloaded+layer`` images rely on (Garden writes such a
layout per container and calls ``create oci:///<depot>/<handle>/image``):

- indexes, manifests and configs are taken as they are, whatever size their descriptor says
  (Garden writes size 0 everywhere); one whose digest does not match is used too, with an
  error in the log (GrootFS does not check them in a local layout, and its own test layouts
  have hand-edited manifests); layers stay checked against the config's diffIDs;
- ``--skip-layer-validation`` (``create.skip_layer_validation``) skips the layers' size,
  digest and diffID checks; a layer fetched from its ``urls`` is still checked against its
  digest (the droplet's sha256), the one protection of a download;
- a layer missing from ``blobs/`` is fetched from its ``urls`` (http or https);
- a layer whose blob is a symlink and whose "digest" is Garden's hash of the target's path
  and mtime is keyed by the file itself (path, size, mtime, ctime, inode: the key of a
  tarball image of the same file, so both share one unpacked layer), so a changed tarball
  is unpacked again even when its mtime was kept.
"""
from __future__ import annotations

import os

from .. import log
from ..digests import document_digest_matches, sha256_hex
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
    rechain,
    runtime_platform,
    select_platform,
)

REF_NAME = "org.opencontainers.image.ref.name"
MAX_NESTING = 8


class OCILayoutSource:
    def __init__(self, ref: OCILayoutRef, platform: dict[str, str] | None = None, skip_validation: bool = False,
                 client_certs_dir: str | None = None):
        self.ref = ref
        self.client_certs_dir = client_certs_dir  # for layers fetched from their urls
        self.platform = platform or runtime_platform()
        self.skip_validation = skip_validation
        self._stamps: dict[str, tuple[int, ...]] = {}  # digest -> identity of the file a path-keyed blob was

    def _blob_path(self, digest: str) -> str:
        algorithm, hex_digest = digest.split(":", 1)  # digest was validated by descriptor()
        return os.path.join(self.ref.path, "blobs", algorithm, hex_digest)

    def _read_document(self, digest: str, size: int, what: str) -> bytes:
        """Read a small blob. A size or digest that differs from the descriptor's is only
        logged: GrootFS (containers/image) takes a local layout's documents as they are."""
        try:
            with open(self._blob_path(digest), "rb") as f:
                data = f.read(MAX_DOCUMENT + 1)
        except FileNotFoundError:
            raise ImageError(f"{what}: blob {digest} is missing from the layout") from None
        if len(data) > MAX_DOCUMENT:
            raise ImageError(f"{what} is larger than {MAX_DOCUMENT} bytes")
        if len(data) != size:
            log.debug("oci.document-size-differs", what=what, digest=digest, expected=size, actual=len(data))
        if not document_digest_matches(digest, data):
            log.error("oci.document-digest-mismatch", what=what, digest=digest,
                      error=f"{what}: blob {digest} does not match its digest; used as it is")
        return data

    def _index(self) -> dict[str, Any]:
        path = os.path.join(self.ref.path, "index.json")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_DOCUMENT + 1)
        except FileNotFoundError:
            if not os.path.isdir(self.ref.path):
                raise NotFound(f"Image source doesn't exist: OCI layout {self.ref.path}") from None
            raise ImageError(f"{self.ref.path} is not an OCI layout: no index.json") from None
        if len(data) > MAX_DOCUMENT:
            raise ImageError(f"{path} is too large")
        return loads_strict(data, path)

    def _pick_from_top(self, index: dict[str, Any]) -> dict[str, Any]:
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise ImageError(f"OCI layout {self.ref.path} holds no images")
        if self.ref.tag is not None:
            named = [m for m in manifests if isinstance(m, dict) and isinstance(m.get("annotations"), dict)
                     and m["annotations"].get(REF_NAME) == self.ref.tag]
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
            return self._adjust(image_from_documents(doc, config, cdigest, digest, what))
        raise ImageError(f"{what}: indexes nested more than {MAX_NESTING} deep")

    def _adjust(self, image: ResolvedImage) -> ResolvedImage:
        """What to check per layer, and the cache keys of path-keyed blobs (see the module doc)."""
        layers, keys, stamped = [], [], False
        for layer in image.layers:
            assert layer.digest is not None and layer.diff_id is not None
            key = layer.diff_id.split(":", 1)[1]
            stamp = self._path_stamp(layer.digest)
            if stamp is not None:
                key, stamped = stamp, True
            if self.skip_validation:
                remote = bool(layer.urls) and not os.path.exists(self._blob_path(layer.digest))
                layer = layer.replace(verify_size=False, verify_diff_id=False, verify_digest=remote)
            layers.append(layer)
            keys.append(key)
        if stamped:
            layers = rechain(layers, keys)
        return image.replace(layers=layers)

    def _path_stamp(self, digest: str) -> str | None:
        """For a blob that is a symlink whose digest is sha256("<target>-<mtime ns>") (Garden's base
        layer), the tarball key of the target file; else None."""
        path = self._blob_path(digest)
        try:
            target = os.readlink(path)
            st = os.stat(path)
        except OSError:
            return None
        if not digest.startswith("sha256:") or sha256_hex(f"{target}-{st.st_mtime_ns}".encode()) != digest[7:]:
            return None
        from .tarball import file_key

        self._stamps[digest] = _identity(st)
        return file_key(os.path.realpath(path), st)

    def open_blob(self, layer: LayerDescriptor) -> BinaryIO:
        assert layer.digest is not None
        try:
            f = open(self._blob_path(layer.digest), "rb", buffering=0)
        except FileNotFoundError:
            if layer.urls:
                from .remote_layer import UrlStream

                return UrlStream(layer, client_certs_dir=self.client_certs_dir)  # type: ignore[return-value]
            raise ImageError(f"{layer.name}: blob is missing from the layout {self.ref.path}") from None
        stamp = self._stamps.get(layer.digest)
        if stamp is not None and _identity(os.fstat(f.fileno())) != stamp:
            f.close()
            raise ImageError(f"{layer.name}: {os.path.realpath(self._blob_path(layer.digest))} changed while the "
                             "image was being created: try again")
        return f

    def close(self) -> None:
        pass


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
