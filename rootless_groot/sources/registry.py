"""Images from Docker and OCI registries (``docker://``): the distribution-spec pull flow.

``resolve()`` reads the manifest (an index is narrowed to one platform), then the config;
``open_blob()`` streams a layer's raw bytes, resuming with ``Range`` after a cut. Transport
rules (redirects, TLS, retries) live in ``registry_http``, auth in ``registry_auth``.

Warm path: a small resolution cache per store (``<store>/refs/<sha256>.json``) keeps the
last resolution of a reference + platform. With ``pull_policy="missing"`` (``--pull=missing``)
a cached image whose layers are all in the store is used without any request — and
without importing ``requests``; by digest, the same holds for any policy (the content
cannot change). With ``"always"`` (the default) one ``HEAD`` of the manifest tells whether
the tag still points where it did. ``"never"`` uses the cache or fails.

No threads are started here: the store forks one worker per missing layer after resolve().
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import log
from ..digests import check_digest
from ..errors import ImageError, LayerError, NotFound, UsageError
from ..refs import DockerRef, is_digest
from .registry_cache import cache_key, layers_present as _layers_present, load_cached, store_cached
from .base import (
    DOCKER_CONFIG,
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_DOCUMENT,
    OCI_CONFIG,
    LayerDescriptor,
    ResolvedImage,
    descriptor,
    image_from_documents,
    parse_manifest,
    runtime_platform,
    select_platform,
)

DOCKER_HUB_API = "https://registry-1.docker.io"
MANIFEST_ACCEPT = ", ".join(INDEX_TYPES[:1] + MANIFEST_TYPES[:1] + INDEX_TYPES[1:] + MANIFEST_TYPES[1:])
MAX_NESTING = 8
MAX_RESUMES = 5
PULL_POLICIES = ("always", "missing", "never")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass
class Endpoint:
    """Where the API is (``scheme://host[:port]``), the name credentials are stored under, the repo path."""

    base: str
    registry: str
    repository: str
    mirror: bool = False
    auth: Any = None  # registry_auth.Authenticator, set on first use

    @property
    def host(self) -> str:
        return self.base.split("://", 1)[1]


@dataclass
class RegistryOptions:
    username: str | None = None
    password: str | None = None
    insecure_registries: tuple[str, ...] = ()
    registry_ca: str | None = None
    mirrors: tuple[str, ...] = ()
    store_root: str | None = None
    pull_policy: str = "always"
    registries_conf: tuple[str, ...] | None = None  # None: the standard locations
    inactivity_timeout: float = 30.0  # seconds without a byte from the registry before giving up
    extra: dict[str, Any] = field(default_factory=dict)


# ---- registries.conf (mirrors, insecure) ------------------------------------------------------

def registries_conf_paths() -> list[str]:
    home = os.path.expanduser("~")
    user = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "containers",
                        "registries.conf")
    return [user, "/etc/containers/registries.conf"]


def read_registries_conf(paths: list[str] | tuple[str, ...], registry: str) -> tuple[list[str], list[str]]:
    """(mirror locations, insecure hosts) for ``registry`` from the first registries.conf found."""
    import tomllib

    for path in paths:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:  # another user's file (an inherited $XDG_CONFIG_HOME): not ours to read
            log.info("registries-conf-unreadable", path=path)
            continue
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        mirrors: list[str] = []
        insecure: list[str] = []
        legacy = doc.get("registries")
        if isinstance(legacy, dict) and isinstance(legacy.get("insecure"), dict):
            insecure += [h for h in legacy["insecure"].get("registries", []) if isinstance(h, str)]
        for entry in doc.get("registry") or []:
            if not isinstance(entry, dict):
                continue
            location = entry.get("location") or entry.get("prefix")
            if not isinstance(location, str):
                continue
            location = location.rstrip("/")
            if location in ("index.docker.io", "registry-1.docker.io"):
                location = "docker.io"
            if entry.get("insecure") is True:
                insecure.append(location)
            if location != registry:
                continue
            for mirror in entry.get("mirror") or []:
                if isinstance(mirror, dict) and isinstance(mirror.get("location"), str):
                    mirrors.append(mirror["location"])
                    if mirror.get("insecure") is True:
                        insecure.append(mirror["location"].split("/", 1)[0])
        return mirrors, insecure
    return [], []


def mirror_endpoint(location: str, repository: str) -> tuple[Endpoint, str | None]:
    """``[http[s]://]host[:port][/prefix]`` -> endpoint; returns an insecure host for ``http://``."""
    scheme, insecure = "https", None
    for prefix in ("https://", "http://"):
        if location.lower().startswith(prefix):
            scheme = prefix[:-3]
            location = location[len(prefix):]
    location = location.rstrip("/")
    host, _, path = location.partition("/")
    if not host:
        raise UsageError(f"invalid registry mirror `{location}`")
    if scheme == "http":
        insecure = host
    repo = f"{path}/{repository}" if path else repository
    return Endpoint(f"{scheme}://{host.lower()}", host.lower(), repo, mirror=True), insecure


def _hash(algorithm_digest: str, data: bytes) -> str:
    algorithm = algorithm_digest.split(":", 1)[0]
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _media_type(resp: Any) -> str:
    return (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()


# ---- the source ------------------------------------------------------------------------------

class RegistrySource:
    def __init__(self, ref: DockerRef, platform: dict[str, str] | None = None, options: RegistryOptions | None = None):
        self.ref = ref
        self.platform = platform or runtime_platform()
        self.options = options or RegistryOptions()
        if self.options.pull_policy not in PULL_POLICIES:
            raise UsageError(f"invalid pull policy `{self.options.pull_policy}`: use {', '.join(PULL_POLICIES)}")
        self.what = f"docker://{ref}"
        self.transport: Any = None
        self.endpoint: Endpoint | None = None  # the one that served the manifest; blobs come from it
        self._endpoints: list[Endpoint] | None = None

    # -- setup ---------------------------------------------------------------------------
    def _setup(self) -> list[Endpoint]:
        if self._endpoints is not None:
            return self._endpoints
        from .registry_http import Transport

        ref = self.ref
        insecure = list(self.options.insecure_registries)
        conf_paths = self.options.registries_conf
        mirror_locations: list[str] = list(self.options.mirrors) if ref.registry == "docker.io" else []
        conf_mirrors, conf_insecure = read_registries_conf(
            registries_conf_paths() if conf_paths is None else conf_paths, ref.registry)
        insecure += conf_insecure
        endpoints: list[Endpoint] = []
        for location in mirror_locations + conf_mirrors:
            ep, insecure_host = mirror_endpoint(location, ref.repository)
            if insecure_host:
                insecure.append(insecure_host)
            endpoints.append(ep)
        if ref.registry == "docker.io":
            endpoints.append(Endpoint(DOCKER_HUB_API, "docker.io", ref.repository))
        else:
            endpoints.append(Endpoint(f"https://{ref.registry}", ref.registry, ref.repository))
        self.transport = Transport(insecure, self.options.registry_ca, timeout=self.options.inactivity_timeout)
        for ep in endpoints:
            self._attach_auth(ep)
        self._endpoints = endpoints
        return endpoints

    def _attach_auth(self, ep: Endpoint) -> None:
        from .registry_auth import Authenticator, find_credentials

        opts = self.options
        explicit = not ep.mirror  # --username/--password are for the registry named in the reference
        ep.auth = Authenticator(
            self.transport, ep.registry, ep.base, ep.repository,
            lambda: find_credentials(ep.registry, ep.repository,
                                     opts.username if explicit else None, opts.password if explicit else None))

    # -- HTTP with auth -------------------------------------------------------------------
    def _get(self, ep: Endpoint, url: str, headers: dict[str, str], what: str, method: str = "GET") -> Any:
        """A request to the registry with authorization, renewing it on 401 (bounded)."""
        from .registry_auth import AuthError

        for attempt in range(3):
            ep.auth.refresh_if_expired()
            had_auth = ep.auth.header(url) is not None
            resp = self.transport.request(method, url, headers, auth_for=ep.auth.header, what=what)
            if resp.status_code != 401:
                return resp
            if not ep.auth.on_unauthorized(resp, had_auth, attempt):
                break
        if ep.auth.credentials():
            raise AuthError(f"access to {self.what} denied: wrong credentials, or no permission to pull it")
        raise AuthError(f"image {self.what} not found, or it needs authentication: use --username/--password "
                        "or log in with `podman login`")

    def _check_status(self, resp: Any, what: str) -> None:
        from .registry_http import error_detail

        if resp.status_code == 200:
            return
        code, message = error_detail(resp)
        if resp.status_code == 404:
            raise NotFound(f"image {self.what} not found" if what == "manifest" else f"{what} of {self.what} not found")
        if resp.status_code == 403:
            from .registry_auth import AuthError

            raise AuthError(f"access to {self.what} denied (HTTP 403{': ' + message if message else ''})")
        detail = f": {code} {message}".rstrip() if code or message else ""
        raise ImageError(f"registry {self.endpoint.host if self.endpoint else self.ref.registry} answered HTTP "
                         f"{resp.status_code} for the {what} of {self.what}{detail}")

    # -- documents -----------------------------------------------------------------------
    def _manifest_url(self, ep: Endpoint, reference: str) -> str:
        if not is_digest(reference) and not _TAG_RE.match(reference):
            raise ImageError(f"invalid tag `{reference}`")
        return f"{ep.base}/v2/{ep.repository}/manifests/{reference}"

    def _head_digest(self, ep: Endpoint, reference: str) -> str | None:
        """The manifest digest from a HEAD (Docker Hub does not count it as a pull), if given."""
        resp = self._get(ep, self._manifest_url(ep, reference), {"Accept": MANIFEST_ACCEPT}, "manifest", method="HEAD")
        resp.close()
        if resp.status_code != 200:
            if resp.status_code == 404:
                raise NotFound(f"image {self.what} not found")
            return None
        digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        return digest if is_digest(digest) else None

    def _fetch_manifest(self, ep: Endpoint, reference: str, expect: tuple[str, int, str] | None) -> tuple[dict, str, str]:
        """GET a manifest or index: (document, media type, digest), all checked."""
        from .registry_http import read_capped

        what = f"manifest {reference} of {self.what}"
        if expect and expect[1] > MAX_DOCUMENT:
            raise ImageError(f"{what} is larger than {MAX_DOCUMENT} bytes")
        resp = self._get(ep, self._manifest_url(ep, reference), {"Accept": MANIFEST_ACCEPT}, "manifest")
        self._check_status(resp, "manifest")
        content_type = _media_type(resp)
        header_digest = (resp.headers.get("Docker-Content-Digest") or "").strip()
        body = read_capped(resp, MAX_DOCUMENT, what)
        if content_type in DOCKER_SCHEMA1:
            raise ImageError(f"{what} is a Docker schema 1 manifest, which is not supported: re-push the image with a current client")
        pinned = expect[0] if expect else (reference if is_digest(reference) else None)
        digest = _hash(pinned or "sha256:", body)
        if pinned and digest != pinned:
            raise ImageError(f"{what} does not match its digest (got {digest})")
        if header_digest and is_digest(header_digest) and _hash(header_digest, body) != header_digest:
            raise ImageError(f"{what} does not match the registry's Docker-Content-Digest header")
        if expect and len(body) != expect[1]:
            raise ImageError(f"{what} has size {len(body)}, expected {expect[1]}")
        doc = parse_manifest(body, what)
        doc_type = doc.get("mediaType")
        known = INDEX_TYPES + MANIFEST_TYPES
        if doc_type and content_type in known and doc_type != content_type:
            raise ImageError(f"{what}: media type `{doc_type}` does not match the response's `{content_type}`")
        media_type = doc_type or (content_type if content_type in known else "")
        if not media_type:
            media_type = INDEX_TYPES[0] if "manifests" in doc else MANIFEST_TYPES[0]
        if expect and expect[2] and expect[2] != media_type:
            raise ImageError(f"{what}: media type `{media_type}` does not match its descriptor's `{expect[2]}`")
        return doc, media_type, digest

    def _fetch_config(self, ep: Endpoint, digest: str, size: int) -> bytes:
        from .registry_http import read_capped

        what = f"config of {self.what}"
        if size > MAX_DOCUMENT:
            raise ImageError(f"{what} is larger than {MAX_DOCUMENT} bytes")
        resp = self._get(ep, f"{ep.base}/v2/{ep.repository}/blobs/{digest}", {"Accept": "*/*"}, "config")
        self._check_status(resp, "config")
        body = read_capped(resp, size, what)
        if len(body) != size or _hash(digest, body) != digest:
            raise ImageError(f"{what}: blob {digest} does not match its descriptor (size or digest)")
        return body

    # -- the ImageSource interface ----------------------------------------------------------
    def resolve(self) -> ResolvedImage:
        opts = self.options
        key = cache_key(self.ref, self.platform)
        cached = load_cached(opts.store_root, key) if opts.store_root else None
        if cached and _layers_present(opts.store_root, cached[0]) and (opts.pull_policy != "always" or self.ref.digest):
            log.info("registry.cached", image=self.what, manifest=cached[0].manifest_digest)
            return cached[0]
        if opts.pull_policy == "never":
            raise NotFound(f"image {self.what} is not in the store (--pull=never)")
        started = time.monotonic()
        endpoints = self._setup()
        last_error: Exception | None = None
        for i, ep in enumerate(endpoints):
            try:
                image, top = self._resolve_at(ep, cached if cached and _layers_present(opts.store_root, cached[0]) else None)
            except NotFound as e:
                last_error = e
                if i + 1 < len(endpoints):
                    log.info("registry.mirror-miss", mirror=ep.host, image=self.what)
                    continue
                raise
            except ImageError as e:
                if ep.mirror and i + 1 < len(endpoints):
                    log.warn("registry.mirror-failed", mirror=ep.host, error=str(e),
                             text=f"mirror {ep.host} failed ({e}); trying the next source")
                    last_error = e
                    continue
                raise
            self.endpoint = ep
            if opts.store_root and (not cached or cached[1] != top or cached[0] != image):
                store_cached(opts.store_root, key, image, top)
            log.info("registry.resolved", image=self.what, endpoint=ep.host, manifest=image.manifest_digest,
                     layers=len(image.layers), seconds=round(time.monotonic() - started, 3))
            return image
        raise last_error or ImageError(f"no registry to pull {self.what} from")

    def _resolve_at(self, ep: Endpoint, cached: tuple[ResolvedImage, str] | None) -> tuple[ResolvedImage, str]:
        ep = self._connect(ep)
        if cached:
            head = self._head_digest(ep, self.ref.reference) if not self.ref.digest else self.ref.digest
            if head and head == cached[1]:
                log.info("registry.unchanged", image=self.what, manifest=head)
                return cached
        reference = self.ref.reference
        doc, media_type, digest = self._fetch_manifest(ep, reference, None)
        top = digest
        for _ in range(MAX_NESTING):
            if media_type in INDEX_TYPES:
                chosen = select_platform(doc, self.platform, self.what)
                expect = descriptor(chosen, f"index of {self.what}")
                doc, media_type, digest = self._fetch_manifest(ep, expect[0], expect)
                continue
            config_desc = doc.get("config")
            cdigest, csize, ctype = descriptor(config_desc, f"config of {self.what}")
            if ctype and ctype not in (OCI_CONFIG, DOCKER_CONFIG):
                raise ImageError(f"{self.what} is not a container image (config media type `{ctype}`)")
            config = self._fetch_config(ep, cdigest, csize)
            _check_config(config, self.what)
            return image_from_documents(doc, config, cdigest, digest, self.what), top
        raise ImageError(f"{self.what}: indexes nested more than {MAX_NESTING} deep")

    def _connect(self, ep: Endpoint) -> Endpoint:
        """An insecure registry may speak plain HTTP: try https first, then http (like podman)."""
        from .registry_http import RegistryUnreachable

        from .registry_hosts import is_loopback

        # A registry on this machine's loopback may speak plain HTTP without --insecure-registry,
        # as docker allows for 127.0.0.0/8; its TLS, if it speaks TLS, is still verified.
        loopback = is_loopback(ep.host) and not self.transport.is_insecure(ep.host)
        if not ep.base.startswith("https://") or not (loopback or self.transport.is_insecure(ep.host)):
            return ep
        try:
            resp = self.transport.request("GET", f"{ep.base}/v2/", {}, what="ping", retry=False)
        except RegistryUnreachable as e:
            if "connection refused" in str(e) or "unknown host" in str(e):
                raise
            if loopback:
                if "does not speak TLS" not in str(e):
                    raise
                self.transport.insecure += (ep.host,)
            ep.base = "http://" + ep.host
            self._attach_auth(ep)
            log.info("registry.plain-http", registry=ep.host)
            return ep
        if resp.status_code == 401 and ep.auth.credentials():
            # Authenticate on the ping's challenge (for this repository's pull scope), as docker
            # and podman do: it saves the manifest's 401, and some registries (GrootFS's suite
            # fakes one) challenge only there.
            ep.auth.on_unauthorized(resp, False, 0)
        resp.close()
        return ep

    def open_blob(self, layer: LayerDescriptor) -> io.RawIOBase:
        if self.endpoint is None:  # resolved from the cache, yet a layer is needed after all
            self._setup()
            self.endpoint = self._connect(self._endpoints[-1])
        assert layer.digest is not None and layer.size is not None
        check_digest(layer.digest, f"digest of {layer.name}")
        return BlobStream(self, self.endpoint, layer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _check_config(config: bytes, what: str) -> None:
    from ..jsonutil import loads_strict

    doc = loads_strict(config, f"config of {what}")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError(f"config of {what}: rootfs.type must be `layers`")


# ---- blobs -------------------------------------------------------------------------------------

class BlobStream(io.RawIOBase):
    """A layer's raw bytes from the registry, capped at the descriptor's size, resumed after cuts.

    After a cut it asks for ``Range: bytes=N-`` and checks ``Content-Range``; a server that
    ignores Range (200) or refuses it (416) is read again from 0 and the first N bytes are
    skipped. The whole stream is verified downstream anyway (digest and diffID), so a
    resumed or re-read part can never slip through unverified.
    """

    def __init__(self, source: RegistrySource, ep: Endpoint, layer: LayerDescriptor):
        super().__init__()
        self.source = source
        self.ep = ep
        self.layer = layer
        self.size = int(layer.size or 0)
        self.offset = 0
        self.resumes = 0
        self.started = time.monotonic()
        self._logged = False
        self.url = f"{ep.base}/v2/{ep.repository}/blobs/{layer.digest}"
        self.resp: Any = None
        self._open(0)

    def readable(self) -> bool:
        return True

    def _open(self, offset: int) -> None:
        headers = {"Accept": "*/*"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self.source._get(self.ep, self.url, headers, "blob")
        if resp.status_code == 404 and self.layer.urls and offset == 0:
            resp.close()
            resp = self._open_foreign()
        skip = 0
        if offset and resp.status_code == 206:
            if not _content_range_ok(resp.headers.get("Content-Range"), offset, self.size):
                resp.close()
                raise LayerError(f"{self.layer.name}: registry answered a resumed download with a wrong Content-Range")
        elif offset and resp.status_code in (200, 416):
            if resp.status_code == 416:
                resp.close()
                resp = self.source._get(self.ep, self.url, {"Accept": "*/*"}, "blob")
            skip = offset  # the server ignored Range: read it again from 0, drop what we had
            log.debug("registry.range-ignored", layer=self.layer.name)
        if resp.status_code not in (200, 206):
            try:
                self.source._check_status(resp, self.layer.name)
            except NotFound:
                raise LayerError(f"{self.layer.name} of {self.source.what} is missing from the registry") from None
            raise LayerError(f"{self.layer.name}: unexpected HTTP {resp.status_code}")
        self.resp = resp
        while skip:
            chunk = resp.raw.read(min(skip, 1 << 16), decode_content=False)
            if not chunk:
                raise LayerError(f"{self.layer.name}: download cut again while resuming")
            skip -= len(chunk)

    def _open_foreign(self) -> Any:
        """A non-distributable layer's ``urls``: fetched without any registry credentials."""
        for url in self.layer.urls:
            if not url.lower().startswith(("https://", "http://")):
                continue
            try:
                resp = self.source.transport.request("GET", url, {"Accept": "*/*"}, auth_for=None, what="foreign layer")
            except ImageError as e:
                log.info("registry.foreign-url-failed", layer=self.layer.name, error=str(e))
                continue
            if resp.status_code == 200:
                return resp
            resp.close()
        raise LayerError(f"{self.layer.name} of {self.source.what} is in neither the registry nor its urls")

    def readinto(self, buffer: Any) -> int:
        remaining = self.size - self.offset
        if remaining <= 0:
            self._done()
            return 0
        want = min(len(buffer), remaining)
        while True:
            error: str | None = None
            try:
                data = self.resp.raw.read(want, decode_content=False)
            except Exception as e:  # noqa: BLE001 - urllib3/socket errors: resume below
                if "Timeout" in type(e).__name__ or isinstance(e, TimeoutError):
                    raise LayerError(f"{self.layer.name}: registry {self.ep.host} sent nothing for "
                                     f"{self.source.options.inactivity_timeout:g} s (inactivity timeout, "
                                     f"--registry-timeout) after {self.offset} of {self.size} bytes") from None
                data, error = b"", type(e).__name__
            if data:
                n = len(data)
                buffer[:n] = data
                self.offset += n
                return n
            if self.resumes >= MAX_RESUMES:
                raise LayerError(f"{self.layer.name}: download of {self.source.what} kept failing "
                                 f"after {self.offset} of {self.size} bytes ({error or 'connection closed early'})")
            self.resumes += 1
            log.info("registry.blob-resume", layer=self.layer.name, offset=self.offset, size=self.size,
                     reason=error or "eof", attempt=self.resumes)
            try:
                self.resp.close()
            except Exception:  # noqa: BLE001
                pass
            time.sleep(min(0.2 * (2 ** (self.resumes - 1)), 3.0))
            self._open(self.offset)

    def _done(self) -> None:
        if self._logged:
            return
        self._logged = True
        seconds = time.monotonic() - self.started
        log.info("registry.blob-downloaded", layer=self.layer.name, size=self.size, seconds=round(seconds, 3),
                 resumes=self.resumes, endpoint=self.ep.host)

    def close(self) -> None:
        if self.offset >= self.size:
            self._done()
        if self.resp is not None:
            try:
                self.resp.close()
            except Exception:  # noqa: BLE001
                pass
            self.resp = None
        super().close()


def _content_range_ok(value: str | None, offset: int, size: int) -> bool:
    """``bytes START-END/TOTAL`` must start where we are and agree with the descriptor's size."""
    if not value or not value.startswith("bytes "):
        return False
    span, _, total = value[6:].partition("/")
    start, _, end = span.partition("-")
    if not (start.isdigit() and end.isdigit()):
        return False
    if int(start) != offset or int(end) >= size or int(end) < int(start):
        return False
    return total == "*" or (total.isdigit() and int(total) == size)
