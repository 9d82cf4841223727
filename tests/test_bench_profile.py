"""bench/profile.py: the runner times the phases it names inside a real command run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import rootless_groot
from rootless_groot.bench.profile import PHASES, Profiler

PACKAGE = Path(rootless_groot.__file__).resolve().parent


def _prefix(tmp_path: Path) -> str:
    """A prefix laid out like a venv: bin/python, bin/rootless-groot, the package in site-packages."""
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    os.symlink(sys.executable, prefix / "bin" / "python")
    site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    os.symlink(PACKAGE, site / "rootless_groot")
    return str(prefix / "bin" / "rootless-groot")


def test_list_is_profiled_phase_by_phase(tmp_path):
    cli = _prefix(tmp_path)
    store = tmp_path / "store"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    subprocess.run([sys.executable, "-m", "rootless_groot", "--store", str(store), "init-store"], check=True,
                   env=env, cwd=tmp_path, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    p = Profiler(cli, store, work, env)
    for _ in range(3):
        p.run("list", "list", ["list"])
    row = p.samples["list"]
    assert len(row["wall"]) == 3  # the first run only found the modules
    for key in ("wall", "start", "imports", "other", "_open", "image_ids"):
        assert all(v > 0 for v in row[key]), key
    assert all(w > s + i for w, s, i in zip(row["wall"], row["start"], row["imports"]))
    modules = (work / "profile-modules-list.txt").read_text().split()
    assert "rootless_groot.store.imageinfo" in modules and "rootless_groot.store.images" not in modules
    table = p.table([("list", "list")])
    assert "images/ listed" in table and "interpreter start + exit" in table


def test_every_phase_names_a_function_that_exists():
    import importlib

    for kind, phases in PHASES.items():
        for module, function, _ in phases:
            assert callable(getattr(importlib.import_module(module), function)), (kind, module, function)
