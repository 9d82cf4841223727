"""Image sources; ``open_source`` picks one by reference kind (imports stay lazy)."""
from __future__ import annotations

from ..refs import DockerRef, OCILayoutRef, TarballRef

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import ImageSource


def open_source(ref: DockerRef | OCILayoutRef | TarballRef, platform: dict[str, str] | None = None, **registry_options) -> ImageSource:
    skip_validation = bool(registry_options.pop("skip_layer_validation", False))  # GrootFS: oci:// only
    client_certs_dir = registry_options.pop("remote_layer_client_certificates_path", None)
    if isinstance(ref, OCILayoutRef):
        from .oci_layout import OCILayoutSource

        return OCILayoutSource(ref, platform, skip_validation, client_certs_dir)
    if isinstance(ref, TarballRef):
        from .tarball import TarballSource

        return TarballSource(ref)
    if isinstance(ref, DockerRef):
        store_root = registry_options.get("store_root")
        warm = _cached_registry_image(ref, platform, store_root) if store_root else None
        if warm is not None and _still_current(ref, warm[1], registry_options):
            return _WarmRegistrySource(warm[0], lambda: _registry_source(ref, platform, registry_options))
        return _registry_source(ref, platform, registry_options)
    raise TypeError(ref)


def _still_current(ref: DockerRef, top_digest: str, options: dict) -> bool:
    """Whether a cached resolution may be used without the full registry client.

    Pinned by digest, or ``--pull missing|never``: yes. Otherwise (``--pull always``) one
    anonymous HEAD must show the same manifest digest; Docker Hub (always a token) and
    mirrors are left to the full client.
    """
    policy = options.get("pull_policy") or "always"
    if ref.digest or policy in ("missing", "never"):
        return True
    if ref.registry == "docker.io" or options.get("mirrors"):
        return False
    from .registry_light import head_manifest_digest

    current = head_manifest_digest(ref.registry, ref.repository, ref.reference,
                                   insecure_registries=tuple(options.get("insecure_registries") or ()),
                                   registry_ca=options.get("registry_ca"))
    return current == top_digest


def _registry_source(ref: DockerRef, platform: dict[str, str] | None, registry_options: dict) -> ImageSource:
    from .registry import RegistryOptions, RegistrySource

    options = {k: v for k, v in registry_options.items() if v is not None}
    if "insecure_registries" in options:
        options["insecure_registries"] = tuple(options["insecure_registries"])
    if "mirrors" in options:
        options["mirrors"] = tuple(options["mirrors"])
    return RegistrySource(ref, platform, RegistryOptions(**options))


def _cached_registry_image(ref: DockerRef, platform: dict[str, str] | None, store_root: str):
    """(image, top-level manifest digest) of the store's last resolution of ``ref`` if all its
    layers are still there, else None."""
    from .base import runtime_platform
    from .registry_cache import cache_key, layers_present, load_cached

    cached = load_cached(store_root, cache_key(ref, platform or runtime_platform()))
    if cached is None or not layers_present(store_root, cached[0]):
        return None
    return cached


class _WarmRegistrySource:
    """A registry image whose resolution and layers are all in the store: no HTTP stack at all.

    Should a layer vanish before it is used (a concurrent ``clean``), the real source is made then.
    """

    def __init__(self, image, make_source):
        self._image = image
        self._make_source = make_source
        self._source = None

    def resolve(self):
        from .. import log

        log.info("registry.cached", manifest=self._image.manifest_digest)
        return self._image

    def open_blob(self, layer):
        if self._source is None:
            self._source = self._make_source()
            self._source.resolve()  # authenticates and picks the endpoint
        return self._source.open_blob(layer)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
