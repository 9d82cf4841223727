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
    ("bogus: 1\n", "unknown key"),
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
