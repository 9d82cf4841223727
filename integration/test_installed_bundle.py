"""The installed test venv (``make test-venv`` runs scripts/fast-entry.sh) imports the package
from its import bundle, as the test user, through both entry points: ``python -m`` (what these
tests run) and the ``bin/rootless-groot`` script under ``-IS`` (what Garden and the bench run)."""
from __future__ import annotations

import os

from conftest import TEST_PYTHON

LOADER = ("import sys, rootless_groot.cli, rootless_groot.store.images; "
          "print(*(getattr(sys.modules[m].__spec__.loader, '__name__', '?') "
          "for m in ('rootless_groot.cli', 'rootless_groot.store.images')))")


def test_test_venv_imports_from_the_bundle(as_user):
    r = as_user([TEST_PYTHON, "-I", "-c", LOADER])
    assert r.stdout.split() == ["BundleFinder", "BundleFinder"]


def test_installed_script_runs_from_the_bundle(as_user):
    script = os.path.join(os.path.dirname(TEST_PYTHON), "rootless-groot")
    with open(script) as f:
        assert f.readline().rstrip().endswith("python -IS")
        assert "\nSITE_PACKAGES = '/" in f.read()  # written in by fast-entry.sh
    r = as_user([TEST_PYTHON, "-IS", "-X", "importtime", script, "--version"])
    assert r.stdout.startswith("rootless-groot ")
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "rootless_groot.cli" in imported and "site" not in imported
    # what the script does under -IS (the package's site-packages next to bin/), then the loader
    r = as_user([TEST_PYTHON, "-IS", "-c", "import sys; sys.path.append(sys.executable.rsplit('/', 2)[0] + "
                 "f'/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages'); " + LOADER])
    assert r.stdout.split() == ["BundleFinder", "BundleFinder"]
