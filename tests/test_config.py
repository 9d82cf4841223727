import pytest

from rootless_groot import config
from rootless_groot.errors import UsageError


def write(tmp_path, text):
    p = tmp_path / "c.yml"
    p.write_text(text)
    return str(p)


def test_yaml_keys_and_flag_override(tmp_path):
    path = write(tmp_path, """
store: /srv/store
log_level: debug
create:
  without_mount: true
  disk_limit_size_bytes: 1000
  insecure_registries: [a:5000]
clean:
  threshold_bytes: 77
init:
  store_size_bytes: 999
tardis_bin: /usr/bin/tardis
""")
    cfg = config.build(path, {"store": "/other", "insecure_registries": ["b:5000"], "without_mount": None})
    assert cfg.store == "/other"
    assert cfg.log_level == "debug"
    assert cfg.without_mount is True
    assert cfg.disk_limit_size_bytes == 1000
    assert cfg.insecure_registries == ("a:5000", "b:5000")
    assert cfg.clean_threshold_bytes == 77
    assert cfg.store_size_bytes == 999


def test_flags_false_override_file(tmp_path):
    path = write(tmp_path, "create:\n  without_mount: true\n")
    assert config.build(path, {"without_mount": False}).without_mount is False


@pytest.mark.parametrize("text, message", [
    ("create:\n  disk_limit_size_bytes: -1\n", "disk limit cannot be negative"),
    ("clean:\n  threshold_bytes: -5\n", "clean threshold cannot be negative"),
    ("create:\n  without_mount: yes please\n", "must be true or false"),
    ("[1, 2]\n", "invalid config file"),
    ("store: [unclosed\n", "invalid config file"),
])
def test_bad_config(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        config.build(write(tmp_path, text), {})


def test_missing_config_path():
    with pytest.raises(UsageError, match="invalid config path"):
        config.build("/nonexistent/config.yml", {})


def test_default_store_for_users(monkeypatch):
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", "/home/u/.data")
    assert config.build(None, {}).store == "/home/u/.data/rootless-groot"
    monkeypatch.setattr(config.os, "geteuid", lambda: 0)
    assert config.build(None, {}).store == "/var/lib/rootless-groot"


# What garden-runc-release and GrootFS's own test suite write: keys we have no use for, old
# release keys (btrfs driver days) and an empty section. GrootFS ignores unknown keys; so do we.
RELEASE_CONFIG = """
store: /var/vcap/data/grootfs/store/unprivileged
tardis_bin: /var/vcap/packages/grootfs/bin/tardis
newuidmap_bin: /var/vcap/packages/garden-idmapper/bin/newuidmap
metron_endpoint: 127.0.0.1:3457
log_level: info
driver: overlay-xfs
drax_bin: /var/vcap/packages/grootfs/bin/drax
btrfs_progs_path: /var/vcap/packages/btrfs-progs/bin
create:
  json: true
  with_clean: false
  skip_layer_validation: true
  clean_log_file: /var/vcap/sys/log/garden/clean.log
  remote_layer_client_certificates_path: /var/vcap/jobs/garden/certs
init:
  owneruser: vcap
  ownergroup: vcap
  store_size_bytes: 1000
  with_direct_io: false
clean:
"""


def test_release_config_with_extra_keys_is_accepted(tmp_path):
    cfg = config.build(write(tmp_path, RELEASE_CONFIG), {})
    assert cfg.store == "/var/vcap/data/grootfs/store/unprivileged"
    assert cfg.skip_layer_validation is True and cfg.with_clean is False
    assert cfg.metron_endpoint == "127.0.0.1:3457"
    assert cfg.tardis_bin == "/var/vcap/packages/grootfs/bin/tardis"
    assert cfg.clean_log_file == "/var/vcap/sys/log/garden/clean.log"
    assert cfg.store_size_bytes == 1000
    assert cfg.from_config_file is True
    # ignored, but named so the log can say so
    assert cfg.unknown_keys == ("driver", "drax_bin", "btrfs_progs_path", "create.json", "init.owneruser",
                                "init.ownergroup")


def test_known_keys_still_type_checked_and_sections_must_be_mappings(tmp_path):
    with pytest.raises(UsageError, match="`create` must be a mapping"):
        config.build(write(tmp_path, "create: 5\n"), {})
    assert config.build(None, {}).from_config_file is False


def test_empty_strings_are_unset(tmp_path):
    """GrootFS's own tooling writes every key, unset ones as "" (yaml.Marshal of its struct)."""
    cfg = config.build(write(tmp_path, 'store: ""\nnewuidmap_bin: ""\nnewgidmap_bin: ""\nlog_file: ""\n'
                                       'create:\n  clean_log_file: ""\n'), {})
    assert (cfg.newuidmap_bin, cfg.newgidmap_bin, cfg.log_file, cfg.clean_log_file) == ("newuidmap", "newgidmap", None, "")
    assert cfg.store == config.default_store()
