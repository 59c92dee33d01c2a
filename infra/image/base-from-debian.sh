#!/usr/bin/env bash
# Build the base image from Debian's own packages, for machines that reach Debian's
# package archive but no container registry (so `FROM python:3.11-slim-bookworm`
# cannot be pulled). Makes localhost/tessera-base:bookworm: Debian 12 minbase with
# Python 3.11 and venv. Needs root, debootstrap and podman.
#
#   infra/image/base-from-debian.sh [MIRROR]
set -euo pipefail
IMAGE=${TESSERA_BASE_IMAGE:-localhost/tessera-base:bookworm}
MIRROR=${1:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if podman image exists "$IMAGE"; then
  echo "$IMAGE exists"
  exit 0
fi
ROOTFS=$(mktemp -d /var/tmp/tessera-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$ROOTFS" "$MIRROR"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$IMAGE"
echo "built $IMAGE"
