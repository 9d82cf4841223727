"""GrootFS compatibility of the CLI surface: lager log lines, config files written for GrootFS,
GrootFS's messages and exit codes where its users (Garden, its own test suite) check them.

GrootFS's own suite runs behind `make peer-tests` (docs/peer-tests.md); these are the fast checks.
"""
from __future__ import annotations

import json
import os
import re

import oci_builder as ob
import pytest

RFC3339_NANO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")


def lager_lines(text: str) -> list[dict]:
    """Every stderr line must be one lager JSON object with exactly lager's keys."""
    lines = []
    for raw in text.splitlines():
        rec = json.loads(raw)
        assert set(rec) == {"timestamp", "level", "source", "message", "data"}, rec
        assert RFC3339_NANO.match(rec["timestamp"]), rec["timestamp"]
        assert rec["level"] in ("debug", "info", "error", "fatal"), rec
        assert rec["source"] == "grootfs" and rec["message"].startswith("grootfs."), rec
        assert isinstance(rec["data"], dict)
        lines.append(rec)
    return lines


@pytest.fixture
def stack(user_tmp):
    return str(ob.write_rootfs_tarball(user_tmp / "stack.tar", [ob.Dir("etc"), ob.File("etc/hello", b"hi\n")]))


def test_lager_lines_and_every_step_of_a_warm_create_with_timings(cli, store_dir, stack):
    r = cli("--store", store_dir, "--log-level", "debug", "create", "--without-mount", stack, "cold")
    lines = lager_lines(r.stderr)
    assert any(line["level"] == "debug" for line in lines)
    # warm: layers cached; at info every step still shows, with how long it took
    r = cli("--store", store_dir, "--log-level", "info", "create", "--without-mount", stack, "warm")
    lines = lager_lines(r.stderr)
    assert all(line["level"] == "info" for line in lines)
    ends = {line["message"]: line["data"] for line in lines if line["message"].endswith(".ending")}
    for step in ("groot-creating", "resolving-image", "unpacking-layers", "making-image"):
        assert isinstance(ends[f"grootfs.create.{step}.ending"]["seconds"], float), (step, ends)
    assert ends["grootfs.create.groot-creating.ending"]["id"] == "warm"
    # the default level (fatal) says nothing on success
    r = cli("--store", store_dir, "create", "--without-mount", stack, "quiet")
    assert r.stderr == ""


def test_delete_and_stats_log_the_id_and_use_grootfs_messages(cli, store_dir, stack):
    cli("--store", store_dir, "create", "--without-mount", stack, "a")
    r = cli("--store", store_dir, "--log-level", "debug", "stats", "nope", check=False)
    assert (r.returncode, r.stdout) == (1, "Image `nope` not found.\n")
    assert any(line["data"].get("id") == "nope" for line in lager_lines(r.stderr))
    r = cli("--store", store_dir, "stats", "/elsewhere/images/x/rootfs", check=False)
    assert (r.returncode, r.stdout) == (1, "path `/elsewhere/images/x/rootfs` is outside store path\n")
    # stats without a quota: GrootFS's numbers (nothing accounted, the image's size)
    usage = json.loads(cli("--store", store_dir, "stats", "a").stdout)["disk_usage"]
    assert usage["exclusive_bytes_used"] == usage["quota_size_bytes"] == 0
    assert usage["total_bytes_used"] == usage["committed_space_bytes"] > 0
    r = cli("--store", store_dir, "--log-level", "info", "delete", "a")
    assert r.stdout == "Image a deleted\n"
    starts = [line for line in lager_lines(r.stderr) if line["message"] == "grootfs.delete.groot-deleting.starting"]
    assert starts and starts[0]["data"]["id"] == "a"
    # a store that does not exist: the image is reported missing, and the id is in the log
    missing = os.path.join(os.path.dirname(store_dir), "missing")
    r = cli("--store", missing, "--log-level", "debug", "stats", "/path/to/random-id", check=False)
    assert r.returncode == 1
    assert any(line["data"].get("id") == "/path/to/random-id" for line in lager_lines(r.stderr))


def test_release_config_with_unknown_keys_needs_init_store_and_logs_what_it_ignored(cli, store_dir, stack, user_tmp):
    config = user_tmp / "grootfs.yml"
    config.write_text(f"""store: {store_dir}
log_level: info
tardis_bin: /nonexistent/tardis
metron_endpoint: ""
driver: overlay-xfs
drax_bin: /var/vcap/packages/grootfs/bin/drax
btrfs_progs_path: /var/vcap/packages/btrfs-progs/bin
create:
  json: true
  with_clean: false
  without_mount: true
init:
  owneruser: vcap
  ownergroup: vcap
clean:
""")
    os.chmod(config, 0o644)
    # with a config file (Garden), no auto-init: GrootFS's message
    r = cli("--config", str(config), "create", stack, "a", check=False)
    assert (r.returncode, r.stdout) == (1, "Store path is not initialized. Please run init-store.\n")
    assert not os.path.exists(store_dir)
    cli("--config", str(config), "init-store")
    r = cli("--config", str(config), "--tardis-bin", "/x", "--metron-endpoint", "127.0.0.1:9", "create", stack, "a")
    assert json.loads(r.stdout)["root"]["path"] == f"{store_dir}/images/a/rootfs"
    ignored = [line["data"]["keys"] for line in lager_lines(r.stderr)
               if line["message"] == "grootfs.create.config.unknown-keys-ignored"]
    assert ignored == [["driver", "drax_bin", "btrfs_progs_path", "create.json", "init.owneruser", "init.ownergroup"]]
    r = cli("--config", str(config), "init-store")
    assert any(line["message"].endswith("store-already-initialized") for line in lager_lines(r.stderr))
    # garden-runc-release's pre-start runs GrootFS's upgrade step: nothing to do here
    assert cli("--config", str(config), "generate-volume-size-metadata").returncode == 0


def test_auto_init_only_for_a_fresh_path_without_config(cli, store_dir, stack, as_user):
    os.makedirs(store_dir)  # made by someone: an operator's directory, not a store
    os.chown(store_dir, *_owner(store_dir))
    r = cli("--store", store_dir, "create", stack, "a", check=False)
    assert (r.returncode, r.stdout) == (1, "Store path is not initialized. Please run init-store.\n")
    # delete-store refuses a directory that is not a store (GrootFS: exit 1) and keeps it
    r = cli("--store", store_dir, "delete-store", check=False)
    assert r.returncode == 1 and os.path.isdir(store_dir)
    os.rmdir(store_dir)
    assert cli("--store", store_dir, "delete-store").returncode == 0  # nothing there: nothing to do
    cli("--store", store_dir, "create", "--without-mount", stack, "a")  # a fresh path: auto-init
    assert os.path.isdir(f"{store_dir}/images/a")


def _owner(path):
    st = os.stat(os.path.dirname(path))
    return st.st_uid, st.st_gid


def test_grootfs_messages(cli, store_dir, stack, user_tmp):
    r = cli("--store", store_dir, "create", "--with-clean", "--without-clean", stack, "a", check=False)
    assert (r.returncode, r.stdout) == (1, "with-clean and without-clean cannot be used together\n")
    r = cli("--store", store_dir, "create", str(user_tmp), "a", check=False)
    assert (r.returncode, r.stdout) == (1, "invalid base image: directory provided instead of a tar file\n")
    r = cli("--store", store_dir, "create", "/nonexistent/rootfs.tar", "a", check=False)
    assert (r.returncode, r.stdout) == (1, "stat /nonexistent/rootfs.tar: no such file or directory\n")
    r = cli("--store", store_dir, "create", "oci:///nonexistent/layout", "a", check=False)
    assert r.returncode == 1 and r.stdout.startswith("Image source doesn't exist")
    r = cli("--store", store_dir, "--log-file", "/nonexistent/dir/log", "list", check=False)
    assert (r.returncode, r.stdout) == (1, "failed to configure logger: open /nonexistent/dir/log: "
                                           "no such file or directory\n")
    r = cli("--store", store_dir, "init-store", "--store-size-bytes", "100000000", check=False)
    assert (r.returncode, r.stdout) == (1, f"store {store_dir} can only be initialized by Root user\n")


def test_clean_log_file_takes_the_clean_of_a_create(cli, store_dir, stack, user_tmp):
    clean_log = user_tmp / "clean.log"
    r = cli("--store", store_dir, "--log-level", "debug", "create", "--without-mount", "--with-clean",
            "--clean-log-file", str(clean_log), stack, "a")
    assert "groot-cleaning" not in r.stderr
    assert "grootfs.create.groot-cleaning.ending" in [line["message"] for line in lager_lines(clean_log.read_text())]
    r = cli("--store", store_dir, "--log-level", "debug", "create", "--without-mount", "--with-clean", stack, "b")
    assert "grootfs.create.groot-cleaning.starting" in [line["message"] for line in lager_lines(r.stderr)]
