"""Issue 11: ``run`` and ``bundle`` for real, as the unprivileged test user with runc.

The image is oci_builder's busybox with a config that sets Entrypoint, Cmd, WorkingDir,
User and Env, so every field the runtime bundle takes from the image config is checked.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import oci_builder as ob
import pytest


@pytest.fixture
def layout(user_tmp):
    top = ob.Layer([ob.Dir("work", uid=33, gid=33), ob.File("work/note", b"from the image\n", uid=33, gid=33)])
    img = ob.busybox_image([top], env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hi"],
                           entrypoint=["/bin/sh", "-c"], cmd=['echo "$GREETING $(id -u):$(id -g) $(pwd)"; cat note'],
                           working_dir="/work", user="www-data", tag="cfg")
    plain = ob.busybox_image(tag="plain")
    lay = ob.write_layout(user_tmp / "layout", [img, plain])
    return lay


def test_run_takes_the_image_config_and_removes_the_image(cli, store_dir, layout):
    r = cli("--store", store_dir, "run", "--rm", layout.uri("cfg"))
    assert r.stdout == "hi 33:33 /work\nfrom the image\n", r.stderr
    # the command given replaces Cmd, keeps the Entrypoint; --env and --workdir override the image
    r = cli("--store", store_dir, "run", "--rm", "--env", "GREETING=hello", "-e", "EXTRA=1", "--workdir", "/tmp",
            layout.uri("cfg"), "--", 'echo "$GREETING $EXTRA $(pwd) $(hostname | cut -c1-4)"; exit 7', check=False)
    assert r.returncode == 7, r
    assert r.stdout == "hello 1 /tmp run-\n"
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"


def test_run_name_reuses_the_image_and_host_network(cli, store_dir, layout):
    r = cli("--store", store_dir, "run", "--name", "keep", layout.uri("plain"), "--",
            "sh", "-c", "echo one > /state; echo $PATH")
    assert r.stdout.strip() == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # same image again: the file written by the first container is there (the image is reused)
    r = cli("--store", store_dir, "run", "--name", "keep", layout.uri("plain"), "--", "cat", "/state")
    assert r.stdout == "one\n"
    # the host's network: the container sees the host's interfaces and resolv.conf
    host_ifaces = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
    r = cli("--store", store_dir, "run", "--name", "keep", layout.uri("plain"), "--", "cat", "/proc/net/dev")
    assert sorted(line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]) == host_ifaces
    r = cli("--store", store_dir, "run", "--rm", "--name", "keep", layout.uri("plain"), "--", "cat", "/etc/resolv.conf")
    assert r.stdout == open("/etc/resolv.conf").read()
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"


def test_run_missing_command_is_127_and_nothing_is_left(cli, store_dir, layout):
    r = cli("--store", store_dir, "run", "--rm", layout.uri("plain"), "--", "no-such-tool", check=False)
    assert r.returncode == 127
    assert r.stdout == "`no-such-tool`: executable file not found in the container\n"
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"
    r = cli("--store", store_dir, "enter", "--", "no-such-tool", check=False)
    assert (r.returncode, r.stdout) == (127, "no-such-tool: command not found\n")


def test_run_passes_stdin_and_signals(cli, store_dir, layout, test_user, user_home):
    r = cli("--store", store_dir, "run", "--rm", layout.uri("plain"), "--", "sh", "-c", "tr a-z A-Z",
            input="piped in\n")
    assert r.stdout == "PIPED IN\n"
    # SIGTERM to rootless-groot reaches the container's process; its exit status comes back
    argv = [*test_user.prefix(), "env", f"HOME={user_home}", cli.python, "-m", "rootless_groot", "--store",
            store_dir, "run", "--rm", layout.uri("plain"), "--", "sh", "-c",
            'trap "echo got TERM; exit 42" TERM; echo ready; sleep 600 & wait']
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGTERM)  # setpriv and env exec: proc.pid is rootless-groot
        assert proc.stdout.read() == "got TERM\n"
        assert proc.wait(timeout=60) == 42
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"


def test_bundle_for_runc_in_the_store_namespace(cli, store_dir, layout, user_tmp):
    cli("--store", store_dir, "create", layout.uri("cfg"), "b1")
    bundle = user_tmp / "bundle"
    cli("--store", store_dir, "bundle", "b1", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"][:2] == ["/bin/sh", "-c"]
    assert config["process"]["cwd"] == "/work" and config["process"]["user"]["uid"] == 33
    assert config["root"]["path"] == os.path.join(store_dir, "images", "b1", "rootfs")
    assert not any(ns["type"] in ("user", "network") for ns in config["linux"]["namespaces"])
    r = cli("--store", store_dir, "enter", "--", "runc", "--root", str(bundle / "state"), "run", "--bundle",
            str(bundle), "b1-ctr")
    assert r.stdout == "hi 33:33 /work\nfrom the image\n"
    r = cli("--store", store_dir, "run", "-t", layout.uri("plain"), check=False, input="")
    assert (r.returncode, r.stdout) == (1, "-t needs a terminal: the input is not a TTY\n")


def test_platform_of_a_single_platform_image_is_checked(cli, store_dir, layout):
    r = cli("--store", store_dir, "create", "--platform", "linux/arm64", layout.uri("plain"), "p1", check=False)
    assert r.returncode == 1
    assert r.stdout.endswith("is built for linux/amd64, not for the requested platform linux/arm64\n")
    r = cli("--store", store_dir, "create", "--platform", "linux/amd46", layout.uri("plain"), "p1", check=False)
    assert r.returncode == 1 and "unknown architecture `amd46`" in r.stdout
    cli("--store", store_dir, "create", "--platform", "linux/amd64", layout.uri("plain"), "p1")
