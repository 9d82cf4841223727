"""The setuid launcher (H1-H4, H16, H17, H22): built into a root-owned temp dir and run as nobody."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOBODY = [shutil.which("setpriv") or "/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=3", "-fPIE", "-pie",
         "-Wl,-z,relro,-z,now"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("gcc") or not shutil.which("setpriv"),
                                reason="needs root, gcc and setpriv (installs a setuid binary in a temp dir)")


@pytest.fixture(scope="module")
def install():
    base = Path(f"/var/lib/rg-launcher-test-{uuid.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    pkg = base / "privileged_helper"
    pkg.mkdir(mode=0o755)
    for src in (REPO / "privileged_helper").glob("*.py"):
        shutil.copyfile(src, pkg / src.name)
        os.chmod(pkg / src.name, 0o644)
    launcher = base / "rootless-groot-quota"
    subprocess.run(["gcc", *FLAGS, f'-DHELPER_DIR="{base}"', "-o", str(launcher),
                    str(REPO / "privileged_helper" / "launcher.c")], check=True)
    os.chmod(launcher, 0o4755)
    # an evil shared object and python module that leave a marker if they ever run
    evil = Path(f"/tmp/rg-evil-{uuid.uuid4().hex[:8]}")
    evil.mkdir(mode=0o777)
    os.chmod(evil, 0o777)
    marker = evil / "marker"
    (evil / "evil.c").write_text('#include <stdio.h>\n__attribute__((constructor)) static void e(void)'
                                 f'{{FILE*f=fopen("{marker}","w");if(f)fclose(f);}}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(evil / "evil.so"), str(evil / "evil.c")], check=True)
    for mod in ("json", "os", "fcntl", "ctypes", "privileged_helper", "sitecustomize", "usercustomize"):
        (evil / f"{mod}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (evil / "exec0.c").write_text('#include <unistd.h>\nint main(int c, char **v){char *a[]={NULL};'
                                  'char *e[]={"GCONV_PATH=.","LD_PRELOAD=' + str(evil / "evil.so") +
                                  '","PYTHONPATH=' + str(evil) + '",NULL};execve(v[1],a,e);return 99;}\n')
    subprocess.run(["gcc", "-o", str(evil / "exec0"), str(evil / "exec0.c")], check=True)
    os.chmod(evil / "exec0", 0o755)
    yield {"launcher": str(launcher), "base": base, "pkg": pkg, "evil": evil, "marker": marker}
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(evil, ignore_errors=True)


def run(cmd, input=b"", **kw):
    r = subprocess.run([*NOBODY, *cmd], input=input, capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=30,
                       **kw)
    try:
        answer = json.loads(r.stdout)
    except ValueError:
        answer = None
    return r.returncode, answer


def test_runs_python_helper_as_root(install):
    rc, answer = run([install["launcher"]], b"{}")
    assert rc == 1 and answer["error"] == "invalid"  # parsed by the Python helper: it ran
    rc, answer = run([install["launcher"]], json.dumps({"v": 1, "op": "get", "store": "snone", "image": "x"}).encode())
    assert rc == 1 and answer == {"ok": False, "error": "denied"}


def test_argc_zero_and_hostile_env(install):
    rc, answer = run([str(install["evil"] / "exec0"), install["launcher"]])
    # Linux >= 5.18 turns an empty argv into {""} (argc 1); older kernels give argc 0: refused either way
    assert rc == 1 and answer["error"] == "invalid"
    assert not install["marker"].exists()


def test_hostile_environment_is_ignored(install):
    evil = install["evil"]
    env = {"LD_PRELOAD": str(evil / "evil.so"), "LD_LIBRARY_PATH": str(evil), "GCONV_PATH": str(evil),
           "PYTHONPATH": str(evil), "PYTHONHOME": str(evil), "PYTHONSTARTUP": str(evil / "os.py"),
           "PYTHONINSPECT": "1", "PYTHONUSERBASE": str(evil), "LOCPATH": str(evil), "NLSPATH": str(evil),
           "TZ": "/etc/shadow", "MALLOC_CHECK_": "3", "PATH": str(evil), "PYTHONWARNINGS": "error"}
    # env(1) puts the hostile variables on the launcher only (setpriv itself runs as root)
    rc, answer = run(["env", "-i", *[f"{k}={v}" for k, v in env.items()], install["launcher"]], b"{}", cwd=str(evil))
    assert rc == 1 and answer["error"] == "invalid"
    assert not install["marker"].exists()


def test_extra_arguments_refused(install):
    rc, answer = run([install["launcher"], "--set", "/"], b"{}")
    assert rc == 1 and answer == {"ok": False, "error": "invalid"}


def test_clean_process_environ_and_fds(install):
    """While the helper waits for its request: empty environment, only fds 0-2 inherited."""
    extra = [os.open("/etc/hostname", os.O_RDONLY) for _ in range(50)]
    try:
        p = subprocess.Popen([*NOBODY, install["launcher"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={"LD_PRELOAD": "x", "SECRET": "1"}, pass_fds=extra)
    finally:
        for fd in extra:
            os.close(fd)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            exe = os.readlink(f"/proc/{p.pid}/exe")
            if "python" in exe:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        assert "python" in os.readlink(f"/proc/{p.pid}/exe")
        with open(f"/proc/{p.pid}/environ", "rb") as f:
            assert f.read() == b""
        fds = {int(n) for n in os.listdir(f"/proc/{p.pid}/fd")}
        assert fds <= {0, 1, 2}, {fd: os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in fds}
        with open(f"/proc/{p.pid}/status") as f:
            status = f.read()
        assert "\nUid:\t65534\t0\t" in status  # real uid kept (who asks), effective root
    finally:
        out, _ = p.communicate(b"{}", timeout=10)
    assert json.loads(out)["error"] == "invalid"


def test_closed_stdio(install):
    r = subprocess.run([*NOBODY, "sh", "-c", f'exec "{install["launcher"]}" <&- >&- 2>&-'], timeout=30)
    assert r.returncode == 1  # it ran (empty request), did not crash on closed fds


@pytest.mark.parametrize("tamper", ["file_mode", "file_owner", "dir_mode", "extra_file_owner", "symlink"])
def test_refuses_untrusted_helper_files(install, tamper):
    pkg = install["pkg"]
    target = pkg / "ops.py"
    undo = None
    if tamper == "file_mode":
        os.chmod(target, 0o666)
        undo = lambda: os.chmod(target, 0o644)  # noqa: E731
    elif tamper == "file_owner":
        os.chown(target, 65534, 65534)
        undo = lambda: os.chown(target, 0, 0)  # noqa: E731
    elif tamper == "dir_mode":
        os.chmod(pkg, 0o775)
        undo = lambda: os.chmod(pkg, 0o755)  # noqa: E731
    elif tamper == "extra_file_owner":
        (pkg / "evil.py").write_text("")
        os.chown(pkg / "evil.py", 65534, 65534)
        undo = lambda: os.unlink(pkg / "evil.py")  # noqa: E731
    else:
        os.symlink("/tmp", pkg / "link")
        undo = lambda: os.unlink(pkg / "link")  # noqa: E731
    try:
        rc, answer = run([install["launcher"]], b"{}")
        assert rc == 1 and answer == {"ok": False, "error": "failed"}
    finally:
        undo()
    rc, answer = run([install["launcher"]], b"{}")
    assert answer["error"] == "invalid"


def test_setuid_ignored_in_user_namespace_fails_closed(install):
    rc, answer = run(["unshare", "-Ur", install["launcher"]], b"{}")
    assert rc == 1 and answer["error"] in ("unsupported", "failed")


def test_static_properties(install):
    st = os.stat(install["launcher"])
    assert st.st_uid == 0 and st.st_mode & 0o4000
    syms = subprocess.run(["nm", "-D", install["launcher"]], capture_output=True, text=True).stdout
    for bad in ("system", "popen", "getpw", "setlocale", "execvp", "execl", "getenv", "dlopen"):
        assert not any(line.split()[-1].split("@")[0].startswith(bad) for line in syms.splitlines()), bad
    assert "__stack_chk_fail" in syms
