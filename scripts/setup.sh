#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (as root) for great-escape: system packages and a virtual
# environment with the pinned versions of requirements.txt (the one place versions are pinned).
# Idempotent and quick when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# PostgreSQL 15 and rsync/ssh for the migration; podman for molecule; the peers for the benchmarks.
packages=(postgresql-15 postgresql-client-15 postgresql-plperl-15 rsync openssh-server openssh-client podman catatonit uidmap
          bucardo pgcopydb postgresql-15-pglogical python3-venv)
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
# Server builds of other PostgreSQL majors for tests/crossversion (GE_PG_MAJORS=all for the full matrix).
bash scripts/install-pg-majors.sh
echo "setup: ready (ansible-core $(.venv/bin/python -c "import ansible.release as r; print(r.__version__)"), $(.venv/bin/python --version))"
