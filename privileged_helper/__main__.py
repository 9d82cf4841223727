"""Entry point, run as root by the setuid launcher: ``python3 -I -S -B .../privileged_helper/__main__.py``.

Also works as ``python3 -m privileged_helper`` (for tests). Reads one request on stdin,
writes one answer on stdout; exit 0 on success, 1 on any refusal. Takes no arguments and
reads no environment.
"""
import os
import sys

if __package__ in (None, ""):
    # Run as a script by the launcher: our package's parent is the root-owned install dir
    # (the launcher checked it); with -I -S nothing else on sys.path is user-controlled.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "privileged_helper"

from privileged_helper.main import main  # noqa: E402

sys.exit(main())
