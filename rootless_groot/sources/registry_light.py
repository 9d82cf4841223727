"""The warm path of a ``docker://`` create: is the store's last resolution still current?

One anonymous ``HEAD`` of the manifest over a plain socket (``ssl`` only for https) instead
of the full client: importing ``requests`` alone costs ~75 ms, five times a warm create's
whole budget. Only a ``200`` whose ``Docker-Content-Digest`` equals the cached top-level
digest counts; anything else (401 for a token, a redirect, an error, another digest)
returns None and the caller takes the full path, which does everything properly. No
credentials are ever sent here, so nothing can leak.
"""
from __future__ import annotations

from ..refs import is_digest
from .base import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from .registry_hosts import ca_files_for, host_matches

ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
MAX_HEADER = 64 * 1024


def _split_host(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") else default_port
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return name, int(port)
    return host, default_port


def _connect_plain(name: str, port: int, timeout: float):
    """A TCP connection through ``_socket`` itself: ``socket.py`` imports ``enum`` and
    ``selectors`` (about 7 ms) for conveniences a single HEAD does not need."""
    import _socket

    error: OSError | None = None
    # bytes, not str: a str host goes through the idna codec, which imports re (~8 ms)
    for family, kind, proto, _, address in _socket.getaddrinfo(name.encode("ascii"), port, 0, _socket.SOCK_STREAM):
        sock = _socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
    raise error or OSError(f"cannot resolve {name}")


class PendingHead:
    """A HEAD that is sent; ``digest()`` reads the answer (once) and closes the connection."""

    def __init__(self, sock):
        self._sock = sock

    def digest(self) -> str | None:
        sock, self._sock = self._sock, None
        if sock is None:
            return None
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < MAX_HEADER:
                chunk = sock.recv(16384)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
        finally:
            sock.close()
        return _digest_of(data)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def start_head(registry: str, repository: str, reference: str, *, insecure_registries: tuple[str, ...] = (),
               registry_ca: str | None = None, timeout: float = 5.0) -> PendingHead:
    """Connect and send the HEAD of the manifest; the registry answers while the caller works."""
    host = registry.lower()
    insecure = host_matches(host, insecure_registries)
    scheme = "http" if insecure else "https"
    name, port = _split_host(host, 80 if insecure else 443)
    request = (f"HEAD /v2/{repository}/manifests/{reference} HTTP/1.1\r\nHost: {host}\r\nAccept: {ACCEPT}\r\n"
               "User-Agent: rootless-groot\r\nConnection: close\r\n\r\n").encode()
    sock = None
    try:
        if scheme == "https":
            import socket
            import ssl

            context = ssl.create_default_context()
            for ca in ([registry_ca] if registry_ca else []) + ca_files_for(host):
                context.load_verify_locations(ca)
            sock = context.wrap_socket(socket.create_connection((name, port), timeout=timeout), server_hostname=name)
        else:
            sock = _connect_plain(name, port, timeout)
        sock.sendall(request)
    except (OSError, ValueError):  # UnicodeError (a non-ASCII host) is a ValueError
        if sock is not None:
            sock.close()
        return PendingHead(None)
    return PendingHead(sock)


def head_manifest_digest(registry: str, repository: str, reference: str, *, insecure_registries: tuple[str, ...] = (),
                         registry_ca: str | None = None, timeout: float = 5.0) -> str | None:
    """The manifest digest the registry serves for ``reference`` now, or None if unsure."""
    return start_head(registry, repository, reference, insecure_registries=insecure_registries,
                      registry_ca=registry_ca, timeout=timeout).digest()


def _digest_of(data: bytes) -> str | None:
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        return None
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "docker-content-digest":
            value = value.strip()
            return value if is_digest(value) else None
    return None
