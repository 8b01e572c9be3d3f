#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for great-escape: system packages and a virtual
# environment with the pinned versions of requirements.txt (the one place versions are pinned).
# Idempotent and quick when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# PostgreSQL 15 and rsync/ssh for the migration; podman for molecule; the peers for the benchmarks; iproute2
# (the benchmark's emulated link) and iptables (the tests' dead links).
packages=(postgresql-15 postgresql-client-15 postgresql-plperl-15 rsync openssh-server openssh-client podman catatonit uidmap
          bucardo pgcopydb postgresql-15-pglogical python3-venv iproute2 iptables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || true
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Debian package starts a default cluster; the project runs its own clusters on other ports.
if systemctl is-active --quiet postgresql 2>/dev/null; then systemctl stop postgresql || true; fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r requirements.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import great_escape, psycopg, ansible, moto, molecule" \
    || { echo "setup: the virtual environment is incomplete" >&2; exit 1; }
# A clean Debian 12 root file system for the hosts of molecule/production: nothing of this machine's
# (no venv, no checkout), only what the real hosts would have. Built once into a cache directory and
# reused; GE_ROOTFS_REBUILD=1 builds it again. The machine's CA bundle and package mirror settings go in
# (as a company image would carry them), so pip and apt inside reach the same registries.
rootfs=${GE_ROOTFS_DIR:-/var/cache/great-escape/rootfs-bookworm}
rootfs_packages="python3 python3-venv openssh-server openssh-client rsync sudo systemd systemd-sysv dbus"
rootfs_packages="$rootfs_packages postgresql-15 postgresql-client-15 ca-certificates procps iproute2 xfsprogs"
# zstd: the source host's compressor for the chunked copy reading there (its DBA installs it on a real one).
rootfs_packages="$rootfs_packages zstd"
# Built again when the package list changed since (the marker records it).
if [ "${GE_ROOTFS_REBUILD:-0}" = 1 ] || ! grep -qxF "packages: $rootfs_packages" "$rootfs/.great-escape-rootfs" 2>/dev/null; then
    dpkg-query -W -f='${Status}' debootstrap 2>/dev/null | grep -q "install ok installed" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    rm -rf "$rootfs.new"
    mkdir -p "$(dirname "$rootfs")"
    debootstrap --variant=minbase bookworm "$rootfs.new" "${mirror:-http://deb.debian.org/debian}"
    cp /etc/apt/sources.list.d/*.sources "$rootfs.new/etc/apt/sources.list.d/" 2>/dev/null && rm -f "$rootfs.new/etc/apt/sources.list"
    cp /etc/apt/apt.conf.d/* "$rootfs.new/etc/apt/apt.conf.d/" 2>/dev/null || true
    chroot "$rootfs.new" sh -ec "export DEBIAN_FRONTEND=noninteractive; apt-get update -q
        apt-get install -y -q --no-install-recommends $rootfs_packages"
    # PostgreSQL's packaged cluster is not wanted: the scenario makes its own.
    chroot "$rootfs.new" sh -c 'pg_dropcluster --stop 15 main 2>/dev/null; rm -f /etc/ssh/ssh_host_*' || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs.new/etc/ssl/certs/ca-certificates.crt"
    # pip's index settings without this machine's local wheel directories.
    grep -v -E '^(find-links|extra-index-url) *= *(/|file:)' /etc/pip.conf > "$rootfs.new/etc/pip.conf" 2>/dev/null || true
    chroot "$rootfs.new" apt-get clean
    printf '%s\npackages: %s\n' "$(date -u +%FT%TZ)" "$rootfs_packages" > "$rootfs.new/.great-escape-rootfs"
    rm -rf "$rootfs"
    mv "$rootfs.new" "$rootfs"
fi
# Server builds of other PostgreSQL majors for tests/crossversion (GE_PG_MAJORS=all for the full matrix).
bash scripts/install-pg-majors.sh
echo "setup: ready (ansible-core $(.venv/bin/python -c "import ansible.release as r; print(r.__version__)"), $(.venv/bin/python --version))"
