"""rootless-groot's privileged quota helper: the project's security boundary.

Standard library only. It runs as root on behalf of any local user (through the setuid
``launcher.c``), reads one JSON request on stdin, does quota work on one image directory of
a registered store, and answers one JSON object. See ``docs/quota.md``.
"""
