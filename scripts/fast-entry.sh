#!/bin/bash
# Speed up an installed rootless-groot script (~2.5 ms less per command). Idempotent.
# 1. Start it with `python -IS` (isolated, no site): pip writes `#!/path/to/python` and drops any
#    interpreter flags of the source's `#!python -IS` line; the script still works without them
#    (site runs), just slower.
# 2. With that python, write the package's import bundle (rootless_groot/bundle.py; without it,
#    modules are imported the normal way) and the package's site-packages into the script.
set -euo pipefail
for script in "$@"; do
    sed -i '1s|^\(#!/[^ ]*python[0-9.]*\)$|\1 -IS|' "$script"
    python=$(sed -n '1s|^#!\([^ ]*\).*|\1|p' "$script")
    "$python" -I -m rootless_groot.bundle "$script" >/dev/null ||
        echo "fast-entry.sh: no import bundle written for $script (imports take the normal path)" >&2
done
