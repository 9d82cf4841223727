"""What every image source yields: one interface for OCI layouts, tarballs and registries.

Data flows one way: a source resolves a reference into a ``ResolvedImage`` (config +
layer descriptors, cheap: no layer bytes), then the store asks ``open_blob`` only for
layers it does not have yet, and streams them through verification and unpacking.
"""
from __future__ import annotations

import os

from ..digests import chain_ids, check_digest, sha256_hex
from ..errors import ImageError
from ..jsonutil import loads_strict
from ..record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Protocol

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
}
MAX_DOCUMENT = 4 << 20  # manifests, indexes and configs larger than this are refused
# Cloud Foundry's layer annotation (Garden's preloaded+layer images): unpack the layer under this dir
BASE_DIR_ANNOTATION = "org.cloudfoundry.experimental.image.base-directory"


class LayerDescriptor(Record):
    """One layer: what to fetch, what it must hash to, and its cache key."""

    __slots__ = ("chain_id", "digest", "size", "diff_id", "media_type", "urls", "base_dir", "verify_digest",
                 "verify_size", "verify_diff_id")
    _defaults = {"urls": (), "base_dir": None, "verify_digest": True, "verify_size": True, "verify_diff_id": True}
    chain_id: str
    digest: str | None  # of the blob as stored (None: nothing to check, e.g. a local tarball)
    size: int | None
    diff_id: str | None  # of the uncompressed tar, from the image config
    media_type: str
    urls: tuple[str, ...]
    base_dir: str | None  # CF's base-directory annotation: the entries go under this dir ("home/vcap")
    verify_digest: bool  # False: the digest names the blob but is not checked (--skip-layer-validation)
    verify_size: bool
    verify_diff_id: bool

    @property
    def name(self) -> str:
        """How errors and logs name the layer."""
        return f"layer {self.digest or self.chain_id}"


class ResolvedImage(Record):
    """What a source knows about an image before any layer is fetched."""

    __slots__ = ("layers", "env", "manifest_digest", "config_digest", "config")
    _defaults = {"env": (), "manifest_digest": None, "config_digest": None, "config": None}
    layers: list[LayerDescriptor]  # base first
    env: list[str]
    manifest_digest: str | None
    config_digest: str | None
    config: dict[str, Any] | None  # run_config(): what a runtime needs (None: a tarball, no config)


if TYPE_CHECKING:

    class ImageSource(Protocol):
        """The one interface of every image source (a type only: nothing to import at run time)."""

        def resolve(self) -> ResolvedImage:
            """Read manifest and config (small documents only)."""

        def open_blob(self, layer: LayerDescriptor) -> BinaryIO:
            """The layer's raw stored bytes; the caller verifies them while streaming."""

        def close(self) -> None:
            ...


def runtime_platform() -> dict[str, str]:
    """This machine as an OCI platform (os, architecture, variant)."""
    machine = os.uname().machine.lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
            "armv6l": "arm", "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(machine, machine)
    variant = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(machine, "")
    return {"os": "linux", "architecture": arch, "variant": variant}


def parse_platform(text: str) -> dict[str, str]:
    """``os/arch[/variant]`` as given to ``--platform``."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform `{text}`: expected OS/ARCH[/VARIANT]")
    if parts[0] not in KNOWN_OS:
        raise ImageError(f"invalid platform `{text}`: unknown OS `{parts[0]}` (one of {', '.join(KNOWN_OS)})")
    if parts[1] not in KNOWN_ARCH:
        raise ImageError(f"invalid platform `{text}`: unknown architecture `{parts[1]}` "
                         f"(one of {', '.join(KNOWN_ARCH)})")
    return {"os": parts[0], "architecture": parts[1], "variant": parts[2] if len(parts) == 3 else ""}


def _norm_variant(arch: str, variant: str) -> str:
    if arch == "arm64" and variant in ("", "v8"):
        return "v8"
    return variant


def select_platform(index: dict[str, Any], want: dict[str, str], what: str) -> dict[str, Any]:
    """Pick the manifest descriptor for ``want`` from an index (first exact match wins).

    A variant the caller did not ask for matches any; ``arm64`` and ``arm64/v8`` are the same.
    """
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{what} lists no manifests")
    candidates = []
    for desc in manifests:
        if not isinstance(desc, dict):
            raise ImageError(f"{what} has a malformed manifest entry")
        plat = desc.get("platform")
        if not isinstance(plat, dict):
            continue
        if plat.get("os") != want["os"] or plat.get("architecture") != want["architecture"]:
            continue
        have_variant = _norm_variant(plat.get("architecture", ""), plat.get("variant", "") or "")
        want_variant = _norm_variant(want["architecture"], want.get("variant", ""))
        if want_variant and have_variant and have_variant != want_variant:
            continue
        candidates.append(desc)
    if candidates:
        return candidates[0]
    if all("platform" not in d for d in manifests) and len(manifests) == 1:
        return manifests[0]
    plat_text = "/".join(v for v in (want["os"], want["architecture"], want.get("variant")) if v)
    raise ImageError(f"{what} has no image for platform {plat_text}")


def parse_manifest(data: bytes, what: str) -> dict[str, Any]:
    """Validate an image manifest's shape; Docker schema 1 is refused with a clear message."""
    doc = loads_strict(data, what)
    media_type = doc.get("mediaType")
    if doc.get("schemaVersion") == 1 or media_type in DOCKER_SCHEMA1:
        raise ImageError(f"{what} is a Docker schema 1 manifest, which is not supported: re-push the image with a current client")
    if media_type is not None and media_type not in MANIFEST_TYPES and media_type not in INDEX_TYPES:
        raise ImageError(f"{what} has unsupported media type `{media_type}`")
    return doc


def descriptor(doc: Any, what: str) -> tuple[str, int, str]:
    """Validate a content descriptor: (digest, size, mediaType)."""
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: malformed descriptor")
    digest, size, media_type = doc.get("digest"), doc.get("size"), doc.get("mediaType", "")
    check_digest(digest, f"digest in {what}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageError(f"{what}: invalid size `{size}`")
    if not isinstance(media_type, str):
        raise ImageError(f"{what}: invalid media type")
    return digest, size, media_type


def image_from_documents(manifest: dict[str, Any], config_bytes: bytes, config_digest: str, manifest_digest: str | None,
                         what: str) -> ResolvedImage:
    """Combine a manifest and its (already verified) config into layer descriptors."""
    config = loads_strict(config_bytes, f"config of {what}")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    layers_doc = manifest.get("layers")
    if not isinstance(layers_doc, list) or not layers_doc:
        raise ImageError(f"{what} has no layers")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers_doc):
        count = len(diff_ids) if isinstance(diff_ids, list) else 0
        raise ImageError(f"{what}: the config lists {count} diffIDs for {len(layers_doc)} layers")
    chains = chain_ids(diff_ids)
    layers = []
    for i, (layer_doc, diff_id, chain) in enumerate(zip(layers_doc, diff_ids, chains)):
        digest, size, media_type = descriptor(layer_doc, f"layer {i} of {what}")
        if media_type not in LAYER_TYPES:
            raise ImageError(f"layer {digest} of {what} has unsupported media type `{media_type}`")
        urls = layer_doc.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ImageError(f"layer {digest} of {what} has malformed urls")
        base_dir = _base_dir(layer_doc.get("annotations"), f"layer {digest} of {what}")
        layers.append(LayerDescriptor(chain, digest, size, diff_id, media_type, tuple(urls), base_dir))
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageError(f"config of {what} is malformed")
    env = inner.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise ImageError(f"config of {what} has a malformed Env")
    return ResolvedImage(layers, env, manifest_digest, config_digest, run_config(config, what))


RUN_KEYS = ("Entrypoint", "Cmd", "WorkingDir", "User")


def run_config(config: dict[str, Any], what: str) -> dict[str, Any]:
    """What ``run`` and ``bundle`` need from an image config, and its platform (checked
    against ``--platform``): a small dict kept in the store with the image."""
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageError(f"config of {what} is malformed")
    out: dict[str, Any] = {}
    for key in RUN_KEYS:
        value = inner.get(key)
        if value is None:
            continue
        if key in ("Entrypoint", "Cmd"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ImageError(f"config of {what} has a malformed {key}")
        elif not isinstance(value, str):
            raise ImageError(f"config of {what} has a malformed {key}")
        out[key] = value
    for key in ("os", "architecture", "variant"):
        if isinstance(config.get(key), str) and config[key]:
            out[key] = config[key]
    return out


KNOWN_OS = ("linux", "windows", "freebsd", "darwin")
KNOWN_ARCH = ("amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
              "mipsle", "mips", "loong64", "wasm")


def check_platform(image: ResolvedImage, want: dict[str, str], what: str) -> None:
    """Refuse an image built for another platform than ``--platform`` asked for (a single-platform
    image is not narrowed by an index, so without this it would be used whatever it is)."""
    config = image.config or {}
    have_os, have_arch = config.get("os"), config.get("architecture")
    if not have_arch:
        return  # a tarball, or a config that does not say: nothing to compare
    have_variant = _norm_variant(have_arch, config.get("variant", ""))
    want_variant = _norm_variant(want["architecture"], want.get("variant", ""))
    if ((have_os and have_os != want["os"]) or have_arch != want["architecture"]
            or (want_variant and have_variant and want_variant != have_variant)):
        have = "/".join(v for v in (have_os, have_arch, config.get("variant")) if v)
        asked = "/".join(v for v in (want["os"], want["architecture"], want.get("variant")) if v)
        raise ImageError(f"{what} is built for {have}, not for the requested platform {asked}")


def _base_dir(annotations: Any, what: str) -> str | None:
    """The base-directory annotation as a relative path ("home/vcap"), None for "/" or none."""
    if not isinstance(annotations, dict) or BASE_DIR_ANNOTATION not in annotations:
        return None
    value = annotations[BASE_DIR_ANNOTATION]
    if not isinstance(value, str) or "\x00" in value:
        raise ImageError(f"{what}: invalid base directory annotation")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{what}: invalid base directory `{value}`")
    return "/".join(parts) or None


def rechain(layers: list[LayerDescriptor], keys: list[str]) -> list[LayerDescriptor]:
    """The layers with chain IDs recomputed from per-layer keys (hex), GrootFS's formula."""
    out: list[LayerDescriptor] = []
    parent = None
    for layer, key in zip(layers, keys):
        chain = key if parent is None else sha256_hex(f"{parent} {key}".encode())
        out.append(layer.replace(chain_id=chain))
        parent = chain
    return out
