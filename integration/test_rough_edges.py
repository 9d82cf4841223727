"""Issue 11: each rough edge a new user met, for real as the unprivileged test user."""
from __future__ import annotations

import os
import shutil

import oci_builder as ob
import pytest


@pytest.fixture
def layout(user_tmp):
    return ob.write_layout(user_tmp / "layout", [ob.busybox_image()], tag="v1")


def test_references_that_look_like_something_else(cli, store_dir, layout, user_home):
    r = cli("--store", store_dir, "create", "debian:bookworm", "a", check=False)
    assert r.returncode == 1
    assert r.stdout == (f"stat {user_home}/debian:bookworm: no such file or directory; "
                        "for a registry image, use docker:///debian:bookworm\n")
    r = cli("--store", store_dir, "create", str(layout.path), "a", check=False)
    assert r.stdout == ("invalid base image: directory provided instead of a tar file: "
                        f"it is an OCI image layout, use oci://{layout.path}\n")


def test_store_problems_are_named(cli, as_user, user_tmp, layout):
    afile = user_tmp / "afile"
    as_user(["touch", str(afile)])
    rootdir = user_tmp / "rootdir"
    rootdir.mkdir(mode=0o755)  # pytest runs as root: a root-owned directory
    for args in (("list",), ("create", layout.uri("v1"), "x"), ("init-store",)):
        r = cli("--store", str(afile), *args, check=False)
        assert r.returncode == 1 and r.stdout.startswith(f"--store {afile} is a file, not a directory: choose a "
                                                         "directory you own with --store (the default is "), r
        r = cli("--store", str(afile / "sub"), *args, check=False)
        assert r.returncode == 1 and f"{afile} is a file, not a directory" in r.stdout, r
        if os.geteuid() == 0:
            r = cli("--store", str(rootdir), *args, check=False)
            assert r.returncode == 1 and r.stdout.startswith(
                f"--store {rootdir} belongs to root (uid 0), not to you: choose a directory you own"), r
            r = cli("--store", str(rootdir / "sub"), *args, check=False)
            assert f"{rootdir} belongs to root (uid 0) and is not writable by you" in r.stdout, r


def test_invalid_log_level_and_dns_failure_without_retries(cli, store_dir):
    r = cli("--store", store_dir, "list", "--log-level", "verbose", check=False)
    assert (r.returncode, r.stdout) == (1, "invalid log level `verbose`: use debug, info, error or fatal\n")
    r = cli("--store", store_dir, "--log-level", "info", "pull", "docker://no-such-host.invalid/x:1", check=False)
    assert r.returncode == 1 and r.stdout == "registry no-such-host.invalid is unreachable: unknown host\n"
    assert "registry.retry" not in r.stderr


def test_no_user_namespaces_names_cause_and_remedy(cli, as_user, store_dir, layout):
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is missing: scripts/install-deps.sh installs it"
    r = as_user([bwrap, "--unshare-user", "--disable-userns", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                 "--", cli.python, "-m", "rootless_groot", "--store", store_dir, "create", layout.uri("v1"), "x"],
                check=False)
    assert r.returncode == 1
    assert r.stdout.startswith("cannot create a user namespace (No space left on device): this runs inside a "
                               "sandbox or container that allows no further user namespaces"), r.stdout
    assert "run rootless-groot outside it" in r.stdout
