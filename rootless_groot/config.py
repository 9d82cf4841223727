"""One frozen Config from GrootFS-style YAML plus command-line flags (flags win)."""
from __future__ import annotations

import os
from .errors import UsageError
from .record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def default_store() -> str:
    """``/var/lib/rootless-groot`` for root, ``$XDG_DATA_HOME/rootless-groot`` for everyone else."""
    if os.geteuid() == 0:
        return "/var/lib/rootless-groot"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "rootless-groot")


class Config(Record):
    """Everything a command needs to know from the config file and the flags."""

    _defaults = {
        "store": "", "log_level": None, "log_file": None, "newuidmap_bin": "newuidmap",
        "newgidmap_bin": "newgidmap", "exclude_image_from_quota": False, "skip_layer_validation": False,
        "with_clean": False, "without_mount": False, "disk_limit_size_bytes": 0, "insecure_registries": (),
        "clean_threshold_bytes": 0, "store_size_bytes": 0, "remote_layer_client_certificates_path": None,
        "tardis_bin": "", "metron_endpoint": "", "clean_log_file": "", "unknown_keys": (), "from_config_file": False,
        "registry_timeout_seconds": 30,
    }
    __slots__ = tuple(_defaults)
    store: str
    log_level: str | None
    log_file: str | None
    newuidmap_bin: str
    newgidmap_bin: str
    exclude_image_from_quota: bool
    skip_layer_validation: bool
    with_clean: bool
    without_mount: bool
    disk_limit_size_bytes: int
    insecure_registries: tuple[str, ...]
    clean_threshold_bytes: int
    store_size_bytes: int
    remote_layer_client_certificates_path: str | None  # client certs for layers fetched from urls
    tardis_bin: str
    metron_endpoint: str
    clean_log_file: str
    unknown_keys: tuple[str, ...]  # config file keys ignored (GrootFS ignores them too); logged
    from_config_file: bool  # --config was given (a GrootFS/Garden set-up: no auto-init)
    registry_timeout_seconds: int  # a registry that sends nothing for this long fails the command


# YAML key path -> Config field
_YAML_KEYS: dict[tuple[str, ...], tuple[str, type]] = {
    ("store",): ("store", str),
    ("log_level",): ("log_level", str),
    ("log_file",): ("log_file", str),
    ("newuidmap_bin",): ("newuidmap_bin", str),
    ("newgidmap_bin",): ("newgidmap_bin", str),
    ("create", "exclude_image_from_quota"): ("exclude_image_from_quota", bool),
    ("create", "skip_layer_validation"): ("skip_layer_validation", bool),
    ("create", "with_clean"): ("with_clean", bool),
    ("create", "without_mount"): ("without_mount", bool),
    ("create", "disk_limit_size_bytes"): ("disk_limit_size_bytes", int),
    ("create", "insecure_registries"): ("insecure_registries", list),
    ("clean", "threshold_bytes"): ("clean_threshold_bytes", int),
    ("init", "store_size_bytes"): ("store_size_bytes", int),
    ("create", "remote_layer_client_certificates_path"): ("remote_layer_client_certificates_path", str),
    ("tardis_bin",): ("tardis_bin", str),
    ("metron_endpoint",): ("metron_endpoint", str),
    ("create", "clean_log_file"): ("clean_log_file", str),
    ("create", "registry_timeout_seconds"): ("registry_timeout_seconds", int),
}
# Keys GrootFS knows that have no meaning here; accepted silently so a GrootFS config file works
# unchanged. Any other key is ignored too (GrootFS's parser is not strict), with a log line.
_IGNORED_KEYS = {
    ("init", "with_direct_io"),
}


def load_yaml(path: str) -> dict[str, Any]:
    """Read a GrootFS config file into Config field values."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise UsageError(f"invalid config path: {path}") from None
    import yaml  # only when a config file is given

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise UsageError(f"invalid config file: {path}:{where}{': ' + problem if problem else ''}") from None
    if not isinstance(data, dict):
        raise UsageError(f"invalid config file: {path}")
    values: dict[str, Any] = {}
    unknown: list[str] = []

    def walk(node: dict, prefix: tuple[str, ...]) -> None:
        for key, value in node.items():
            path_key = prefix + (str(key),)
            if path_key in _YAML_KEYS:
                name, kind = _YAML_KEYS[path_key]
                values[name] = _coerce(value, kind, ".".join(path_key), path)
            elif len(path_key) == 1 and path_key[0] in _SECTIONS:
                if isinstance(value, dict):
                    walk(value, path_key)
                elif value is not None:  # `clean:` alone is an empty section
                    raise UsageError(f"invalid config file: {path}: `{path_key[0]}` must be a mapping")
            elif path_key not in _IGNORED_KEYS:
                unknown.append(".".join(path_key))

    walk(data, ())
    if unknown:
        values["unknown_keys"] = tuple(unknown)
    return values


_SECTIONS = ("create", "clean", "init")


def _coerce(value: Any, kind: type, key: str, path: str) -> Any:
    if value is None:
        return None
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"invalid config file: {path}: `{key}` must be a list of strings")
        return tuple(value)
    if kind is bool and not isinstance(value, bool):
        raise UsageError(f"invalid config file: {path}: `{key}` must be true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"invalid config file: {path}: `{key}` must be an integer")
    if kind is str and not isinstance(value, str):
        raise UsageError(f"invalid config file: {path}: `{key}` must be a string")
    return value


def build(config_file: str | None, overrides: dict[str, Any]) -> Config:
    """Defaults < YAML file < flags. ``overrides`` holds only flags the user actually gave."""
    values: dict[str, Any] = {}
    if config_file:
        # an empty string is "not set" (GrootFS writes every key, `newuidmap_bin: ""` included)
        values.update({k: v for k, v in load_yaml(config_file).items() if v is not None and v != ""})
        values["from_config_file"] = True
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "insecure_registries":
            value = tuple(values.get("insecure_registries", ())) + tuple(value)
        values[key] = value
    values["store"] = os.path.abspath(values.get("store") or default_store())
    cfg = Config(**values)
    if cfg.log_level is not None and cfg.log_level.lower() not in ("debug", "info", "warn", "error", "fatal"):
        raise UsageError(f"invalid log level `{cfg.log_level}`: use debug, info, error or fatal")
    if cfg.disk_limit_size_bytes < 0:
        raise UsageError("invalid argument: disk limit cannot be negative")
    if cfg.clean_threshold_bytes < 0:
        raise UsageError("invalid argument: clean threshold cannot be negative")
    return cfg
