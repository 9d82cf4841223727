"""Image sources; ``open_source`` picks one by reference kind (imports stay lazy)."""
from __future__ import annotations

from ..refs import DockerRef, ImageRef, OCILayoutRef, TarballRef
from .base import ImageSource


def open_source(ref: ImageRef, platform: dict[str, str] | None = None, **registry_options) -> ImageSource:
    if isinstance(ref, OCILayoutRef):
        from .oci_layout import OCILayoutSource

        return OCILayoutSource(ref, platform)
    if isinstance(ref, TarballRef):
        from .tarball import TarballSource

        return TarballSource(ref)
    if isinstance(ref, DockerRef):
        from ..errors import ImageError

        raise ImageError(f"pulling from registries is not implemented yet: {ref}")
    raise TypeError(ref)
