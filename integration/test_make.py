"""Issue 11: make targets run as root leave nothing root-owned in a checkout someone else owns;
the AppArmor profile target; a license field setuptools keeps accepting."""
from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_venv_as_root_leaves_no_root_owned_files(user_tmp, test_user):
    checkout = user_tmp / "checkout"
    checkout.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], cwd=ROOT, input=files, check=True,
                   stdout=open(user_tmp / "src.tar", "wb"))
    subprocess.run(["tar", "-xf", str(user_tmp / "src.tar")], cwd=checkout, check=True)
    subprocess.run(["chown", "-R", f"{test_user.uid}:{test_user.gid}", str(checkout)], check=True)
    # the dependencies are not what this is about: the editable install alone
    env = {**os.environ, "PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run(["make", "venv", "PYTHON=/usr/bin/python3"], cwd=checkout, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (checkout / ".venv" / "bin" / "python").exists()
    root_owned = [str(p) for p in checkout.rglob("*") if p.lstat().st_uid == 0]
    assert root_owned == [], root_owned[:10]


def test_apparmor_profile_names_the_installed_command(tmp_path):
    fake = tmp_path / "venv" / "bin" / "rootless-groot"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    out = tmp_path / "profile"
    subprocess.run(["make", "-s", "-C", str(ROOT), "apparmor-profile", f"RG_BIN={fake}", f"APPARMOR_OUT={out}"],
                   capture_output=True, text=True, check=True)
    profile = out.read_text()
    assert f"profile rootless-groot {fake} flags=(unconfined) {{" in profile
    assert "\n  userns,\n" in profile


def test_license_is_an_spdx_string():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]
