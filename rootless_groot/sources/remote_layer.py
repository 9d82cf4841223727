"""Layers that live only at their descriptor's ``urls`` (Garden's droplet layer), streamed over HTTP(S).

GrootFS reads them through containers/image, which fetches ``urls`` with a plain HTTP client:
no registry credentials, ``http://`` allowed. The integrity check is the layer digest, which
the store verifies while it unpacks (see ``OCILayoutSource.resolve`` for when it is checked).
``requests`` is imported only here, i.e. only when such a layer is missing from the store.
"""
from __future__ import annotations

import io
import time
from typing import Any

from .. import log
from ..errors import ImageError, LayerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .base import LayerDescriptor


class UrlStream(io.RawIOBase):
    """The body of the first of ``layer.urls`` that answers 200, read without decoding."""

    def __init__(self, layer: LayerDescriptor, insecure: tuple[str, ...] = (), client_certs_dir: str | None = None):
        super().__init__()
        from .registry_http import Transport

        self.layer = layer
        self.transport = Transport(insecure=insecure, allow_http=True, client_certs_dir=client_certs_dir)
        self.resp: Any = None
        self.count = 0
        self.started = time.monotonic()
        failures = []
        for url in layer.urls:
            if not url.lower().startswith(("https://", "http://")):
                failures.append(f"{_redact(url)}: not an http(s) URL")
                continue
            try:
                resp = self.transport.request("GET", url, {"Accept": "*/*"}, what=layer.name)
            except ImageError as e:
                failures.append(f"{_redact(url)}: {e}")
                continue
            if resp.status_code == 200:
                self.resp, self.url = resp, url
                log.info("remote-layer.fetching", layer=layer.name, url=_redact(url))
                return
            failures.append(f"{_redact(url)}: HTTP {resp.status_code}")
            resp.close()
        self.transport.close()
        raise LayerError(f"{layer.name}: cannot fetch it from its urls ({'; '.join(failures) or 'none'})")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.resp.raw.read(len(buffer), decode_content=False)
        except Exception as e:  # noqa: BLE001 - urllib3/socket errors
            raise LayerError(f"{self.layer.name}: download from {_redact(self.url)} failed: {type(e).__name__}") from None
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        if self.resp is not None:
            log.info("remote-layer.fetched", layer=self.layer.name, bytes=self.count,
                     seconds=round(time.monotonic() - self.started, 3))
            self.resp.close()
            self.resp = None
            self.transport.close()
        super().close()


def _redact(url: str) -> str:
    """A URL for messages: no query (Diego's droplet URLs may carry signed tokens), no userinfo."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"
