"""Image sources; ``open_source`` picks one by reference kind (imports stay lazy)."""
from __future__ import annotations

from ..refs import DockerRef, OCILayoutRef, TarballRef

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import ImageSource


def open_source(ref: DockerRef | OCILayoutRef | TarballRef, platform: dict[str, str] | None = None, **registry_options) -> ImageSource:
    if isinstance(ref, OCILayoutRef):
        from .oci_layout import OCILayoutSource

        return OCILayoutSource(ref, platform)
    if isinstance(ref, TarballRef):
        from .tarball import TarballSource

        return TarballSource(ref)
    if isinstance(ref, DockerRef):
        from .registry import RegistryOptions, RegistrySource

        options = {k: v for k, v in registry_options.items() if v is not None}
        if "insecure_registries" in options:
            options["insecure_registries"] = tuple(options["insecure_registries"])
        if "mirrors" in options:
            options["mirrors"] = tuple(options["mirrors"])
        return RegistrySource(ref, platform, RegistryOptions(**options))
    raise TypeError(ref)
