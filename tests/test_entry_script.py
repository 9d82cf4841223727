"""bin/rootless-groot: started with ``python -IS`` it finds the package next to its ``bin/``
without running ``site``, and runs ``site`` after all when the package is elsewhere."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import rootless_groot

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "rootless-groot"
PACKAGE = Path(rootless_groot.__file__).resolve().parent


def _run(script: Path) -> subprocess.CompletedProcess:
    # -X importtime lists every module imported (allowed under -I); the version is on stdout
    return subprocess.run([sys.executable, "-IS", "-X", "importtime", str(script), "--version"],
                          capture_output=True, text=True, timeout=60)


def _imported(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_package_next_to_bin_is_found_without_site(tmp_path):
    prefix = tmp_path / "prefix"
    (prefix / "bin").mkdir(parents=True)
    site_packages = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site_packages.mkdir(parents=True)
    os.symlink(PACKAGE, site_packages / "rootless_groot")
    shutil.copy(SCRIPT, prefix / "bin" / "rootless-groot")
    r = _run(prefix / "bin" / "rootless-groot")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"rootless-groot {rootless_groot.__version__}\n"
    imported = _imported(r.stderr)
    assert "rootless_groot.cli" in imported
    assert "site" not in imported


def test_package_elsewhere_is_found_through_site(tmp_path):
    (tmp_path / "bin").mkdir()
    shutil.copy(SCRIPT, tmp_path / "bin" / "rootless-groot")
    r = _run(tmp_path / "bin" / "rootless-groot")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"rootless-groot {rootless_groot.__version__}\n"
    assert "site" in _imported(r.stderr)


def test_fast_entry_adds_the_flags_once(tmp_path):
    script = tmp_path / "rootless-groot"
    script.write_text("#!/opt/venv/bin/python3.11\nprint()\n")
    for _ in range(2):
        subprocess.run(["bash", str(SCRIPT.parents[1] / "scripts" / "fast-entry.sh"), str(script)], check=True)
    assert script.read_text() == "#!/opt/venv/bin/python3.11 -IS\nprint()\n"
