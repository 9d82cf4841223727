#!/usr/bin/env bash
# Create the unprivileged integration-test user with subordinate IDs. Idempotent.
#   scripts/make-test-user.sh [NAME] [SUBID_START] [SUBID_COUNT]
# Defaults: rgtest 100000 65536. An existing subuid/subgid line for NAME is kept.
set -euo pipefail

name="${1:-${RG_TEST_USER:-rgtest}}"
start="${2:-100000}"
count="${3:-65536}"

if [ "$(id -u)" -ne 0 ]; then
    echo "make-test-user.sh: must run as root" >&2
    exit 1
fi

if ! id -u "$name" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash --user-group "$name"
    echo "make-test-user: created user $name"
fi

for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^${name}:" "$f"; then
        # pick START unless another user already owns an overlapping range
        s="$start"
        while awk -F: -v s="$s" -v c="$count" \
                '($2 < s + c) && (s < $2 + $3) { found = 1 } END { exit !found }' "$f"; do
            s=$((s + count))
        done
        # keep the file line-based even if its last line lacks a newline
        if [ -s "$f" ] && [ "$(tail -c1 "$f" | od -An -c | tr -d ' ')" != '\n' ]; then echo >> "$f"; fi
        echo "${name}:${s}:${count}" >> "$f"
        echo "make-test-user: $f += ${name}:${s}:${count}"
    fi
done

home="$(getent passwd "$name" | cut -d: -f6)"
mkdir -p "$home"
chown "$name:$(id -gn "$name")" "$home"
echo "make-test-user: $(id "$name"); subuid $(grep "^${name}:" /etc/subuid | head -1)"
