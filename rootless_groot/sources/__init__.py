"""Image sources; ``open_source`` picks one by reference kind (imports stay lazy)."""
from __future__ import annotations

from ..refs import DockerRef, OCILayoutRef, TarballRef

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import ImageSource


def open_source(ref: DockerRef | OCILayoutRef | TarballRef, platform: dict[str, str] | None = None, **registry_options) -> ImageSource:
    skip_validation = bool(registry_options.pop("skip_layer_validation", False))  # GrootFS: oci:// only
    client_certs_dir = registry_options.pop("remote_layer_client_certificates_path", None)
    pending = registry_options.pop("pending_head", None)  # from start_check
    if pending is not None and not isinstance(ref, DockerRef):
        pending.close()
    if isinstance(ref, OCILayoutRef):
        from .oci_layout import OCILayoutSource

        return OCILayoutSource(ref, platform, skip_validation, client_certs_dir)
    if isinstance(ref, TarballRef):
        from .tarball import TarballSource

        return TarballSource(ref)
    if isinstance(ref, DockerRef):
        store_root = registry_options.get("store_root")
        warm = _cached_registry_image(ref, platform, store_root) if store_root else None
        if warm is not None:
            due = _head_due(ref, registry_options)
            if due is not False:
                if due:  # resolve() waits for the registry's answer; the caller works meanwhile
                    pending = pending or start_check(ref, registry_options)
                elif pending is not None:
                    pending.close()
                    pending = None
                return _WarmRegistrySource(warm[0], warm[1], pending,
                                           lambda: _registry_source(ref, platform, registry_options))
        if pending is not None:
            pending.close()
        return _registry_source(ref, platform, registry_options)
    raise TypeError(ref)


def _head_due(ref: DockerRef, options: dict) -> bool | None:
    """True if a cached resolution needs the anonymous HEAD; None if it needs nothing
    (pinned by digest, or ``--pull missing|never``); False if only the full client may
    decide (Docker Hub, always a token; mirrors)."""
    policy = options.get("pull_policy") or "always"
    if ref.digest or policy in ("missing", "never"):
        return None
    return not (ref.registry == "docker.io" or options.get("mirrors"))


def start_check(ref, options: dict):
    """Send now the HEAD that a cached resolution of ``ref`` will need (a PendingHead, or
    None): the registry answers while the caller opens the store and reads the cache."""
    if not isinstance(ref, DockerRef) or not _head_due(ref, options):
        return None
    from .registry_light import start_head

    return start_head(ref.registry, ref.repository, ref.reference,
                      insecure_registries=tuple(options.get("insecure_registries") or ()),
                      registry_ca=options.get("registry_ca"))


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

    With ``--pull always`` the cached resolution (``cached``) holds only if one anonymous HEAD
    (``pending``, sent early) shows the same manifest digest: ``resolve()`` reads its answer,
    and resolves through the registry client when it differs or cannot be had. Should a layer
    vanish before it is used (a concurrent ``clean``), the real source is made then.
    """

    def __init__(self, image, top_digest: str, pending, make_source):
        self.cached = image
        self._top_digest = top_digest
        self._pending = pending
        self._make_source = make_source
        self._source = None

    def resolve(self):
        from .. import log

        pending, self._pending = self._pending, None
        if pending is not None and pending.digest() != self._top_digest:
            self._source = self._make_source()
            return self._source.resolve()
        log.info("registry.cached", manifest=self.cached.manifest_digest)
        return self.cached

    def open_blob(self, layer):
        if self._source is None:
            self._source = self._make_source()
            self._source.resolve()  # authenticates and picks the endpoint
        return self._source.open_blob(layer)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.close()
        if self._source is not None:
            self._source.close()
