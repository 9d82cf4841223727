"""HTTP transport for registries: TLS per host, retries, hand-followed redirects, capped bodies.

``requests`` is imported only when a ``Transport`` is built, i.e. when a docker:// image
really goes to the network. Rules kept here, whatever the caller asks for:

- redirects are followed by hand (at most ``MAX_REDIRECTS``); the ``Authorization`` header
  goes only to the exact scheme+host+port it was meant for, never to another host and never
  over http after https; an https->http redirect is refused unless the target host is insecure;
- ``trust_env`` is off, so ``.netrc`` credentials are never added by requests (proxies from
  the environment are still honoured, per request);
- connection errors, 5xx and 429 are retried with backoff (``Retry-After`` honoured, capped);
- bodies of documents, tokens and errors are read with a cap.

No threads are started: the parent process must stay single-threaded when the layer cache
forks its workers. Sessions are per process, so a forked worker never shares a socket.
"""
from __future__ import annotations

import os
import ssl
import time
from typing import Any, Callable, Iterable
from urllib.parse import urljoin, urlsplit

from .. import log
from ..errors import ImageError
from .registry_hosts import ca_files_for, host_matches

MAX_REDIRECTS = 10
MAX_ERROR_BODY = 1 << 20
MAX_RETRY_AFTER = 10.0
RETRIES = 4  # attempts after the first
CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 30.0  # the default inactivity timeout (RegistryOptions.inactivity_timeout)
RETRY_STATUS = {429, 500, 502, 503, 504}
BACKOFF = 0.25  # seconds before the first retry; doubles each time


INSECURE_REGISTRY = ("This registry is insecure. To pull images from this registry, "
                     "please use the --insecure-registry option.")


class RegistryUnreachable(ImageError):
    """The registry could not be reached (connection refused, DNS, TLS, timeouts)."""


class RateLimited(ImageError):
    """The registry kept answering 429 Too Many Requests."""


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, lower-cased, as used for TLS and credential decisions."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()


def origin(url: str) -> tuple[str, str]:
    """(scheme, host[:port]): the unit ``Authorization`` is bound to."""
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.rsplit("@", 1)[-1].lower()


def read_capped(resp: Any, limit: int, what: str) -> bytes:
    """Read a whole (small) response body, refusing more than ``limit`` bytes."""
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        resp.close()
        raise ImageError(f"{what} is larger than {limit} bytes")
    chunks, total = [], 0
    try:
        while True:
            chunk = resp.raw.read(min(65536, limit + 1 - total), decode_content=False)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ImageError(f"{what} is larger than {limit} bytes")
    except ImageError:
        raise
    except Exception as e:  # urllib3 protocol errors, timeouts
        raise RegistryUnreachable(f"{what}: connection failed while reading: {type(e).__name__}") from None
    finally:
        resp.close()
    return b"".join(chunks)


def error_detail(resp: Any) -> tuple[str, str]:
    """(code, message) from a distribution-spec error body, if any (body capped at 1 MiB)."""
    try:
        body = read_capped(resp, MAX_ERROR_BODY, "error body")
    except ImageError:
        return "", ""
    try:
        import json

        errors = json.loads(body).get("errors")
        first = errors[0]
        return str(first.get("code", ""))[:100], str(first.get("message", ""))[:300]
    except Exception:  # noqa: BLE001 - the body is free-form on some servers
        return "", ""


def retry_delay(resp: Any | None, attempt: int) -> float:
    """Exponential backoff; a ``Retry-After`` in seconds is honoured up to ``MAX_RETRY_AFTER``."""
    delay = min(BACKOFF * (2 ** attempt), 8.0)
    if resp is not None:
        value = (resp.headers.get("Retry-After") or "").strip()
        if value.isdigit():
            delay = float(value)
        elif value:
            from email.utils import parsedate_to_datetime

            try:
                delay = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                pass
    return max(0.0, min(delay, MAX_RETRY_AFTER))


class Transport:
    """One per source. ``insecure`` hosts may use plain http or unverified TLS."""

    def __init__(self, insecure: Iterable[str] = (), ca_file: str | None = None,
                 sleep: Callable[[float], None] | None = None, allow_http: bool = False,
                 client_certs_dir: str | None = None, timeout: float | None = None):
        import requests  # noqa: F401 - the one place the pull flow pays for it

        if insecure:  # the user asked for it by name (--insecure-registry): no warning per request
            import warnings

            from urllib3.exceptions import InsecureRequestWarning

            warnings.simplefilter("ignore", InsecureRequestWarning)
        # seconds without a byte (connect or read) before a request fails: the inactivity timeout
        self.timeout = (CONNECT_TIMEOUT, READ_TIMEOUT) if timeout is None else (timeout, timeout)
        self.insecure = tuple(insecure)
        self.allow_http = allow_http  # layer ``urls`` (GrootFS fetches them over http too): digest-checked
        self.client_certs_dir = client_certs_dir  # containers' certs.d layout: *.crt CAs, *.cert + *.key
        self.ca_file = ca_file
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._session: Any = None
        self._session_pid = -1

    # ---- TLS -------------------------------------------------------------------------
    def is_insecure(self, host: str) -> bool:
        return host_matches(host, self.insecure)

    def ssl_context(self, host: str) -> ssl.SSLContext:
        ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        if self.is_insecure(host):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context()  # the system's CAs
            extra = ([self.ca_file] if self.ca_file else []) + ca_files_for(host)
            for path in extra:
                try:
                    ctx.load_verify_locations(cafile=path)
                except (OSError, ssl.SSLError) as e:
                    raise ImageError(f"cannot load CA certificate {path}: {e}") from None
        if self.client_certs_dir:
            load_cert_dir(ctx, self.client_certs_dir, verify=not self.is_insecure(host))
        self._contexts[host] = ctx
        return ctx

    def session(self) -> Any:
        if self._session is None or self._session_pid != os.getpid():
            import requests
            from requests.adapters import HTTPAdapter

            transport = self

            class _Adapter(HTTPAdapter):
                def build_connection_pool_key_attributes(self, request, verify, cert=None):
                    host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
                    if host_params.get("scheme") == "https":
                        host = host_of(request.url)
                        pool_kwargs["ssl_context"] = transport.ssl_context(host)
                        pool_kwargs["cert_reqs"] = "CERT_NONE" if transport.is_insecure(host) else "CERT_REQUIRED"
                        pool_kwargs.pop("ca_certs", None)
                        pool_kwargs.pop("ca_cert_dir", None)
                    return host_params, pool_kwargs

                def cert_verify(self, conn, url, verify, cert):
                    # TLS trust comes from our per-host context, not from requests' bundle.
                    conn.ca_certs = None
                    conn.ca_cert_dir = None

            s = requests.Session()
            s.trust_env = False  # never .netrc; proxies are taken per request below
            s.mount("https://", _Adapter(max_retries=0))
            s.mount("http://", _Adapter(max_retries=0))
            # A session inherited across fork shares sockets with the parent: never reuse it.
            self._session, self._session_pid = s, os.getpid()
        return self._session

    def close(self) -> None:
        if self._session is not None and self._session_pid == os.getpid():
            self._session.close()
        self._session = None

    # ---- requests --------------------------------------------------------------------
    def _send_once(self, method: str, url: str, headers: dict[str, str], stream: bool) -> Any:
        import requests
        from requests.utils import get_environ_proxies

        host = host_of(url)
        try:
            return self.session().request(method, url, headers=headers, stream=stream, allow_redirects=False,
                                          timeout=self.timeout, proxies=get_environ_proxies(url),
                                          verify=True)
        except requests.exceptions.SSLError as e:
            text = str(e)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                raise RegistryUnreachable(
                    INSECURE_REGISTRY,  # GrootFS's sentence, which Garden's operators know
                    hint=f"registry {host}: TLS certificate not trusted ({_ssl_reason(text)}): add its CA with "
                    f"--registry-ca FILE or /etc/containers/certs.d/{host}/ca.crt, or use --insecure-registry {host}"
                ) from None
            if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
                raise RegistryUnreachable(f"registry {host} does not speak TLS: use --insecure-registry {host} for plain HTTP") from None
            raise RegistryUnreachable(f"registry {host}: TLS handshake failed ({_ssl_reason(text)})") from None

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, *,
                auth_for: Callable[[str], str | None] | None = None, stream: bool = True,
                retry: bool = True, what: str = "request") -> Any:
        """Send with retries and hand-followed redirects; returns the final response (not 3xx).

        ``auth_for(url)`` gives the Authorization value for a URL or None: it is asked at
        every hop, and its answer is dropped unless the hop keeps the original origin and
        never went from https to http.
        """
        import requests

        attempt = 0
        while True:
            try:
                resp = self._follow(method, url, dict(headers or {}), auth_for, stream)
            except requests.exceptions.Timeout:
                # Nothing for the whole inactivity timeout: waiting again would only multiply it.
                raise RegistryUnreachable(f"registry {host_of(url)} sent nothing for {self.timeout[1]:g} s "
                                          f"(inactivity timeout, --registry-timeout) for {what}") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                if retry and attempt < RETRIES and not _unresolvable(e):  # a name that does not resolve: at once
                    log.info("registry.retry", url=url, attempt=attempt + 1, reason=_conn_reason(e))
                    self.sleep(retry_delay(None, attempt))
                    attempt += 1
                    continue
                raise RegistryUnreachable(f"registry {host_of(url)} is unreachable: {_conn_reason(e)}") from None
            if resp.status_code in RETRY_STATUS and retry and attempt < RETRIES:
                delay = retry_delay(resp, attempt)
                resp.close()
                self.sleep(delay)
                attempt += 1
                continue
            if resp.status_code == 429:
                resp.close()
                raise RateLimited(f"registry {host_of(url)} rate limit reached (429 Too Many Requests) for {what}: "
                                  "try again later, or log in for a higher limit")
            return resp

    def _follow(self, method: str, url: str, headers: dict[str, str], auth_for, stream: bool) -> Any:
        first_origin = origin(url)
        downgraded = False
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host = origin(url)
            if scheme not in ("https", "http"):
                raise ImageError(f"refusing to fetch {scheme}:// URL from a registry")
            if scheme == "http" and not self.allow_http and not self.is_insecure(host):
                raise ImageError(f"refusing plain HTTP to {host}: use --insecure-registry {host} to allow it")
            hop = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            hop.setdefault("Accept-Encoding", "identity")
            if auth_for is not None and (scheme, host) == first_origin and not downgraded:
                value = auth_for(url)
                if value:
                    hop["Authorization"] = value
            resp = self._send_once(method, url, hop, stream)
            if resp.status_code not in (301, 302, 303, 307, 308):
                return resp
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise ImageError(f"registry {host} sent a redirect without a Location")
            new_url = urljoin(url, location)
            new_scheme, new_host = origin(new_url)
            if scheme == "https" and new_scheme == "http":
                if not self.allow_http and not self.is_insecure(new_host):
                    raise ImageError(f"registry {host} redirected to plain HTTP ({new_host}): refused")
                downgraded = True
            if resp.status_code == 303:
                method = "GET"
            url = new_url
        raise ImageError(f"too many redirects (more than {MAX_REDIRECTS}) from {first_origin[1]}")


def load_cert_dir(ctx: ssl.SSLContext, directory: str, verify: bool = True) -> None:
    """A certificates directory as containers/image reads it (GrootFS's
    ``remote_layer_client_certificates_path``): ``*.crt`` are extra CAs, each ``NAME.cert``
    is a client certificate whose key is ``NAME.key``."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise ImageError(f"cannot read the certificates directory {directory}: {e.strerror}") from None
    for name in names:
        path = os.path.join(directory, name)
        try:
            if name.endswith(".crt") and verify:
                ctx.load_verify_locations(cafile=path)
            elif name.endswith(".cert"):
                key = path[:-5] + ".key"
                if not os.path.exists(key):
                    raise ImageError(f"missing key {key} for client certificate {path} (CA certificates end in .crt)")
                ctx.load_cert_chain(path, key)
            elif name.endswith(".key") and not os.path.exists(path[:-4] + ".cert"):
                raise ImageError(f"missing client certificate {path[:-4]}.cert for key {path}")
        except (OSError, ssl.SSLError) as e:
            raise ImageError(f"cannot load {path}: {e}") from None


def _ssl_reason(text: str) -> str:
    for marker in ("self-signed certificate in certificate chain", "self-signed certificate", "self signed certificate",
                   "unable to get local issuer certificate", "Hostname mismatch", "certificate has expired"):
        if marker.lower() in text.lower():
            return marker
    return "verification failed"


def _unresolvable(e: BaseException) -> bool:
    """Whether a connection error comes from a host name that does not resolve (DNS says so:
    retrying only makes the user wait, as podman and curl know)."""
    import socket

    todo: list = [e]
    for _ in range(12):
        if not todo:
            break
        item = todo.pop()
        if isinstance(item, socket.gaierror) or type(item).__name__ == "NameResolutionError":
            return True
        todo += [x for x in (getattr(item, "reason", None), item.__cause__, item.__context__,
                             *(item.args[:1] if isinstance(item, BaseException) else ())) if isinstance(x, BaseException)]
    return False


def _conn_reason(e: Exception) -> str:
    text = str(e)
    for marker, reason in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                           ("Temporary failure in name resolution", "name resolution failed"),
                           ("timed out", "timed out"), ("Connection reset", "connection reset"),
                           ("No route to host", "no route to host"), ("Network is unreachable", "network unreachable")):
        if marker in text:
            return reason
    return type(e).__name__
