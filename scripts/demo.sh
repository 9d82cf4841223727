#!/usr/bin/env bash
# The README's first command (`make run`): the main job of rootless-groot, end to end,
# as an unprivileged user: build a small image locally, init a store, create a rootfs,
# run a command in it with rootless runc, print stats, delete it.
# Started as root, it drops to the test user (created by `make run`) to show the rootless path.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${RG_TEST_PYTHON:-${RG_VENV_PYTHON:-/usr/bin/python3}}"
user="${RG_DEMO_USER:-rgtest}"

if [ "$(id -u)" -eq 0 ]; then
    work="$(mktemp -d /var/tmp/rootless-groot-demo.XXXXXX)"
    chmod 0755 "$work"
    # the demo code must be readable by the user whatever the checkout's path is
    cp "$here/scripts/demo.py" "$here/integration/oci_builder.py" "$here/integration/runc.py" "$work/"
    chown -R "$user:" "$work"
    echo "# running as root: dropping to the unprivileged user '$user' ($(id "$user"))"
    trap 'rm -rf "$work"' EXIT
    setpriv --reuid="$user" --regid="$user" --init-groups --reset-env \
        env HOME="$work" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
        "$py" "$work/demo.py" "$work"
    exit $?
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/rootless-groot-demo.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$here/scripts/demo.py" "$here/integration/oci_builder.py" "$here/integration/runc.py" "$work/"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" "$work/demo.py" "$work"
