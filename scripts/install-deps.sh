#!/usr/bin/env bash
# Install the system packages rootless-groot's tests need (Debian 12). Idempotent:
# apt is only asked when something is missing. Must run as root.
#   INSTALL_BENCH_DEPS=1  also installs the benchmark peers (podman, debootstrap).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

pkgs=(
    uidmap            # newuidmap/newgidmap
    runc              # rootless containers in the integration tests
    busybox-static    # the base layer of test images
    skopeo            # fill the test registry from OCI layouts
    docker-registry   # the CNCF distribution registry, served on 127.0.0.1
    umoci             # a peer to compare OCI layouts with
    python3-venv      # /usr/bin/python3 -m venv
    util-linux        # setpriv, unshare, nsenter, runuser
    attr              # getfattr/setfattr
    apache2-utils     # htpasswd -B for registry auth tests
    kmod xfsprogs btrfs-progs user-mode-linux   # quota tests (uml-run, loop btrfs)
    gcc libc6-dev     # the setuid launcher of the privileged helper
    ca-certificates
    openssl           # self-signed certificates for the registry TLS tests
    bubblewrap        # a sandbox without user namespaces (bwrap --disable-userns)
    tmux              # the terminal tests read the screen a person would see
)
if [ "${INSTALL_BENCH_DEPS:-0}" = 1 ]; then
    pkgs+=(podman debootstrap)
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all system packages present"
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
