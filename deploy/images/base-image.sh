#!/usr/bin/env bash
# Builds a local stand-in for docker.io/library/python:3.11-slim when podman's store lacks it.
#
# Registries (docker.io, quay.io, mirror.gcr.io) are unreachable from the build machines, so
# `FROM python:3.11-slim` cannot be pulled. This bootstraps Debian 12 (bookworm) with its
# python3 (3.11), venv and pip from deb.debian.org with mmdebstrap and `podman import`s it under
# the real tag, so the Dockerfiles stay unchanged and build with `podman build --pull=never`.
#
# The stand-in is close, not identical: Python 3.11.2 is in /usr/bin (the real image has its own
# build in /usr/local/bin). The Dockerfiles' venv pattern (python -m venv in the builder, the venv
# copied to the same path) behaves the same on both.
#
# It does not bake the host's CA bundle in: build with the bundle mounted read-only, e.g.
#   podman build -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro ...
#
# Idempotent: does nothing when the tag exists. To rebuild, podman rmi python:3.11-slim first.
# Needs root, podman and mmdebstrap (deploy/tools/install-system-tools.sh) and deb.debian.org.
set -euo pipefail

BASE_IMAGE=docker.io/library/python:3.11-slim  # the tag the Dockerfiles name
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

missing() {
    echo "base-image: $1 is missing; run deploy/tools/install-system-tools.sh" >&2
    exit 1
}
command -v podman >/dev/null || missing podman
if podman image exists "$BASE_IMAGE"; then
    echo "base-image: $BASE_IMAGE exists in podman's store; nothing to do"
    exit 0
fi
command -v mmdebstrap >/dev/null || missing mmdebstrap

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
echo "base-image: $BASE_IMAGE is missing; bootstrapping Debian $SUITE ($PACKAGES) from $MIRROR"
# --variant=apt: Essential packages and apt, close to debian:bookworm-slim. The dpkg excludes are
# the slim image's (no docs, man pages, translations). mmdebstrap cleans apt's lists and cache.
# The hooks are single-quoted on purpose: mmdebstrap runs them with $1 = the new root.
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=apt --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='ln -s python3 "$1/usr/bin/python"' \
    --customize-hook='rm -f "$1"/usr/lib/python3.*/EXTERNALLY-MANAGED' \
    --customize-hook='chroot "$1" python -c "import sys, venv; print(\"base-image: python\", sys.version)"' \
    "$SUITE" "$work/rootfs.tar" "$MIRROR"
echo "base-image: importing the rootfs ($(du -h "$work/rootfs.tar" | cut -f1)) as $BASE_IMAGE"
podman import --quiet \
    --message "local stand-in for $BASE_IMAGE, built by deploy/images/base-image.sh" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null
echo "base-image: $BASE_IMAGE ready in $((SECONDS - start)) s"
