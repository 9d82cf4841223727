"""Write ``rootless_groot/__pycache__/bundle.<tag>``: every module's compiled code behind one
index, which the package's ``__init__`` imports from (see there for why and what is checked).

Run by ``scripts/fast-entry.sh`` after an install, with the install's own python:
``python -m rootless_groot.bundle [SCRIPT ...]`` (each installed script also gets the install's
``site-packages`` written in: see ``bin/rootless-groot``). Layout: a 4-byte little-endian length, the marshalled
index ``{module: (source path, is_package, source mtime_ns, source size, offset, length)}``,
then the marshalled code objects at those offsets.
"""
from __future__ import annotations

import __future__
import ast
import marshal
import os
import sys

import rootless_groot

PACKAGE_DIR = os.path.dirname(os.path.abspath(rootless_groot.__file__))


def bundle_path(package_dir: str = PACKAGE_DIR) -> str:
    return os.path.join(package_dir, "__pycache__", f"bundle.{sys.implementation.cache_tag}")


def _modules(package_dir: str) -> list[tuple[str, str, bool]]:
    """(module name, source path, is_package) of every module under the package but itself."""
    top = os.path.basename(package_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(dirpath, filename)
            parts = [top, *os.path.relpath(path, package_dir)[:-3].split(os.sep)]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            if len(parts) > 1:  # the package's __init__ itself is imported before the bundle is read
                found.append((".".join(parts), path, is_package))
    return found


def _compile(source: bytes, path: str):
    """The module's code, with ``from __future__ import annotations`` applied as a compiler
    flag instead of executed: the statement also imports the ``__future__`` module at run time
    (~0.1 ms of every command, the module being found and read from the standard library)."""
    tree = ast.parse(source, path)
    flags = 0
    body = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                flags |= getattr(__future__, alias.name).compiler_flag
            continue
        body.append(node)
    tree.body = body
    return compile(tree, path, "exec", flags=flags, dont_inherit=True)


def build(package_dir: str = PACKAGE_DIR) -> str:
    """Write the bundle for the sources in ``package_dir`` atomically; return its path."""
    entries = []
    for name, path, is_package in _modules(package_dir):
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            code = _compile(f.read(), path)
        entries.append((name, path, is_package, st.st_mtime_ns, st.st_size, marshal.dumps(code)))

    def index_at(base: int) -> dict:
        index, offset = {}, base
        for name, path, is_package, mtime_ns, size, blob in entries:
            index[name] = (path, is_package, mtime_ns, size, offset, len(blob))
            offset += len(blob)
        return index

    base = 4  # the offsets in the index depend on the index's own size: settle both
    for _ in range(8):
        header = marshal.dumps(index_at(base))
        if 4 + len(header) == base:
            break
        base = 4 + len(header)
    else:
        raise RuntimeError("bundle index size does not settle")
    target = bundle_path(package_dir)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    _replace(target, len(header).to_bytes(4, "little") + header + b"".join(e[5] for e in entries), 0o644)
    return target


def write_site_packages(script: str, package_dir: str = PACKAGE_DIR) -> bool:
    """Write the directory this package is installed in into an installed
    ``bin/rootless-groot`` (its ``SITE_PACKAGES = ...`` line); False if the script has none."""
    with open(script) as f:
        lines = f.read().split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("SITE_PACKAGES = ")), None)
    if at is None:
        return False
    lines[at] = f"SITE_PACKAGES = {os.path.dirname(package_dir)!r}"
    _replace(script, "\n".join(lines).encode(), os.stat(script).st_mode & 0o7777)
    return True


def _replace(path: str, data: bytes, mode: int) -> None:
    """Write ``path`` whole or not at all: a running command may be reading it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


if __name__ == "__main__":  # python -m rootless_groot.bundle [INSTALLED_SCRIPT ...]
    print(build())
    for path in sys.argv[1:]:
        if not write_site_packages(path):
            print(f"{path}: no SITE_PACKAGES line to write", file=sys.stderr)
