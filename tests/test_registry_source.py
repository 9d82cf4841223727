"""RegistrySource against an in-process stub: auth flows, platforms, checks, resume, cache."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from registry_stub import OCI_INDEX, OCI_MANIFEST, Stub, digest, dumps, make_image, serve_repo
from rootless_groot.errors import ImageError, LayerError, NotFound
from rootless_groot.refs import parse_ref
from rootless_groot.sources import open_source, registry_http
from rootless_groot.sources.registry_cache import cache_key, cache_path, load_cached
from rootless_groot.sources.registry_auth import AuthError

AMD64 = {"os": "linux", "architecture": "amd64", "variant": ""}


@pytest.fixture
def stub():
    s = Stub().start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch, tmp_path):
    monkeypatch.setattr(registry_http, "BACKOFF", 0.0)
    monkeypatch.setattr(registry_http, "MAX_RETRY_AFTER", 0.0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials files of the developer
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)


def source(stub, ref, platform=AMD64, **kw):
    kw.setdefault("insecure_registries", (stub.host,))
    kw.setdefault("registries_conf", ())
    return open_source(parse_ref(f"docker://{stub.host}/{ref}"), platform, **kw)


def read_all(f) -> bytes:
    out = b""
    while chunk := f.read(7):
        out += chunk
    return out


def multi_arch(stub):
    amd_m, amd_b = make_image([b"common", b"amd64 layer"], "amd64")
    arm_m, arm_b = make_image([b"common", b"arm64 layer"], "arm64")
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": digest(b"x" * 3), "size": 3,
         "platform": {"os": "unknown", "architecture": "unknown"}},  # an attestation: never chosen
        {"mediaType": OCI_MANIFEST, "digest": digest(amd_m), "size": len(amd_m),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": digest(arm_m), "size": len(arm_m),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    ]})
    serve_repo(stub, "multi", {"v1": (index, OCI_INDEX), digest(amd_m): (amd_m, OCI_MANIFEST),
                               digest(arm_m): (arm_m, OCI_MANIFEST)}, {**amd_b, **arm_b})
    return index, amd_m, arm_m


def test_anonymous_pull_and_platform_selection(stub):
    index, amd_m, arm_m = multi_arch(stub)
    src = source(stub, "multi:v1")
    image = src.resolve()
    assert image.env == ["ARCH=amd64"] and image.manifest_digest == digest(amd_m)
    assert read_all(src.open_blob(image.layers[1])) == b"amd64 layer"
    src.close()
    arm = source(stub, "multi:v1", {"os": "linux", "architecture": "arm64", "variant": ""}).resolve()
    assert arm.env == ["ARCH=arm64"] and arm.manifest_digest == digest(arm_m)
    with pytest.raises(ImageError, match="no image for platform linux/s390x"):
        source(stub, "multi:v1", {"os": "linux", "architecture": "s390x", "variant": ""}).resolve()


def test_accept_header_lists_oci_and_docker_types(stub):
    multi_arch(stub)
    source(stub, "multi:v1").resolve()
    accept = stub.log[0].headers["accept"]
    for t in ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
              "application/vnd.docker.distribution.manifest.list.v2+json",
              "application/vnd.docker.distribution.manifest.v2+json"):
        assert t in accept


def test_unknown_image_and_tag(stub):
    multi_arch(stub)
    with pytest.raises(NotFound, match=rf"image docker://{stub.host}/multi:nope not found"):
        source(stub, "multi:nope").resolve()
    with pytest.raises(NotFound, match="not found"):
        source(stub, "other:v1").resolve()


def token_guard(tokens_seen):
    def guard(req):
        if req.headers.get("authorization") != "Bearer good-token":
            tokens_seen.append(req.headers.get("authorization"))
            return 401, {"WWW-Authenticate": f'Bearer realm="{REALM[0]}",service="svc",'
                                             f'scope="repository:app:pull"'}, b""
        return None
    return guard


REALM = [""]


def test_bearer_flow_with_credentials_and_scope(stub):
    REALM[0] = f"{stub.url}/token"
    manifest, blobs = make_image([b"layer"])
    seen = []
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs, guard=token_guard(seen))
    token_requests = []

    def token(req):
        token_requests.append(req)
        if req.headers.get("authorization") != "Basic " + base64.b64encode(b"alice:pw").decode():
            return 401, {}, b"{}"
        return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": "good-token", "expires_in": 300}).encode()

    stub.routes["/token"] = token
    src = source(stub, "app:v1", username="alice", password="pw")
    image = src.resolve()
    assert read_all(src.open_blob(image.layers[0])) == b"layer"
    assert len(token_requests) == 1  # one token serves manifest, config and blob
    q = token_requests[0].query
    assert q["scope"] == ["repository:app:pull"] and q["service"] == ["svc"] and q["account"] == ["alice"]

    with pytest.raises(AuthError, match="wrong credentials") as e:
        source(stub, "app:v1", username="alice", password="wrong").resolve()
    assert "wrong" not in str(e.value).replace("wrong credentials", "")


def test_insufficient_scope_is_granted_once(stub):
    REALM[0] = f"{stub.url}/token"
    manifest, blobs = make_image([b"layer"])
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
    scopes_asked = []

    def token(req):
        scopes_asked.append(sorted(req.query.get("scope", [])))
        return 200, {}, json.dumps({"token": "t" + str(len(scopes_asked))}).encode()

    def guard_manifest(req):
        auth = req.headers.get("authorization")
        if auth == "Bearer t2":
            return 200, {"Content-Type": OCI_MANIFEST}, manifest
        if auth == "Bearer t1":
            return 401, {"WWW-Authenticate": f'Bearer realm="{REALM[0]}",service="svc",error="insufficient_scope",'
                                             f'scope="repository:app:pull repository:base:pull"'}, b""
        return 401, {"WWW-Authenticate": f'Bearer realm="{REALM[0]}",service="svc"'}, b""

    stub.routes["/token"] = token
    stub.routes["/v2/app/manifests/v1"] = guard_manifest
    source(stub, "app:v1").resolve()
    assert scopes_asked == [["repository:app:pull"], ["repository:app:pull", "repository:base:pull"]]


def test_anonymous_token_refused_means_not_found_or_auth(stub):
    REALM[0] = f"{stub.url}/token"
    seen = []
    serve_repo(stub, "app", {"v1": make_image([b"l"])[:1] + (OCI_MANIFEST,)}, {}, guard=token_guard(seen))
    stub.routes["/token"] = (200, {}, b'{"token": "anon"}')
    with pytest.raises(AuthError, match="not found, or it needs authentication"):
        source(stub, "app:v1").resolve()


def test_basic_auth_and_wrong_password(stub):
    manifest, blobs = make_image([b"layer"])
    good = "Basic " + base64.b64encode(b"bob:pw").decode()

    def guard(req):
        if req.headers.get("authorization") != good:
            return 401, {"WWW-Authenticate": 'Basic realm="test"'}, b""
        return None

    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs, guard=guard)
    source(stub, "app:v1", username="bob", password="pw").resolve()
    with pytest.raises(AuthError, match="wrong credentials"):
        source(stub, "app:v1", username="bob", password="bad").resolve()
    with pytest.raises(AuthError, match="requires authentication"):
        source(stub, "app:v1").resolve()


def test_schema1_is_refused(stub):
    body = dumps({"schemaVersion": 1, "name": "app", "tag": "v1", "fsLayers": []})
    stub.routes["/v2/app/manifests/v1"] = (200, {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"}, body)
    with pytest.raises(ImageError, match="schema 1"):
        source(stub, "app:v1").resolve()


def test_media_type_mismatch_is_refused(stub):
    manifest, blobs = make_image([b"layer"])
    stub.routes["/v2/app/manifests/v1"] = (200, {"Content-Type": OCI_INDEX}, manifest)
    with pytest.raises(ImageError, match="does not match the response"):
        source(stub, "app:v1").resolve()


def test_duplicate_keys_are_refused(stub):
    body = b'{"schemaVersion": 2, "schemaVersion": 2, "layers": []}'
    stub.routes["/v2/app/manifests/v1"] = (200, {"Content-Type": OCI_MANIFEST}, body)
    with pytest.raises(ImageError, match="duplicate key"):
        source(stub, "app:v1").resolve()


def test_pinned_digest_is_verified(stub):
    manifest, blobs = make_image([b"layer"])
    wrong = "sha256:" + "1" * 64
    stub.routes[f"/v2/app/manifests/{wrong}"] = (200, {"Content-Type": OCI_MANIFEST}, manifest)
    with pytest.raises(ImageError, match="does not match its digest"):
        source(stub, f"app@{wrong}").resolve()


def test_wrong_docker_content_digest_header_is_refused(stub):
    manifest, _ = make_image([b"layer"])
    stub.routes["/v2/app/manifests/v1"] = (200, {"Content-Type": OCI_MANIFEST,
                                                  "Docker-Content-Digest": "sha256:" + "2" * 64}, manifest)
    with pytest.raises(ImageError, match="Docker-Content-Digest"):
        source(stub, "app:v1").resolve()


def test_oversized_manifest_is_refused(stub):
    stub.routes["/v2/app/manifests/v1"] = (200, {"Content-Type": OCI_MANIFEST}, b" " * ((4 << 20) + 10))
    with pytest.raises(ImageError, match="larger than"):
        source(stub, "app:v1").resolve()


def test_config_digest_mismatch_is_refused(stub):
    manifest, blobs = make_image([b"layer"])
    doc = json.loads(manifest)
    blobs[doc["config"]["digest"]] = blobs[doc["config"]["digest"]].replace(b"amd64", b"arm64")
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
    with pytest.raises(ImageError, match="does not match its descriptor"):
        source(stub, "app:v1").resolve()


def cut_route(body: bytes, ranges: list, honour_range: bool = True, content_range: str | None = None):
    """First GET: headers for the whole body, half of it, then the connection drops."""
    state = {"n": 0}

    def route(req):
        state["n"] += 1
        rng = req.headers.get("range")
        ranges.append(rng)
        if state["n"] == 1:
            def cut(handler, status, headers):
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[: len(body) // 2])
                handler.wfile.flush()
                handler.close_connection = True
                import socket
                handler.connection.shutdown(socket.SHUT_RDWR)
            return 200, {}, cut
        if rng and honour_range:
            start = int(rng[6:-1])
            return 206, {"Content-Range": content_range or f"bytes {start}-{len(body) - 1}/{len(body)}"}, body[start:]
        return 200, {}, body
    return route


@pytest.mark.parametrize("honour_range", [True, False])
def test_blob_cut_midstream_resumes(stub, honour_range):
    big = os.urandom(300_000)
    manifest, blobs = make_image([big])
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
    ranges = []
    stub.routes[f"/v2/app/blobs/{digest(big)}"] = cut_route(big, ranges, honour_range)
    src = source(stub, "app:v1")
    image = src.resolve()
    with src.open_blob(image.layers[0]) as f:
        assert read_all(f) == big
    assert ranges[0] is None and ranges[1] == "bytes=150000-"


def test_resume_with_a_wrong_content_range_fails(stub):
    big = os.urandom(100_000)
    manifest, blobs = make_image([big])
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
    stub.routes[f"/v2/app/blobs/{digest(big)}"] = cut_route(big, [], content_range="bytes 0-99999/100000")
    src = source(stub, "app:v1")
    image = src.resolve()
    with pytest.raises(LayerError, match="Content-Range"):
        read_all(src.open_blob(image.layers[0]))


def test_blob_bytes_are_capped_at_the_descriptor_size(stub):
    manifest, blobs = make_image([b"exact"])
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
    stub.routes[f"/v2/app/blobs/{digest(b'exact')}"] = (200, {}, b"exact and then some more")
    src = source(stub, "app:v1")
    assert read_all(src.open_blob(src.resolve().layers[0])) == b"exact"


def test_foreign_urls_get_no_credentials(stub):
    other = Stub().start()
    try:
        manifest, blobs = make_image([b"foreign"])
        doc = json.loads(manifest)
        doc["layers"][0]["urls"] = [f"http://localhost:{other.host.split(':')[1]}/foreign.tar"]
        manifest = dumps(doc)
        blobs.pop(digest(b"foreign"))
        serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs)
        other.routes["/foreign.tar"] = (200, {}, b"foreign")
        src = source(stub, "app:v1", insecure_registries=(stub.host, "localhost"), username="u", password="p")
        assert read_all(src.open_blob(src.resolve().layers[0])) == b"foreign"
        assert "authorization" not in other.log[0].headers
    finally:
        other.stop()


# ---- the resolution cache and pull policies ------------------------------------------------

def prepare_store(tmp_path, image):
    store = tmp_path / "store"
    for layer in image.layers:
        (store / "layers" / layer.chain_id).mkdir(parents=True, exist_ok=True)
    return str(store)


def test_warm_resolve_is_one_head_and_missing_is_none(stub, tmp_path):
    multi_arch(stub)
    store = str(tmp_path / "store")
    image = source(stub, "multi:v1", store_root=store).resolve()
    assert load_cached(store, cache_key(parse_ref(f"docker://{stub.host}/multi:v1"), AMD64))[0] == image
    prepare_store(tmp_path, image)
    stub.log.clear()
    assert source(stub, "multi:v1", store_root=store).resolve() == image
    assert [(r.method, r.path) for r in stub.log] == [("HEAD", "/v2/multi/manifests/v1")]
    stub.log.clear()
    assert source(stub, "multi:v1", store_root=store, pull_policy="missing").resolve() == image
    assert source(stub, "multi:v1", store_root=store, pull_policy="never").resolve() == image
    assert stub.log == []


def test_changed_tag_is_fetched_again(stub, tmp_path):
    store = str(tmp_path / "store")
    m1, b1 = make_image([b"one"])
    serve_repo(stub, "app", {"v1": (m1, OCI_MANIFEST)}, b1)
    first = source(stub, "app:v1", store_root=store).resolve()
    prepare_store(tmp_path, first)
    m2, b2 = make_image([b"two"])
    serve_repo(stub, "app", {"v1": (m2, OCI_MANIFEST)}, b2)
    second = source(stub, "app:v1", store_root=store).resolve()
    assert second.manifest_digest == digest(m2)
    # --pull=missing: the cached image's layer for "two" is not in the store yet, so it asks
    assert source(stub, "app:v1", store_root=store, pull_policy="missing").resolve() == second


def test_pull_never_without_cache(stub, tmp_path):
    with pytest.raises(NotFound, match="not in the store"):
        source(stub, "app:v1", store_root=str(tmp_path), pull_policy="never").resolve()


def test_corrupt_cache_file_is_ignored(stub, tmp_path):
    m1, b1 = make_image([b"one"])
    serve_repo(stub, "app", {"v1": (m1, OCI_MANIFEST)}, b1)
    store = str(tmp_path / "store")
    key = cache_key(parse_ref(f"docker://{stub.host}/app:v1"), AMD64)
    os.makedirs(os.path.dirname(cache_path(store, key)))
    with open(cache_path(store, key), "w") as f:
        f.write('{"version": 1, "key": "%s", "top_digest": "../../etc", "image": {}}' % key)
    assert source(stub, "app:v1", store_root=store, pull_policy="missing").resolve().manifest_digest == digest(m1)


def test_pull_missing_does_not_import_requests(stub, tmp_path):
    m1, b1 = make_image([b"one"])
    serve_repo(stub, "app", {"v1": (m1, OCI_MANIFEST)}, b1)
    store = str(tmp_path / "store")
    prepare_store(tmp_path, source(stub, "app:v1", store_root=store).resolve())
    code = f"""
import sys
from rootless_groot.refs import parse_ref
from rootless_groot.sources import open_source
img = open_source(parse_ref("docker://{stub.host}/app:v1"), {AMD64!r}, store_root={store!r},
                  pull_policy="missing", registries_conf=()).resolve()
assert img.layers, img
assert "requests" not in sys.modules and "urllib3" not in sys.modules and "ssl" not in sys.modules, \\
    sorted(m for m in sys.modules if m.split(".")[0] in ("requests", "urllib3", "ssl"))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr


# ---- token renewal, mirrors ------------------------------------------------------------

def test_expired_or_revoked_token_is_renewed_for_blobs(stub):
    REALM[0] = f"{stub.url}/token"
    manifest, blobs = make_image([b"layer"])
    valid = {"t1"}
    issued = []

    def token(req):
        issued.append(f"t{len(issued) + 1}")
        return 200, {}, json.dumps({"token": issued[-1], "expires_in": 300}).encode()

    def guard(req):
        if (req.headers.get("authorization") or "").removeprefix("Bearer ") not in valid:
            return 401, {"WWW-Authenticate": f'Bearer realm="{REALM[0]}",service="svc"'}, b""
        return None

    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs, guard=guard)
    stub.routes["/token"] = token
    src = source(stub, "app:v1")
    image = src.resolve()
    assert issued == ["t1"]
    src.endpoint.auth.expires = 0  # as a forked worker would find it minutes later
    valid.add("t2")
    assert read_all(src.open_blob(image.layers[0])) == b"layer"
    assert issued == ["t1", "t2"]
    valid.clear()
    valid.add("t3")  # revoked server-side without expiry: one 401, then a new token
    assert read_all(src.open_blob(image.layers[0])) == b"layer"
    assert issued == ["t1", "t2", "t3"]


def test_registries_conf_mirrors_and_insecure(tmp_path):
    from rootless_groot.sources.registry import mirror_endpoint, read_registries_conf

    conf = tmp_path / "registries.conf"
    conf.write_text('''
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "docker.io"
[[registry.mirror]]
location = "mirror.example:5000/hub"
[[registry.mirror]]
location = "plain.example"
insecure = true
[[registry]]
location = "private.example:5000"
insecure = true
''')
    mirrors, insecure = read_registries_conf([str(tmp_path / "absent"), str(conf)], "docker.io")
    assert mirrors == ["mirror.example:5000/hub", "plain.example"]
    assert set(insecure) == {"plain.example", "private.example:5000"}
    ep, insecure_host = mirror_endpoint("mirror.example:5000/hub", "library/debian")
    assert (ep.base, ep.repository, insecure_host) == ("https://mirror.example:5000", "hub/library/debian", None)
    ep, insecure_host = mirror_endpoint("http://127.0.0.1:9", "library/debian")
    assert (ep.base, insecure_host) == ("http://127.0.0.1:9", "127.0.0.1:9")
    conf.write_text("[[registry]\n")
    with pytest.raises(Exception, match="cannot read"):
        read_registries_conf([str(conf)], "docker.io")


def test_docker_hub_mirrors_are_tried_in_order(stub, tmp_path):
    second = Stub().start()
    try:
        manifest, blobs = make_image([b"hub layer"])
        serve_repo(second, "library/busybox", {"1.36": (manifest, OCI_MANIFEST)}, blobs)
        src = open_source(parse_ref("docker:///busybox:1.36"), AMD64, registries_conf=(),
                          mirrors=(f"http://{stub.host}", f"http://{second.host}"))
        image = src.resolve()
        assert read_all(src.open_blob(image.layers[0])) == b"hub layer"
        assert stub.paths() == ["/v2/library/busybox/manifests/1.36"]  # a miss, then the next mirror
        assert src.endpoint.host == second.host
    finally:
        second.stop()




def test_plain_http_on_loopback_without_insecure_registry(stub):
    """As docker allows for 127.0.0.0/8: https is tried first, then plain HTTP (issue 11)."""
    multi_arch(stub)
    src = source(stub, "multi:v1", insecure_registries=())
    image = src.resolve()
    assert image.env == ["ARCH=amd64"]
    assert read_all(src.open_blob(image.layers[1])) == b"amd64 layer"
    src.close()


@pytest.mark.parametrize("expires", ["1" + "0" * 400, "1e999", "-5", '"soon"', "null"])
def test_odd_token_lifetimes_are_the_default_not_a_crash(stub, expires):
    REALM[0] = f"{stub.url}/token"
    manifest, blobs = make_image([b"layer"])
    serve_repo(stub, "app", {"v1": (manifest, OCI_MANIFEST)}, blobs, guard=token_guard([]))
    stub.routes["/token"] = lambda req: (200, {}, b'{"token": "good-token", "expires_in": %s}' % expires.encode())
    src = source(stub, "app:v1")
    image = src.resolve()
    assert read_all(src.open_blob(image.layers[0])) == b"layer"
