#!/usr/bin/env bash
# A Debian bookworm root filesystem with python3.11, made by mmdebstrap from Debian's mirror and
# committed as a local image: the base for deploy/Containerfile where no registry can be pulled
# from. Usage: deploy/image/base.sh IMAGE_NAME (BUILDAH: the buildah command with its storage).
set -euo pipefail
image=$1
buildah=${BUILDAH:-buildah}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# No device nodes: the container runtime provides /dev.
mmdebstrap --variant=minbase --include=python3.11,python3.11-venv,ca-certificates \
  --skip=output/dev --aptopt='Acquire::Languages "none"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$scratch/rootfs.tar" "$mirror"
container=$($buildah from scratch)
$buildah add "$container" "$scratch/rootfs.tar" /
$buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$container"
$buildah commit --rm "$container" "$image"
