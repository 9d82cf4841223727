"""The registry source's resolution cache: ``<store>/refs/<sha256 of ref + platform>.json``.

Kept apart from ``registry.py`` so that a warm ``create --pull=missing`` (or of a reference
pinned by digest) reads it without importing the HTTP stack at all.
"""
from __future__ import annotations

import os

from .. import log
from ..digests import check_digest, sha256_hex
from ..errors import ImageError
from ..fastjson import dumps, loads
from .base import MAX_DOCUMENT, LayerDescriptor, ResolvedImage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..refs import DockerRef

CACHE_VERSION = 1


def cache_key(ref: DockerRef, platform: dict[str, str]) -> str:
    plat = "/".join((platform.get("os", ""), platform.get("architecture", ""), platform.get("variant", "")))
    return f"{ref.registry}/{ref.repository}:{ref.tag or ''}@{ref.digest or ''}|{plat}"


def cache_path(store_root: str, key: str) -> str:
    return os.path.join(store_root, "refs", sha256_hex(key.encode()) + ".json")


def image_to_json(image: ResolvedImage) -> dict[str, Any]:
    return {
        "layers": [{"chain_id": l.chain_id, "digest": l.digest, "size": l.size, "diff_id": l.diff_id,
                    "media_type": l.media_type, "urls": list(l.urls)} for l in image.layers],
        "env": list(image.env),
        "manifest_digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "config": image.config or {},
    }


def image_from_json(doc: dict[str, Any]) -> ResolvedImage:
    """Rebuild a ResolvedImage from the cache, validating every value (the file is only data)."""
    layers = []
    for item in doc["layers"]:
        chain = item["chain_id"]
        if not isinstance(chain, str) or len(chain) != 64 or any(c not in "0123456789abcdef" for c in chain):
            raise ValueError("chain id")
        size = item["size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError("size")
        urls = item.get("urls") or []
        if not all(isinstance(u, str) for u in urls) or not isinstance(item["media_type"], str):
            raise ValueError("urls")
        layers.append(LayerDescriptor(chain, check_digest(item["digest"]), size, check_digest(item["diff_id"]),
                                      item["media_type"], tuple(urls)))
    env = doc["env"]
    if not layers or not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise ValueError("env")
    config = doc["config"]  # a cache written before it was kept is unusable: resolved again
    if not isinstance(config, dict):
        raise ValueError("config")
    return ResolvedImage(layers, env, check_digest(doc["manifest_digest"]), check_digest(doc["config_digest"]),
                         config)


def load_cached(store_root: str, key: str) -> tuple[ResolvedImage, str] | None:
    """(image, digest of the top-level manifest) or None if absent or unusable."""
    path = cache_path(store_root, key)
    try:
        with open(path, "rb") as f:
            doc = loads(f.read(MAX_DOCUMENT))
        if doc.get("version") != CACHE_VERSION or doc.get("key") != key:
            return None
        return image_from_json(doc["image"]), check_digest(doc["top_digest"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ImageError, AttributeError):
        log.debug("registry.cache-unusable", path=path)
        return None


def store_cached(store_root: str, key: str, image: ResolvedImage, top_digest: str) -> None:
    """Write atomically (temp file + rename); a failure only costs the warm path."""
    path = cache_path(store_root, key)
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(dumps({"version": CACHE_VERSION, "key": key, "top_digest": top_digest,
                           "image": image_to_json(image)}))
        os.rename(tmp, path)
    except OSError as e:
        log.debug("registry.cache-write-failed", path=path, error=e.strerror)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def layers_present(store_root: str, image: ResolvedImage) -> bool:
    return all(os.path.isdir(os.path.join(store_root, "layers", l.chain_id)) for l in image.layers)
