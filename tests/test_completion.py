"""Issue 11: bash completion from the command table, run by a real bash."""
import os
import subprocess

from rootless_groot.cli import COMMANDS, GLOBAL_OPTS
from rootless_groot.completion import bash


def complete(tmp_path, *words, lister=None):
    script = tmp_path / "completion.bash"
    script.write_text(bash(GLOBAL_OPTS, COMMANDS))
    prog = "rootless-groot"
    if lister is not None:  # a stand-in for the CLI: `list` prints image paths
        prog = str(tmp_path / "fake-rg")
        with open(prog, "w") as f:
            f.write(f"#!/bin/sh\necho \"$*\" > {tmp_path}/args\nprintf '{lister}'\n")
        os.chmod(prog, 0o755)
    words_text = " ".join(f"'{w}'" for w in (prog, *words))
    r = subprocess.run(["bash", "--norc", "-c", f"source {script}; COMP_WORDS=({words_text}); "
                        f"COMP_CWORD={len(words)}; _rootless_groot; printf '%s\\n' \"${{COMPREPLY[@]}}\""],
                       capture_output=True, text=True, check=True, cwd=tmp_path)
    return sorted(filter(None, r.stdout.split("\n")))


def test_commands_flags_and_values(tmp_path):
    assert complete(tmp_path, "cr") == ["create"]
    assert "run" in complete(tmp_path, "--store", "/s", "")
    assert complete(tmp_path, "run", "--r") == ["--registry-ca", "--registry-mirror", "--registry-timeout", "--rm", "--runtime"]
    assert "--store" in complete(tmp_path, "list", "--")  # global flags after the command too
    assert complete(tmp_path, "--log-level", "d") == ["debug"]
    assert complete(tmp_path, "create", "--pull", "m") == ["missing"]
    assert complete(tmp_path, "create", "do") == ["docker://"]


def test_image_ids_from_the_store(tmp_path):
    listing = "/s/images/alpha\\n/s/images/beta\\n"
    assert complete(tmp_path, "--store", "/s", "delete", "", lister=listing) == ["alpha", "beta"]
    assert (tmp_path / "args").read_text() == "--store /s list\n"
    assert complete(tmp_path, "stats", "b", lister=listing) == ["beta"]
    assert complete(tmp_path, "delete", "", lister="Store empty\\n") == []
