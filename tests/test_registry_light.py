"""The warm-path HEAD check against a raw in-process HTTP server (plain HTTP, insecure host)."""
import socket
import threading

import pytest

from rootless_groot.sources.registry_light import head_manifest_digest

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def server():
    """Answers each connection with ``server.reply`` and records the request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    state = {"reply": b"", "requests": []}

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                state["requests"].append(data.decode())
                conn.sendall(state["reply"])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    state["host"] = f"127.0.0.1:{listener.getsockname()[1]}"
    yield state
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    listener.close()
    thread.join(timeout=5)


def head(state, **kw):
    return head_manifest_digest(state["host"], "team/app", "v1", insecure_registries=(state["host"],), **kw)


def test_200_with_a_digest(server):
    server["reply"] = f"HTTP/1.1 200 OK\r\nDocker-Content-Digest: {DIGEST}\r\nContent-Length: 9\r\n\r\n".encode()
    assert head(server) == DIGEST
    (request,) = server["requests"]
    assert request.startswith("HEAD /v2/team/app/manifests/v1 HTTP/1.1\r\n")
    assert "application/vnd.oci.image.index.v1+json" in request
    assert "Authorization" not in request  # never any credentials on this path


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=x\r\n\r\n",
    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://elsewhere/\r\n\r\n",
    "HTTP/1.1 200 OK\r\nDocker-Content-Digest: sha256:short\r\n\r\n".encode(),
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"garbage",
    b"",
])
def test_anything_else_means_unsure(server, reply):
    server["reply"] = reply
    assert head(server) is None


def test_unreachable_and_secure_hosts_are_unsure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    assert head_manifest_digest(f"127.0.0.1:{port}", "a", "b", insecure_registries=(f"127.0.0.1:{port}",)) is None
    # not insecure: https, and a TLS handshake with a closed port fails
    assert head_manifest_digest(f"127.0.0.1:{port}", "a", "b", timeout=1) is None
