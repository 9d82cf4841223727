"""Issue 11: what a person sees in a terminal, for real.

tmux gives the screen (``capture-pane``) and the raw bytes (``pipe-pane``) of a cold
``create``: one line per layer and a total, redrawn in place, the cursor back at the end;
and an error shown on the screen while stdout goes to a file. A pty drives ``run -t``: a
prompt, a command typed into the container's shell, and its exit status back.
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import subprocess
import termios
import time

import oci_builder as ob
import pytest


@pytest.fixture
def layout(user_tmp):
    data = ob.Layer([ob.File("data/blob", os.urandom(6 << 20))], compression="none")
    return ob.write_layout(user_tmp / "layout", [ob.busybox_image([data])], tag="v1")


class Tmux:
    def __init__(self, as_user, workdir, env):
        assert shutil.which("tmux"), "tmux is missing: scripts/install-deps.sh installs it"
        self.as_user = as_user
        self.workdir = workdir
        self.runs = 0
        self.sock = str(workdir / "tmux-0.sock")
        self.env = " ".join(f"{k}={v}" for k, v in env.items())

    def __call__(self, *args, **kw):
        return self.as_user(["tmux", "-S", self.sock, "-f", "/dev/null", *args], **kw)

    def run(self, command: str, raw_log) -> str:
        """Run ``command`` in a fresh 150x40 window (a new server); the screen once it has finished."""
        self.kill()
        self.runs += 1
        self.sock = str(self.workdir / f"tmux-{self.runs}.sock")
        self("new-session", "-d", "-x", "150", "-y", "40",
             f"env {self.env} sh -c '{command}'; echo EXIT=$?; tmux -S {self.sock} wait-for -S done; "
             f"tmux -S {self.sock} wait-for forever")
        self("pipe-pane", "-o", f"cat > {raw_log}")
        self("wait-for", "done", timeout=180)
        return self("capture-pane", "-p", "-J").stdout

    def kill(self):
        if os.path.exists(self.sock):
            self("kill-server", check=False)


@pytest.fixture
def tmux(as_user, user_tmp, user_home, cli):
    env = {"HOME": user_home, "XDG_DATA_HOME": user_home / "data", "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    t = Tmux(as_user, user_tmp, env)
    yield t
    t.kill()


def test_progress_is_redrawn_in_place_and_errors_reach_the_screen(tmux, cli, store_dir, layout, user_tmp):
    raw_log = user_tmp / "raw.log"
    rg = f"{cli.python} -m rootless_groot --store {store_dir}"
    screen = tmux.run(f"{rg} create --without-mount {layout.uri('v1')} c1 > {user_tmp}/spec.json", raw_log)
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    # on the screen: each layer once, done, then the total; nothing else scrolled by
    assert len(lines) == 4, screen
    assert all(line.split()[1] == "Done" and len(line.split()[0]) == 12 for line in lines[:2]), screen
    assert lines[2].split()[:3] == ["total", "2/2", "layers"], screen
    assert lines[3] == "EXIT=0", screen
    raw = raw_log.read_bytes()
    assert raw.count(b"total") >= 2 and b"\x1b[1A" in raw  # drawn more than once, by moving the cursor up
    assert raw.rstrip().endswith(b"EXIT=0") and b"\x1b[?25h" in raw  # the cursor is shown again
    assert (user_tmp / "spec.json").read_text().startswith('{"ociVersion"')

    # an error: on the screen although stdout goes to a file, and in the file (Garden's contract)
    screen = tmux.run(f"{rg} create debian:bookworm c2 > {user_tmp}/out.txt", raw_log)
    assert "rootless-groot: error: stat " in screen and "use docker:///debian:bookworm" in screen, screen
    assert "EXIT=1" in screen
    assert (user_tmp / "out.txt").read_text().endswith("for a registry image, use docker:///debian:bookworm\n")

    # warm, or --quiet: nothing but the result
    screen = tmux.run(f"{rg} create --quiet {layout.uri('v1')} c3", raw_log)
    assert [line for line in screen.splitlines() if line.strip()][1:] == ["EXIT=0"], screen


def _read_until(fd: int, wanted: bytes, deadline: float) -> bytes:
    out = b""
    while wanted not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r}; got {out!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError as e:
                if e.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            out += chunk
    return out


def test_run_t_gives_a_shell_and_its_exit_status(cli, store_dir, layout, test_user, user_home):
    master, slave = os.openpty()
    argv = [*test_user.prefix(), "env", f"HOME={user_home}", "TERM=xterm", cli.python, "-m", "rootless_groot",
            "--store", store_dir, "run", "--rm", "-t", layout.uri("v1"), "--", "sh"]

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_tty, cwd="/")
    os.close(slave)
    deadline = time.monotonic() + 120
    try:
        assert b"/ # " in _read_until(master, b"/ # ", deadline)
        os.write(master, b"echo answer-$((6*7)); tty\r")
        out = _read_until(master, b"/dev/pts/0", deadline)
        assert b"answer-42" in out
        os.write(master, b"exit 3\r")
        _read_until(master, b"\x00never", deadline)  # to EOF
        assert proc.wait(timeout=60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert cli("--store", store_dir, "list").stdout == "Store empty\n"
