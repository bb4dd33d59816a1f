#!/usr/bin/env bash
# Installs the system tools the tests use, from Debian: for tests/deploy/test_images.py, which builds and
# runs the images without a Docker engine, podman and buildah (build, run), runc (crun cannot run
# here: cgroups v1 "hybrid" and no CAP_SYS_RESOURCE) and mmdebstrap (the local stand-in for
# python:3.11-slim, see deploy/images/base-image.sh); for bench/, the load generator wrk.
#
# Installs only what is missing, with apt-get, and only as root. When it cannot (not root, no
# apt-get, apt failed) it says so loudly and exits 0, so that the rest of the suite still runs:
# without podman the image tests skip, saying why.
#
#   deploy/tools/install-system-tools.sh
set -euo pipefail

TOOLS=(podman buildah runc mmdebstrap wrk chromium)  # each command comes in the Debian package of its name

missing=()
for cmd in "${TOOLS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-tools: ${TOOLS[*]} are installed"
    exit 0
fi

loud() {
    echo "#####################################################################" >&2
    echo "# install-tools: NOT installing ${missing[*]}: $1" >&2
    if [[ " ${missing[*]} " == *" podman "* ]]; then
        echo "# The container image tests (tests/deploy/test_images.py) will be SKIPPED." >&2
    else
        echo "# The container image tests (tests/deploy/test_images.py) may FAIL." >&2
    fi
    if [[ " ${missing[*]} " == *" wrk "* ]]; then
        echo "# The benchmarks (bench/) fall back to their slower Python load generator." >&2
    fi
    if [[ " ${missing[*]} " == *" chromium "* ]]; then
        echo "# The real-browser tests (the encrypt page, /docs) will be SKIPPED." >&2
    fi
    echo "# Install them by hand: apt-get install -y ${missing[*]}" >&2
    echo "#####################################################################" >&2
    exit 0
}

[ "$(id -u)" -eq 0 ] || loud "not running as root"
command -v apt-get >/dev/null 2>&1 || loud "apt-get not found (not Debian/Ubuntu)"

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Quiet; apt's output is shown only if it finally fails.
install() { apt-get install -y -qq -o=Dpkg::Use-Pty=0 "${missing[@]}" >"$log" 2>&1; }

echo "install-tools: installing ${missing[*]} with apt-get"
# `apt-get update` only when the package lists are absent or too old to have the packages.
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! install; then
    echo "install-tools: apt-get update"
    apt-get update -qq >"$log" 2>&1 || { cat "$log" >&2; loud "apt-get update failed"; }
    install || { cat "$log" >&2; loud "apt-get install failed"; }
fi
for cmd in "${TOOLS[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || loud "$cmd still missing after apt-get install"
done
echo "install-tools: $(podman --version), $(buildah --version | cut -d' ' -f1-3)," \
    "$(runc --version | head -n1), mmdebstrap $(mmdebstrap --version | cut -d' ' -f2)," \
    "$(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2), $(chromium --version 2>/dev/null | head -n1)"
