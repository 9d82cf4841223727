"""The helper process: hygiene, one request, one answer."""
from __future__ import annotations

import os
import signal
import sys

from .protocol import MAX_REQUEST, HelperError, encode_answer, parse_request


def initial_namespaces() -> bool:
    """In the initial user and mount namespaces (a child user namespace never has the full map).

    pid 1's namespaces are compared when they can be read; a setuid process may not read
    them when pid 1 holds capabilities outside our bounding set (some VM/container inits),
    and then the identity uid_map decides (the kernel refuses quota work elsewhere anyway).
    """
    try:
        with open("/proc/self/uid_map") as f:
            if f.read().split() != ["0", "0", "4294967295"]:
                return False
    except OSError:
        return False
    for kind in ("user", "mnt"):
        try:
            if os.stat(f"/proc/self/ns/{kind}").st_ino != os.stat(f"/proc/1/ns/{kind}").st_ino:
                return False
        except PermissionError:
            continue
        except OSError:
            return False
    return True


def read_request(fd: int = 0) -> bytes:
    data = b""
    while len(data) <= MAX_REQUEST:
        chunk = os.read(fd, MAX_REQUEST + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data


def run(argv: list[str], data_source=read_request) -> tuple[int, dict]:
    try:
        if len(argv) != 1:
            raise HelperError("invalid", "the helper takes no arguments")
        if os.geteuid() != 0:
            raise HelperError("unsupported", "the helper is not running as root (is the launcher setuid root?)")
        if not initial_namespaces():
            raise HelperError("unsupported", "the helper must run in the initial user and mount namespaces")
        req = parse_request(data_source())
        from .ops import handle

        return 0, handle(req, os.getuid(), os.getgid())
    except HelperError as e:
        return 1, e.answer()
    except OSError:
        return 1, HelperError("failed").answer()


def main() -> int:
    os.umask(0o077)
    os.chdir("/")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    rc, answer = run(sys.argv)
    try:
        os.write(1, encode_answer(answer))
    except OSError:
        pass
    return rc
