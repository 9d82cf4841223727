"""Garden's real deployments: preloaded+layer images exactly as Garden lays them out, OCI
layouts whose descriptor sizes are wrong, and what GrootFS's ``--skip-layer-validation`` means.

Garden turns ``preloaded+layer://<stack.tar>?layer=<droplet URL>&layer_path=/home/vcap&
layer_digest=<hex>`` into an OCI layout in its depot and calls ``create oci:///…/image <handle>``
(oci_builder.write_garden_layout writes the same bytes); the droplet is served over HTTP
from 127.0.0.1 by this module.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import select
import shutil
import ssl
import subprocess
import threading

import pytest

import oci_builder as ob

VCAP = 2000
SKIP_CONFIG = "create:\n  skip_layer_validation: true\n"


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


def serve(www, tls=None):
    """An HTTP(S) server on 127.0.0.1 serving ``www`` in a thread; ``.requests`` lists the paths asked."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    srv.requests = []
    srv.www = www
    srv.base = f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_port}"
    srv.thread = threading.Thread(target=srv.serve_forever, daemon=True)
    srv.thread.start()
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()
    srv.thread.join()


@pytest.fixture
def droplet_server(user_tmp):
    www = user_tmp / "www"
    www.mkdir()
    srv = serve(www)
    yield srv
    stop(srv)


def stack_tar(path, marker: str):
    """A small CF-stack-like rootfs tarball: busybox, /home/vcap owned by vcap (2000)."""
    entries = ob.busybox_entries() + [ob.Dir("home", 0o755), ob.Dir("home/vcap", 0o750, uid=VCAP, gid=VCAP),
                                      ob.File("etc/stack", marker)]
    return ob.write_rootfs_tarball(path, entries)


def droplet(script: str) -> ob.Layer:
    return ob.Layer([ob.Dir("app", uid=VCAP, gid=VCAP), ob.File("app/run.sh", script, 0o755, uid=VCAP, gid=VCAP),
                     ob.File("staging_info.yml", "{}\n", uid=VCAP, gid=VCAP)], compression="gzip")


def give_to(user, *paths):
    for p in paths:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(p)], check=True)


def in_store(cli, store, *cmd):
    return cli("--store", store, "enter", "--", *cmd).stdout


def test_preloaded_plus_layer_as_garden_writes_it(cli, store_dir, user_tmp, droplet_server, test_user):
    tar = stack_tar(user_tmp / "cflinuxfs.tar", "v1")
    drop = droplet("echo v1\n")
    (droplet_server.www / "droplet.tgz").write_bytes(drop.blob)
    url = f"{droplet_server.base}/droplet.tgz?signature=s3cr3t"
    hex_digest = drop.digest.split(":", 1)[1]
    depot = user_tmp / "depot"
    layouts = {h: ob.write_garden_layout(depot / h / "image", tar, url, hex_digest) for h in ("h0", "h1", "h2")}
    config = user_tmp / "grootfs.yml"
    config.write_text(SKIP_CONFIG)
    give_to(test_user, user_tmp)

    # Without skip_layer_validation the path+mtime "digest" cannot match (GrootFS fails too).
    r = cli("--store", store_dir, "create", layouts["h0"].uri(), "h0", check=False)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, r.stdout

    out = cli("--config", str(config), "--store", store_dir, "--log-level", "info", "create",
              layouts["h1"].uri(), "h1")
    root = json.loads(out.stdout)["root"]["path"]
    assert "s3cr3t" not in out.stderr  # the droplet URL's query (signed) is never logged
    lines = in_store(cli, store_dir, "stat", "-c", "%n %u:%g %a", f"{root}/home/vcap", f"{root}/home/vcap/app",
                     f"{root}/home/vcap/app/run.sh", f"{root}/home/vcap/staging_info.yml", f"{root}/bin/sh")
    got = {os.path.relpath(line.split()[0], root): line.split()[1:] for line in lines.splitlines()}
    # the droplet's base dir keeps the stack's owner and mode; the droplet's files land under it
    assert got["home/vcap"] == [f"{VCAP}:{VCAP}", "750"], got
    assert got["home/vcap/app/run.sh"] == [f"{VCAP}:{VCAP}", "755"], got
    assert "home/vcap/staging_info.yml" in got and "bin/sh" in got
    assert in_store(cli, store_dir, "cat", f"{root}/home/vcap/app/run.sh") == "echo v1\n"
    assert droplet_server.requests == ["/droplet.tgz?signature=s3cr3t"]

    # A second container of the same app: every layer comes from the store, nothing is fetched.
    cli("--config", str(config), "--store", store_dir, "create", layouts["h2"].uri(), "h2")
    assert len(droplet_server.requests) == 1

    # The stack tarball is replaced with its mtime kept (cp -p, rsync -t): Garden computes the
    # same "digest" (path + mtime), yet the new stack must be unpacked (GrootFS would reuse the old).
    old = os.stat(tar)
    stack_tar(user_tmp / "new.tar", "v2")
    os.utime(user_tmp / "new.tar", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.rename(user_tmp / "new.tar", tar)
    h3 = ob.write_garden_layout(depot / "h3" / "image", tar, url, hex_digest)
    assert h3.index == layouts["h1"].index  # byte-identical layout: only the file changed
    give_to(test_user, user_tmp)
    root3 = json.loads(cli("--config", str(config), "--store", store_dir, "create", h3.uri(), "h3").stdout)["root"]["path"]
    assert in_store(cli, store_dir, "cat", f"{root3}/etc/stack") == "v2"
    assert in_store(cli, store_dir, "cat", f"{root3}/home/vcap/app/run.sh") == "echo v1\n"
    assert in_store(cli, store_dir, "cat", f"{root}/etc/stack") == "v1"  # the running container keeps its own

    # The droplet's digest is the one integrity check of a download: a wrong one is refused,
    # with skip_layer_validation too, and nothing is kept.
    bad = ob.write_garden_layout(depot / "h4" / "image", tar, url, "ab" * 32)
    give_to(test_user, user_tmp)
    r = cli("--config", str(config), "--store", store_dir, "create", bad.uri(), "h4", check=False)
    assert r.returncode == 1 and "digest mismatch" in r.stdout and len(r.stdout.splitlines()) == 1, r.stdout
    assert not os.path.exists(os.path.join(store_dir, "images", "h4"))

    for h in ("h1", "h2", "h3"):
        cli("--store", store_dir, "delete", h)


def _rewrite_manifest(lay: ob.Layout, edit) -> None:
    """Edit the (only) manifest of a layout, store it under its new digest, and give the
    index a wrong size for it (GrootFS ignores index/manifest sizes when the digest matches)."""
    desc = lay.index["manifests"][0]
    manifest = json.loads(lay.blob_path(desc["digest"]).read_bytes())
    edit(manifest)
    data = ob.canonical_json(manifest)
    digest = ob.sha256_digest(data)
    lay.blob_path(digest).write_bytes(data)
    index = dict(lay.index, manifests=[dict(desc, digest=digest, size=len(data) + 7)])
    (lay.path / "index.json").write_bytes(ob.canonical_json(index))


def test_descriptor_sizes_and_skip_layer_validation(cli, store_dir, user_tmp):
    img = ob.busybox_image([ob.Layer([ob.File("etc/payload", b"payload")])])

    docs = ob.write_layout(user_tmp / "docs", [img], tag="t")
    _rewrite_manifest(docs, lambda m: m["config"].update(size=0))
    out = cli("--store", store_dir, "create", "--without-mount", docs.uri("t"), "docs")
    assert json.loads(out.stdout)["root"]["path"].endswith("/images/docs/rootfs")

    lay = ob.write_layout(user_tmp / "layer", [ob.busybox_image([ob.Layer([ob.File("etc/other", b"x")])])], tag="t")
    _rewrite_manifest(lay, lambda m: m["layers"][1].update(size=m["layers"][1]["size"] + 1))
    r = cli("--store", store_dir, "create", lay.uri("t"), "layer", check=False)
    assert r.returncode == 1 and "size" in r.stdout and len(r.stdout.splitlines()) == 1, r.stdout
    # GrootFS: --skip-layer-validation skips the layer checks of oci:// images
    cli("--store", store_dir, "create", "--without-mount", "--skip-layer-validation", lay.uri("t"), "layer")


def test_rootless_mounted_create_under_a_plugin_caller(cli, as_user, store_dir, user_tmp):
    """A rootless mounted image exists only in the store's namespace: refused when Garden (gdn)
    calls, a warning naming the fix when another program captures the output, silent otherwise."""
    lay = ob.write_layout(user_tmp / "w", [ob.busybox_image()], tag="t")
    r = cli("--store", store_dir, "create", lay.uri("t"), "m1")
    assert "warning:" in r.stderr and "--without-mount" in r.stderr and "create.without_mount" in r.stderr, r.stderr
    r = cli("--store", store_dir, "create", "--without-mount", lay.uri("t"), "n1")
    assert "without-mount" not in r.stderr
    gdn = user_tmp / "gdn"  # a shell called gdn stands in for Garden as the parent process
    gdn.write_bytes(open("/bin/sh", "rb").read())
    gdn.chmod(0o755)
    argv = [str(gdn), "-c", '"$@"; exit $?', "gdn", cli.python, "-m", "rootless_groot", "--store", store_dir]
    r = as_user([*argv, "create", lay.uri("t"), "g1"], check=False)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1, (r.stdout, r.stderr)
    assert "--without-mount" in r.stdout and "create.without_mount: true" in r.stdout
    assert not os.path.exists(os.path.join(store_dir, "images", "g1"))
    as_user([*argv, "create", "--without-mount", lay.uri("t"), "g2"])
    # one keeper for the store, and the owner's delete-store stops it
    keeper = int(open(os.path.join(store_dir, "run", "keeper.pid")).read())
    assert keepers_of(store_dir) == [keeper]
    pidfd = os.pidfd_open(keeper)  # readable once the process has exited
    try:
        cli("--store", store_dir, "delete-store")
        assert select.select([pidfd], [], [], 10)[0], f"keeper {keeper} still runs"
    finally:
        os.close(pidfd)


def keepers_of(store: str) -> list[int]:
    mark = f"rootless-groot-keeper:{store}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0", 1)[0] == mark:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_droplet_over_mutual_tls(cli, store_dir, user_tmp, test_user):
    """GrootFS's ``create.remote_layer_client_certificates_path`` (garden-runc-release sets it):
    a certs.d-style directory with the server's CA (``*.crt``) and the client's ``*.cert``/``*.key``."""
    from registry_env import make_cert

    server_cert, server_key = make_cert(user_tmp / "server-tls", "server")
    client_cert, client_key = make_cert(user_tmp / "client-tls", "client")
    certs = user_tmp / "certs"
    certs.mkdir()
    shutil.copy(server_cert, certs / "server.crt")
    shutil.copy(client_cert, certs / "client.cert")
    shutil.copy(client_key, certs / "client.key")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(server_cert, server_key)
    tls.verify_mode = ssl.CERT_REQUIRED
    tls.load_verify_locations(cafile=str(client_cert))
    www = user_tmp / "www"
    www.mkdir()
    drop = droplet("echo tls\n")
    (www / "droplet.tgz").write_bytes(drop.blob)
    srv = serve(www, tls)
    try:
        tar = stack_tar(user_tmp / "stack.tar", "v1")
        lay = ob.write_garden_layout(user_tmp / "depot" / "h" / "image", tar, f"{srv.base}/droplet.tgz",
                                     drop.digest.split(":", 1)[1])
        plain, mtls = user_tmp / "plain.yml", user_tmp / "mtls.yml"
        ca_only = user_tmp / "ca-only"  # trusts the server, has no client certificate
        ca_only.mkdir()
        shutil.copy(server_cert, ca_only / "server.crt")
        plain.write_text(SKIP_CONFIG + f"  remote_layer_client_certificates_path: {ca_only}\n")
        mtls.write_text(SKIP_CONFIG + f"  remote_layer_client_certificates_path: {certs}\n")
        give_to(test_user, user_tmp)
        cli("--store", store_dir, "init-store")  # with a config file (Garden), no auto-init
        r = cli("--config", str(plain), "--store", store_dir, "create", lay.uri(), "h0", check=False)
        assert r.returncode == 1 and "droplet.tgz" in r.stdout and srv.requests == [], r.stdout
        root = json.loads(cli("--config", str(mtls), "--store", store_dir, "create", lay.uri(), "h1").stdout)["root"]["path"]
        assert in_store(cli, store_dir, "cat", f"{root}/home/vcap/app/run.sh") == "echo tls\n"
        assert srv.requests == ["/droplet.tgz"]
    finally:
        stop(srv)
