#!/usr/bin/env bash
# Build the local test base image llem-testbase:bookworm without any registry.
#
#   Debian bookworm rootfs (mmdebstrap, else debootstrap --variant=minbase) with
#   python3, python3-venv, ca-certificates, and the C++/OpenMP runtimes torch's
#   wheel links against (libstdc++6, libgomp1)  ->  `docker import`  ->  a venv at
#   /opt/venv on PATH (mimics vLLM's layout; keeps PEP 668 out of the way).
#
# Skips all work if the image exists with the same package list (a label records
# it; LLEM_REBUILD_BASE=1 forces). The rootfs tarball is cached in .cache/
# (gitignored, keyed by the package list), so a rebuild after `docker rmi` costs
# seconds, not a minute.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${LLEM_BASE_IMAGE:-llem-testbase:bookworm}"
rootfs_image="llem-rootfs:${image##*:}"
cache_dir="${LLEM_CACHE_DIR:-$here/.cache}"
# mmdebstrap if installed (faster, smaller), else debootstrap; LLEM_ROOTFS_TOOL forces one.
tool="${LLEM_ROOTFS_TOOL:-$(command -v mmdebstrap >/dev/null 2>&1 && echo mmdebstrap || echo debootstrap)}"
mirror="${LLEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages="python3,python3-venv,ca-certificates,libstdc++6,libgomp1"
tarball="$cache_dir/rootfs-bookworm-$(printf '%s' "$packages" | sha256sum | cut -c1-12).tar"
label="io.llenergymeasure.testbase.packages"

if [ "${LLEM_REBUILD_BASE:-0}" != "1" ] \
    && [ "$(docker image inspect --format "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null)" = "$packages" ]; then
    echo "build-base: $image present, skipping"
    exit 0
fi

mkdir -p "$cache_dir"
# The cache dir ignores itself so nothing in it can be committed by accident.
[ -f "$cache_dir/.gitignore" ] || echo '*' >"$cache_dir/.gitignore"

# Building a rootfs needs root (GitHub's runners: passwordless sudo).
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
# Name the Debian keyring when present, so a non-Debian host (Ubuntu runners) verifies bookworm.
keyring=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
    && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)

start=$SECONDS
if [ ! -s "$tarball" ]; then
    if [ "$tool" = mmdebstrap ]; then
        echo "build-base: mmdebstrap bookworm -> $tarball"
        "${as_root[@]}" mmdebstrap --quiet --variant=essential "${keyring[@]}" --include="$packages" \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --format=tar bookworm "$tarball.tmp" "$mirror"
    else
        echo "build-base: debootstrap --variant=minbase bookworm -> $tarball"
        rootfs="$(mktemp -d "$cache_dir/rootfs.XXXXXX")"
        "${as_root[@]}" debootstrap --variant=minbase "${keyring[@]}" --include="$packages" bookworm "$rootfs" "$mirror" \
            >"$cache_dir/debootstrap.log" 2>&1 \
            || { tail -n 30 "$cache_dir/debootstrap.log" >&2; exit 1; }
        "${as_root[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        "${as_root[@]}" tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
        "${as_root[@]}" rm -rf "$rootfs"
    fi
    mv "$tarball.tmp" "$tarball"
    echo "build-base: rootfs in $((SECONDS - start))s"
fi

docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' "$tarball" "$rootfs_image" >/dev/null

# A tiny context: only the Dockerfile text, piped on stdin.
printf '%s\n' \
    "FROM $rootfs_image" \
    'RUN python3 -m venv /opt/venv' \
    'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin VIRTUAL_ENV=/opt/venv' \
    "LABEL $label=\"$packages\"" \
    | docker build --quiet --network=none -t "$image" - >/dev/null
echo "build-base: $image ready in $((SECONDS - start))s"
