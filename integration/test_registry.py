"""docker:// against real registries on 127.0.0.1 (Debian's docker-registry, filled by skopeo).

Registries, the token server and the fault proxies are started once per module and stopped in
teardown; every test uses a fresh store and drives the CLI as the unprivileged test user.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import oci_builder as ob
import pytest
from conftest import make_user_dir
from registry_env import FaultProxy, Registry, TokenServer, htpasswd_file, make_cert, push

from rootless_groot.digests import chain_ids

assert shutil.which("docker-registry") and shutil.which("skopeo"), \
    "docker-registry and skopeo are needed: make test installs them (scripts/install-deps.sh)"

USER, PASSWORD = "alice", "alice-secret-pw"
TOKEN_USER, TOKEN_PASSWORD = "carol", "carol-token-pw"
REPO = "test/simple"
MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())


class Images:
    def __init__(self, workdir: Path):
        self.big = ob.Layer([ob.File("big.bin", os.urandom(1_500_000))], compression="gzip")
        self.small = ob.Layer([ob.Dir("etc"), ob.File("etc/hello", b"hello from the registry\n")], compression="gzip")
        self.simple = ob.Image([self.small, self.big], env=["PATH=/bin", "FROM=registry"])
        self.layout = ob.write_layout(workdir / "simple", [self.simple], tag="v1")
        amd = ob.Image([self.small, ob.Layer([ob.File("arch", b"amd64\n")])], env=["ARCH=amd64"], architecture="amd64")
        arm = ob.Image([self.small, ob.Layer([ob.File("arch", b"arm64\n")])], env=["ARCH=arm64"], architecture="arm64")
        self.multi = ob.write_layout(workdir / "multi", [ob.multi_platform_index(amd, arm)], tag="v1")

    def chain_of(self, layer_index: int) -> str:
        return chain_ids([l.diff_id for l in self.simple.layers])[layer_index]


@pytest.fixture(scope="module")
def env(test_user):
    """All servers of this module; everything is stopped at the end, whatever happened."""
    work = make_user_dir(test_user, prefix="registry-")
    started = []

    def start(server):
        started.append(server)
        return server.start()

    try:
        cert, key = make_cert(work / "tls")
        images = Images(work / "layouts")
        hp = htpasswd_file(work / "htpasswd", {USER: PASSWORD})
        ns = type("Env", (), {})()
        ns.work, ns.cert, ns.images = work, cert, images
        ns.plain = start(Registry(work / "plain"))
        ns.tls = start(Registry(work / "tls-anon", tls=(cert, key)))
        ns.htpasswd = start(Registry(work / "tls-htpasswd", tls=(cert, key), htpasswd=hp))
        ns.tokens = start(TokenServer(work / "token", users={TOKEN_USER: TOKEN_PASSWORD}, tls=(cert, key)))
        ns.token = start(Registry(work / "tls-token", tls=(cert, key), token=ns.tokens.registry_auth()))
        ns.auth_http = start(Registry(work / "http-htpasswd", htpasswd=hp))
        creds = f"{USER}:{PASSWORD}"
        for reg, c in ((ns.plain, None), (ns.tls, None), (ns.htpasswd, creds),
                       (ns.token, f"{TOKEN_USER}:{TOKEN_PASSWORD}"), (ns.auth_http, creds)):
            push(images.layout.uri("v1"), f"{reg.host}/{REPO}:v1", creds=c)
        push(images.multi.uri("v1"), f"{ns.plain.host}/test/multi:v1", all_platforms=True)
        yield ns
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def proxy(env):
    """A fault proxy in front of the plain anonymous registry (fresh faults and records)."""
    p = FaultProxy(env.plain.port).start()
    yield p
    p.stop()


def create(cli, store, ref, image_id, *flags, check=True):
    r = cli("--store", store, "create", *flags, f"docker://{ref}", image_id, check=check)
    return json.loads(r.stdout) if r.returncode == 0 else r


def failure(r) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    return lines[0]


def layer_dirs(store) -> list[str]:
    path = os.path.join(store, "layers")
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


# ---- transports and auth -------------------------------------------------------------------------

def test_anonymous_pull_over_plain_http(cli, store_dir, env):
    host = env.plain.host
    spec = create(cli, store_dir, f"{host}/{REPO}:v1", "c1", "--insecure-registry", host)
    assert "FROM=registry" in spec["process"]["env"]
    assert spec["root"]["path"] == f"{store_dir}/images/c1/rootfs"
    assert len(layer_dirs(store_dir)) == 2
    with open(os.path.join(store_dir, "layers", env.images.chain_of(0), "diff", "etc", "hello"), "rb") as f:
        assert f.read() == b"hello from the registry\n"
    # on the loopback, plain HTTP needs no flag (as docker allows for 127.0.0.0/8; issue 11);
    # elsewhere the transport refuses it (tests/test_registry_http.py)
    spec = create(cli, store_dir, f"{host}/{REPO}:v1", "c2")
    assert "FROM=registry" in spec["process"]["env"]


def test_unknown_image_tag_and_unreachable_registry(cli, store_dir, env):
    host = env.plain.host
    line = failure(create(cli, store_dir, f"{host}/{REPO}:nope", "c1", "--insecure-registry", host, check=False))
    assert line == f"image docker://{host}/{REPO}:nope not found"
    line = failure(create(cli, store_dir, f"{host}/test/absent:v1", "c1", "--insecure-registry", host, check=False))
    assert "not found" in line
    line = failure(create(cli, store_dir, "127.0.0.1:1/x:v1", "c1", check=False))
    assert "127.0.0.1:1 is unreachable: connection refused" in line


def test_self_signed_tls(cli, store_dir, env):
    host = env.tls.host
    r = cli("--store", store_dir, "--log-level", "error", "create", f"docker://{host}/{REPO}:v1", "c1", check=False)
    # GrootFS's exact sentence on stdout (Garden and GrootFS's suite match it); the advice, naming
    # the certificate problem and both fixes, in the log.
    assert failure(r) == ("This registry is insecure. To pull images from this registry, "
                          "please use the --insecure-registry option.")
    hint = next(json.loads(x)["data"]["hint"] for x in r.stderr.splitlines() if '"hint"' in x)
    assert "certificate" in hint and f"--insecure-registry {host}" in hint and "--registry-ca" in hint
    create(cli, store_dir, f"{host}/{REPO}:v1", "c1", "--insecure-registry", host)
    create(cli, store_dir, f"{host}/{REPO}:v1", "c2", "--registry-ca", str(env.cert))


def test_htpasswd_over_tls_with_flags(cli, store_dir, env):
    host = env.htpasswd.host
    ca = ("--registry-ca", str(env.cert))
    create(cli, store_dir, f"{host}/{REPO}:v1", "c1", *ca, "--username", USER, "--password", PASSWORD)
    r = create(cli, store_dir, f"{host}/{REPO}:v1", "c2", *ca, "--username", USER, "--password", "wrong-pw-123",
               check=False)
    line = failure(r)
    assert "wrong credentials" in line
    assert "wrong-pw-123" not in r.stdout + r.stderr
    line = failure(create(cli, store_dir, f"{host}/{REPO}:v1", "c3", *ca, check=False))
    assert "requires authentication" in line


def test_htpasswd_with_docker_config_json(cli, store_dir, env, user_home, test_user):
    import base64

    host = env.htpasswd.host
    docker_dir = user_home / ".docker"
    docker_dir.mkdir(mode=0o755, exist_ok=True)
    config = docker_dir / "config.json"

    def write(password):
        auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
        config.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
        os.chmod(config, 0o644)

    def run(image_id):
        return cli("--store", store_dir, "--log-level", "debug", "create", "--registry-ca", str(env.cert),
                   f"docker://{host}/{REPO}:v1", image_id, check=False)

    write(PASSWORD)
    r = run("c1")
    assert r.returncode == 0, r.stdout
    assert PASSWORD not in r.stdout + r.stderr
    write("stale-password")
    r = run("c2")
    assert "wrong credentials" in failure(r)
    assert "stale-password" not in r.stdout + r.stderr and PASSWORD not in r.stdout + r.stderr


def test_token_auth_with_scope(cli, store_dir, env):
    host = env.token.host
    ca = ("--registry-ca", str(env.cert))
    env.tokens.requests.clear()
    create(cli, store_dir, f"{host}/{REPO}:v1", "c1", *ca, "--username", TOKEN_USER, "--password", TOKEN_PASSWORD)
    granted = [r for r in env.tokens.requests if r["ok"]]
    assert granted and all(r["user"] == TOKEN_USER for r in granted)
    assert granted[0]["scopes"] == [f"repository:{REPO}:pull"] and granted[0]["service"] == "test-registry"
    line = failure(create(cli, store_dir, f"{host}/{REPO}:v1", "c2", *ca, "--username", TOKEN_USER,
                          "--password", "nope-nope", check=False))
    assert "wrong credentials" in line
    assert "unable to retrieve auth token: invalid username/password" in line  # GrootFS's words


@pytest.mark.skipif(MACHINE_ARCH is None, reason="needs an amd64 or arm64 machine")
def test_manifest_list_platforms(cli, store_dir, env):
    host = env.plain.host
    spec = create(cli, store_dir, f"{host}/test/multi:v1", "c1", "--insecure-registry", host)
    assert f"ARCH={MACHINE_ARCH}" in spec["process"]["env"]
    other = "arm64" if MACHINE_ARCH == "amd64" else "amd64"
    spec = create(cli, store_dir, f"{host}/test/multi:v1", "c2", "--insecure-registry", host,
                  "--platform", f"linux/{other}")
    assert f"ARCH={other}" in spec["process"]["env"]
    line = failure(create(cli, store_dir, f"{host}/test/multi:v1", "c3", "--insecure-registry", host,
                          "--platform", "linux/s390x", check=False))
    assert "no image for platform linux/s390x" in line


# ---- faults --------------------------------------------------------------------------------------

def test_cut_blob_resumes(cli, store_dir, env, proxy):
    proxy.faults.cut_blobs_once.add(env.images.big.digest)
    create(cli, store_dir, f"{proxy.host}/{REPO}:v1", "c1", "--insecure-registry", proxy.host)
    big = [r for r in proxy.blob_requests() if r.path.endswith(env.images.big.digest)]
    assert len(big) == 2
    assert big[1].headers.get("Range") == f"bytes={env.images.big.size // 2}-" and big[1].status == 206
    assert env.images.chain_of(1) in layer_dirs(store_dir)


def test_corrupted_blob_is_refused_and_not_cached(cli, store_dir, env, proxy):
    proxy.faults.corrupt_blobs.add(env.images.big.digest)
    line = failure(create(cli, store_dir, f"{proxy.host}/{REPO}:v1", "c1", "--insecure-registry", proxy.host,
                          check=False))
    assert env.images.big.digest in line and ("digest" in line or "corrupt" in line), line
    assert env.images.chain_of(1) not in layer_dirs(store_dir)
    assert not os.path.exists(os.path.join(store_dir, "images", "c1"))
    tmp = os.path.join(store_dir, "tmp")
    assert not os.path.isdir(tmp) or os.listdir(tmp) == []


def test_blob_corrupted_once_is_fetched_again_from_scratch(cli, store_dir, env, proxy):
    proxy.faults.corrupt_blobs_once.add(env.images.big.digest)
    r = cli("--store", store_dir, "create", "--insecure-registry", proxy.host, f"docker://{proxy.host}/{REPO}:v1", "c1")
    big = [x for x in proxy.blob_requests() if x.path.endswith(env.images.big.digest) and x.method == "GET"]
    assert len(big) == 2 and "Range" not in big[1].headers  # the second fetch starts from byte 0
    assert env.images.chain_of(1) in layer_dirs(store_dir)
    assert "fetching" in r.stderr and "once more" in r.stderr


def test_stalled_registry_fails_after_the_inactivity_timeout(cli, store_dir, env, proxy):
    proxy.faults.stall_blobs.add(env.images.big.digest)
    r = create(cli, store_dir, f"{proxy.host}/{REPO}:v1", "c1", "--insecure-registry", proxy.host,
               "--registry-timeout", "2", check=False)
    line = failure(r)
    assert env.images.big.digest in line and "sent nothing for 2 s (inactivity timeout" in line, line
    assert env.images.chain_of(1) not in layer_dirs(store_dir)
    assert not os.path.exists(os.path.join(store_dir, "images", "c1"))


def test_429_then_success(cli, store_dir, env, proxy):
    proxy.faults.status_once[f"/v2/{REPO}/manifests/"] = 429
    create(cli, store_dir, f"{proxy.host}/{REPO}:v1", "c1", "--insecure-registry", proxy.host)
    manifests = [r.status for r in proxy.requests if "/manifests/" in r.path]
    assert manifests[:2] == [429, 200]


def test_redirect_to_another_host_gets_no_authorization(cli, store_dir, env):
    import base64

    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cdn = FaultProxy(env.auth_http.port, upstream_auth=basic, host="localhost").start()
    front = FaultProxy(env.auth_http.port).start()
    try:
        front.faults.redirect_blobs_to = cdn.url
        create(cli, store_dir, f"{front.host}/{REPO}:v1", "c1", "--insecure-registry", front.host,
               "--insecure-registry", cdn.host, "--username", USER, "--password", PASSWORD)
        assert any(r.headers.get("Authorization") for r in front.requests if "/manifests/" in r.path)
        assert cdn.blob_requests(), "the blobs should have come through the redirect"
        assert all("Authorization" not in r.headers for r in cdn.requests)
    finally:
        front.stop()
        cdn.stop()


# ---- warm path -------------------------------------------------------------------------------------

def test_second_create_makes_no_blob_requests(cli, store_dir, env, proxy):
    ref = f"{proxy.host}/{REPO}:v1"
    flags = ("--insecure-registry", proxy.host)
    create(cli, store_dir, ref, "c1", *flags)
    assert proxy.blob_requests()
    proxy.requests.clear()
    create(cli, store_dir, ref, "c2", *flags)
    assert proxy.blob_requests() == []
    assert [(r.method, "/manifests/" in r.path) for r in proxy.requests if "/v2/" != r.path] == [("HEAD", True)]
    proxy.requests.clear()
    create(cli, store_dir, ref, "c3", *flags, "--pull=missing")
    assert proxy.requests == []
    assert len(os.listdir(os.path.join(store_dir, "refs"))) == 1


def test_damaged_layer_of_a_retagged_image_fails_only_the_image_that_uses_it(cli, store_dir, env, user_tmp):
    """A warm create checks the cached resolution's layers while the registry answers the HEAD;
    the verdict counts only for the layers of the image the HEAD confirms."""
    repo, flags = "test/retag-damaged", ("--insecure-registry", env.plain.host)
    ref = f"{env.plain.host}/{repo}:latest"

    def push_version(n: int, text: bytes) -> None:
        layout = ob.write_layout(user_tmp / f"rd{n}", [ob.busybox_image([ob.Layer([ob.File("version", text)])])],
                                 tag="t")
        push(layout.uri("t"), ref)

    push_version(0, b"one\n")
    create(cli, store_dir, ref, "r0", *flags)
    (damaged,) = [d for d in layer_dirs(store_dir)
                  if os.path.exists(os.path.join(store_dir, "layers", d, "diff", "version"))]
    os.unlink(os.path.join(store_dir, "layers", damaged, "diff", "version"))
    r = create(cli, store_dir, ref, "r1", *flags, check=False)  # same tag, same image: refused
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, r.stdout
    assert "damaged (/ changed since it was unpacked)" in r.stdout, r.stdout
    push_version(1, b"two\n")  # the tag moves to an image without the damaged layer
    spec = create(cli, store_dir, ref, "r2", *flags)
    rootfs = spec["root"]["path"]
    assert cli("--store", store_dir, "enter", "--", "cat", f"{rootfs}/version").stdout == "two\n"


def test_pull_command_warms_the_cache(cli, store_dir, env, proxy):
    ref = f"{proxy.host}/{REPO}:v1"
    r = cli("--store", store_dir, "pull", "--insecure-registry", proxy.host, f"docker://{ref}")
    assert r.stdout.strip() == env.images.simple.digest
    assert len(layer_dirs(store_dir)) == 2
    proxy.requests.clear()
    create(cli, store_dir, ref, "c1", "--insecure-registry", proxy.host, "--pull", "never")
    assert proxy.requests == []


def test_warm_path_notices_a_retagged_image(cli, store_dir, env, user_tmp):
    """The warm HEAD check: same tag, new image -> the new image, and the cache follows."""
    repo, flags = "test/retag", ("--insecure-registry", env.plain.host)
    ref = f"{env.plain.host}/{repo}:latest"

    def version(image_id):
        rootfs = os.path.join(store_dir, "images", image_id, "rootfs")
        return cli("--store", store_dir, "enter", "--", "cat", f"{rootfs}/version").stdout

    for n, text in enumerate((b"one\n", b"two\n")):
        layout = ob.write_layout(user_tmp / f"retag{n}", [ob.busybox_image([ob.Layer([ob.File("version", text)])])],
                                 tag="t")
        push(layout.uri("t"), ref)
        create(cli, store_dir, ref, f"r{n}", *flags)
        assert version(f"r{n}") == text.decode()
        create(cli, store_dir, ref, f"w{n}", *flags)  # warm: one HEAD, same digest
        assert version(f"w{n}") == text.decode()
    create(cli, store_dir, ref, "m", *flags, "--pull=missing")
    assert version("m") == "two\n"
