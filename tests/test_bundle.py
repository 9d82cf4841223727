"""The import bundle (rootless_groot/bundle.py, read by the package's __init__): modules come
from it when it matches their sources, and from the normal path whenever it does not."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rootless_groot

PACKAGE = Path(rootless_groot.__file__).resolve().parent
FAST_ENTRY = Path(__file__).resolve().parents[1] / "scripts" / "fast-entry.sh"

PROBE = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import rootless_groot.cli, rootless_groot.store.images, rootless_groot.sources
    from rootless_groot.cli import main
    for name in ("rootless_groot.cli", "rootless_groot.store.images", "rootless_groot.sources"):
        module = sys.modules[name]
        loader = module.__spec__.loader
        print(name, getattr(loader, "__name__", type(loader).__name__), module.__file__ == module.__spec__.origin)
    print("marker", getattr(rootless_groot.store.images, "BUNDLE_TEST_MARKER", None))
    main(["--version"])
""")


@pytest.fixture
def site(tmp_path) -> Path:
    """A copy of the package (no caches) in a directory of its own."""
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "rootless_groot", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _build(site: Path) -> Path:
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import rootless_groot.bundle as b; print(b.build())", str(site)],
                         capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    return Path(out)


def _probe(site: Path) -> dict[str, str]:
    r = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE, str(site)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(f"rootless-groot {rootless_groot.__version__}\n")
    loaders = {}
    for line in r.stdout.splitlines()[:-1]:
        name, loader, *rest = line.split(" ")
        loaders[name] = loader
        assert rest in ([], ["True"])  # __file__ is the source, whoever loaded the module
    return loaders


def test_modules_come_from_the_bundle(site):
    path = _build(site)
    assert path == site / "rootless_groot" / "__pycache__" / f"bundle.{sys.implementation.cache_tag}"
    loaders = _probe(site)
    assert loaders["rootless_groot.cli"] == "BundleFinder"
    assert loaders["rootless_groot.store.images"] == "BundleFinder"
    assert loaders["rootless_groot.sources"] == "BundleFinder"  # a subpackage
    assert loaders["marker"] == "None"


def test_without_a_bundle_the_normal_path(site):
    loaders = _probe(site)
    assert loaders["rootless_groot.cli"] == "SourceFileLoader"


def test_a_changed_source_is_imported_from_itself(site):
    _build(site)
    images = site / "rootless_groot" / "store" / "images.py"
    images.write_text(images.read_text() + "\nBUNDLE_TEST_MARKER = 'edited'\n")
    loaders = _probe(site)
    assert loaders["rootless_groot.store.images"] == "SourceFileLoader"
    assert loaders["marker"] == "edited"
    assert loaders["rootless_groot.cli"] == "BundleFinder"  # the others still come from the bundle


def test_same_size_edit_with_a_new_mtime_is_seen(site):
    _build(site)
    images = site / "rootless_groot" / "store" / "images.py"
    st = images.stat()
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert _probe(site)["rootless_groot.store.images"] == "SourceFileLoader"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "index-past-end"])
def test_a_damaged_bundle_is_ignored(site, damage):
    path = _build(site)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])  # the index is whole, the code it points to is not
    elif damage == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00" + os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:4] + data[4:10])
    assert _probe(site)["rootless_groot.cli"] == "SourceFileLoader"


def test_a_removed_source_is_not_served_from_the_bundle(site):
    _build(site)
    (site / "rootless_groot" / "jsonutil.py").unlink()
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import rootless_groot.jsonutil", str(site)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_tracebacks_name_the_source(site):
    _build(site)
    r = subprocess.run([sys.executable, "-I", "-S", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); from rootless_groot.store.imageinfo import "
                        "check_id; check_id('../x')", str(site)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f'File "{site}/rootless_groot/store/imageinfo.py", line' in r.stderr
    assert "def check_id" in r.stderr or "raise" in r.stderr  # the source line is shown


def test_fast_entry_writes_the_bundle_and_the_site_packages_with_the_scripts_python(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    shutil.copytree(PACKAGE, site_packages / "rootless_groot", ignore=shutil.ignore_patterns("__pycache__"))
    script = venv / "bin" / "rootless-groot"
    generic = (Path(__file__).resolve().parents[1] / "bin" / "rootless-groot").read_text()
    script.write_text(generic.replace("#!python -IS\n", f"#!{venv}/bin/python\n", 1))  # as pip writes it
    script.chmod(0o755)
    for _ in range(2):  # idempotent
        r = subprocess.run(["bash", str(FAST_ENTRY), str(script)], timeout=120, cwd=tmp_path, capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (site_packages / "rootless_groot" / "__pycache__" / f"bundle.{sys.implementation.cache_tag}").is_file()
    text = script.read_text()
    assert text.startswith(f"#!{venv}/bin/python -IS\n")
    assert f"\nSITE_PACKAGES = {str(site_packages)!r}\n" in text
    assert text.count("SITE_PACKAGES = ") == 1
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == f"rootless-groot {rootless_groot.__version__}\n", r.stderr


def test_a_child_that_closed_every_fd_still_imports_the_right_code(site):
    """The keeper's start closes all fds and then imports: our fd's number may be another file's."""
    _build(site)
    code = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import rootless_groot
        os.closerange(3, 1 << 20)
        other = os.open(sys.argv[2], os.O_RDONLY)  # takes the bundle's old number
        import rootless_groot.mappings as m
        print(type(m.__spec__.loader).__name__ if not isinstance(m.__spec__.loader, type) else m.__spec__.loader.__name__)
        print(m.parse_mappings(["0:1000:1"])[0].host_id, os.fstat(other).st_size)
    """)
    junk = site / "junk"
    junk.write_bytes(b"\0" * 1000)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), str(junk)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["BundleFinder", "1000", "1000"]


def test_a_bundle_replaced_after_start_is_not_read_at_the_old_offsets(site):
    path = _build(site)
    code = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import rootless_groot
        os.closerange(3, 1 << 20)
        os.replace(sys.argv[2], sys.argv[3])  # a reinstall wrote a new bundle
        import rootless_groot.mappings as m
        print(m.parse_mappings(["0:1000:1"])[0].host_id)
    """)
    (site / "new").write_bytes(path.read_bytes()[:4] + b"\xff" * 100)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), str(site / "new"), str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000"]


def test_future_annotations_apply_without_importing_future(site):
    _build(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import rootless_groot.store.images as m; "
            "print(m.read_image.__annotations__['ctx'], '__future__' in sys.modules, "
            "type(m.__spec__.loader).__name__ if not isinstance(m.__spec__.loader, type) else m.__spec__.loader.__name__)")
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["StoreContext", "False", "BundleFinder"]  # the annotation stays a string


def test_python_dash_m_runs_from_the_bundle(site):
    """runpy asks the loader of ``rootless_groot.__main__`` for its code."""
    _build(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-m", "rootless_groot", "--version"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"rootless-groot {rootless_groot.__version__}\n"
    r = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = ['x', '--version']; "
                        "import rootless_groot.cli as c; print(c.__spec__.loader.__name__); "
                        "runpy.run_module('rootless_groot', run_name='__main__')"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=site)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "BundleFinder"
