"""An in-process HTTP stub for the registry unit tests (plain HTTP on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Req:
    method: str
    path: str
    query: dict
    headers: dict


Reply = tuple  # (status, headers, body) ; body may be bytes, or a callable(wfile) for raw control


@dataclass
class Stub:
    routes: dict = field(default_factory=dict)  # path -> callable(Req) -> Reply, or a static Reply
    log: list = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> "Stub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._go("GET")

            def do_HEAD(self):
                self._go("HEAD")

            def do_POST(self):
                self._go("POST")

            def _go(self, method):
                parts = urlsplit(self.path)
                req = Req(method, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()})
                stub.log.append(req)
                route = stub.routes.get(parts.path)
                if route is None:
                    reply = (404, {"Content-Type": "application/json"},
                             b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}')
                else:
                    reply = route(req) if callable(route) else route
                status, headers, body = reply
                if callable(body):
                    body(self, status, headers)
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.log if method is None or r.method == method]


def make_image(files: list[bytes], arch: str = "amd64", env: list[str] | None = None):
    """(manifest bytes, {digest: blob}) for an image with one plain-tar-ish layer per item.

    The "layers" are opaque bytes here: the source never looks inside a blob.
    """
    blobs = {}
    layers = []
    for content in files:
        d = digest(content)
        blobs[d] = content
        layers.append({"mediaType": OCI_LAYER, "digest": d, "size": len(content)})
    config = dumps({"architecture": arch, "os": "linux", "config": {"Env": env or [f"ARCH={arch}"]},
                    "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}})
    blobs[digest(config)] = config
    manifest = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": digest(config), "size": len(config)},
                      "layers": layers})
    return manifest, blobs


def serve_repo(stub: Stub, repo: str, manifests: dict[str, tuple[bytes, str]], blobs: dict[str, bytes],
               guard: Callable[[Req], Reply | None] | None = None) -> None:
    """Serve ``manifests`` (reference -> (bytes, media type)) and ``blobs`` under /v2/<repo>/."""
    def manifest_route(body: bytes, media_type: str):
        def route(req: Req):
            if guard and (denied := guard(req)):
                return denied
            return 200, {"Content-Type": media_type, "Docker-Content-Digest": digest(body)}, body
        return route

    for ref, (body, media_type) in manifests.items():
        stub.routes[f"/v2/{repo}/manifests/{ref}"] = manifest_route(body, media_type)
        stub.routes[f"/v2/{repo}/manifests/{digest(body)}"] = manifest_route(body, media_type)

    def blob_route(body: bytes):
        def route(req: Req):
            if guard and (denied := guard(req)):
                return denied
            rng = req.headers.get("range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                part = body[start:]
                return 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                             "Content-Type": "application/octet-stream"}, part
            return 200, {"Content-Type": "application/octet-stream"}, body
        return route

    for d, body in blobs.items():
        stub.routes[f"/v2/{repo}/blobs/{d}"] = blob_route(body)
