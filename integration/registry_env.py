"""Real registries on 127.0.0.1 for the tests, and the small servers around them.

- ``Registry``: Debian's ``docker-registry`` (distribution 2.8) on a free port, with a YAML
  config: anonymous, htpasswd, or token auth; plain HTTP or TLS.
- ``TokenServer``: issues ES256 JWTs with an ``x5c`` header (PyJWT + cryptography), the way
  distribution's ``auth: token`` expects; records every token request (scopes, user).
- ``FaultProxy``: an HTTP proxy in front of a registry that records requests and injects
  faults: cut a blob halfway (once), corrupt a blob, answer 429 once, redirect blobs to
  another host. With ``upstream_auth`` it doubles as the "CDN" a redirect points to.
- ``make_cert``, ``htpasswd_file``, ``push`` (``skopeo copy`` from an OCI layout).

Everything started here is stopped by ``stop()``; the fixtures in test_registry.py call it
in teardown.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def make_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o644)
    return cert, key


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    first = True
    for user, password in users.items():
        subprocess.run(["htpasswd", "-Bb" + ("c" if first else ""), str(path), user, password],
                       check=True, capture_output=True)
        first = False
    return path


# --------------------------------------------------------------------------- registry

class Registry:
    """``docker-registry serve config.yml`` on 127.0.0.1:PORT."""

    def __init__(self, workdir: Path, *, tls: tuple[Path, Path] | None = None, htpasswd: Path | None = None,
                 token: dict | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.htpasswd = htpasswd
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def config(self) -> dict:
        cfg: dict = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": uuid.uuid4().hex},
        }
        if self.tls:
            cfg["http"]["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "rootless-groot-test", "path": str(self.htpasswd)}}
        elif self.token:
            cfg["auth"] = {"token": self.token}
        return cfg

    def start(self) -> "Registry":
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(self.config()))  # JSON is YAML
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(path)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        try:
            wait_port(self.port, proc=self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"registry did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def push(layout_uri: str, dest: str, *, creds: str | None = None, all_platforms: bool = False,
         extra: tuple[str, ...] = ()) -> None:
    """``skopeo copy oci:LAYOUT[:TAG] docker://DEST`` (TLS not verified: test registries)."""
    src = "oci:" + layout_uri.removeprefix("oci://")
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds:
        argv += ["--dest-creds", creds]
    if all_platforms:
        argv += ["--all"]
    argv += [*extra, src, f"docker://{dest}"]
    env = dict(os.environ)
    env.setdefault("HOME", "/root")
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"skopeo copy failed: {r.stderr}")


# --------------------------------------------------------------------------- token server

class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # cut connections are expected here
        pass


class _Threaded:
    """A ThreadingHTTPServer served from a thread of the test process; ``stop()`` ends it."""

    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _serve(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


class TokenServer(_Threaded):
    """A token endpoint for distribution's ``auth: token`` (ES256 JWT with ``x5c``).

    ``users``: accepted Basic credentials; ``anonymous``: whether a request without them
    gets a (pull) token. Records ``requests``: dicts with ``scopes``, ``user``, ``service``.
    """

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, anonymous: bool = False,
                 tls: tuple[Path, Path] | None = None, expires_in: int = 300, service: str = "test-registry"):
        import jwt  # noqa: F401 - fail early if the test extra is missing
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        self.users = users or {}
        self.anonymous = anonymous
        self.service = service
        self.issuer = "rootless-groot-test-issuer"
        self.expires_in = expires_in
        self.requests: list[dict] = []
        self.signing_cert, self.signing_key = make_cert(workdir, "token-signer")
        pem = self.signing_cert.read_bytes()
        self._x5c = base64.b64encode(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).decode()
        self._key = self.signing_key.read_bytes()
        self.tls = tls
        self.port = free_port()

    @property
    def realm(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/token"

    def registry_auth(self) -> dict:
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                "rootcertbundle": str(self.signing_cert)}

    def _issue(self, user: str, scopes: list[str]) -> str:
        import jwt

        now = int(time.time())
        access = []
        for scope in scopes:
            # resourcetype:resourcename:actions, and the name may hold a :port
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"x5c": [self._x5c]})

    def start(self) -> "TokenServer":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                user = ""
                auth = self.headers.get("Authorization") or ""
                ok = True
                if auth.startswith("Basic "):
                    try:
                        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    except ValueError:
                        user, password = "", None
                    ok = outer.users.get(user) == password
                elif not outer.anonymous:
                    ok = False
                outer.requests.append({"path": parts.path, "scopes": query.get("scope", []),
                                       "service": (query.get("service") or [""])[0], "user": user, "ok": ok})
                if parts.path != "/token" or not ok:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                token = outer._issue(user, query.get("scope", []))
                body = json.dumps({"token": token, "access_token": token, "expires_in": outer.expires_in,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = _Quiet(("127.0.0.1", self.port), Handler)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._serve()
        return self



# --------------------------------------------------------------------------- fault proxy

@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    status: int = 0


@dataclass
class Faults:
    cut_blobs_once: set = field(default_factory=set)    # digests: first full GET is cut halfway
    corrupt_blobs: set = field(default_factory=set)     # digests: one byte flipped in every GET
    corrupt_blobs_once: set = field(default_factory=set)  # digests: one byte flipped in the first GET only
    stall_blobs: set = field(default_factory=set)       # digests: headers and half the body, then silence
    status_once: dict = field(default_factory=dict)     # path substring -> status (e.g. 429) answered once
    redirect_blobs_to: str | None = None                # base URL: blob GETs answer 307 there
    ignore_range: bool = False                          # answer 200 with the full blob to Range requests


class FaultProxy(_Threaded):
    """Plain-HTTP proxy to ``upstream`` (a plain-HTTP registry) that records and misbehaves."""

    def __init__(self, upstream_port: int, *, upstream_auth: str | None = None, host: str = "127.0.0.1"):
        self.upstream_port = upstream_port
        self.upstream_auth = upstream_auth  # Authorization this proxy adds itself (the "CDN")
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.port = free_port()
        self.host_name = host
        self._done_once: set = set()
        self._lock = threading.Lock()
        self.released = threading.Event()  # ends the stalls (set by stop)

    @property
    def host(self) -> str:
        return f"{self.host_name}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_requests(self) -> list[Recorded]:
        return [r for r in self.requests if "/blobs/" in r.path]

    def stop(self) -> None:
        self.released.set()
        super().stop()

    def start(self) -> "FaultProxy":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._handle("HEAD")

            def do_GET(self):
                self._handle("GET")

            def _once(self, key) -> bool:
                with outer._lock:
                    if key in outer._done_once:
                        return False
                    outer._done_once.add(key)
                    return True

            def _reply(self, status, headers, body=b"", rec=None):
                if rec is not None:
                    rec.status = status
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self, method):
                rec = Recorded(method, self.path, dict(self.headers.items()))
                with outer._lock:
                    outer.requests.append(rec)
                f = outer.faults
                path = urlsplit(self.path).path
                for key, status in list(f.status_once.items()):
                    if key in path and self._once(("status", key)):
                        return self._reply(status, {"Retry-After": "1", "Content-Type": "application/json"},
                                           b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', rec)
                digest = path.rsplit("/", 1)[-1] if "/blobs/" in path else None
                if digest and f.redirect_blobs_to and method == "GET":
                    return self._reply(307, {"Location": f"{f.redirect_blobs_to}{self.path}?signature=abc"}, b"", rec)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("accept", "authorization", "range", "user-agent")}
                if outer.upstream_auth:
                    headers["Authorization"] = outer.upstream_auth
                if f.ignore_range:
                    headers.pop("Range", None)
                    headers.pop("range", None)
                conn = http.client.HTTPConnection("127.0.0.1", outer.upstream_port, timeout=30)
                try:
                    conn.request(method, self.path, headers=headers)
                    up = conn.getresponse()
                    body = up.read()
                    up_headers = {k: v for k, v in up.getheaders()
                                  if k.lower() in ("content-type", "docker-content-digest", "www-authenticate",
                                                   "content-range", "location", "docker-distribution-api-version",
                                                   "accept-ranges", "retry-after")}
                    if method == "HEAD":
                        up_headers["Content-Length"] = up.getheader("Content-Length") or "0"
                    status = up.status
                finally:
                    conn.close()
                if digest and method == "GET" and status in (200, 206):
                    corrupt = digest in f.corrupt_blobs or (
                        digest in f.corrupt_blobs_once and self._once(("corrupt", digest)))
                    if corrupt and body:
                        mid = len(body) // 2
                        body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
                    stall = digest in f.stall_blobs
                    if stall or (digest in f.cut_blobs_once and status == 200 and self._once(("cut", digest))):
                        # half the body, then silence (a stalled registry) or a cut connection
                        rec.status = status
                        self.send_response(status)
                        for k, v in up_headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        if stall:
                            outer.released.wait(120)  # the connection stays open, nothing comes
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                self._reply(status, up_headers, body, rec)

        self._server = _Quiet((self.host_name if self.host_name != "localhost" else "127.0.0.1", self.port), Handler)
        self._serve()
        return self

