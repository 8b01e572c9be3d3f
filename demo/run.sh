#!/usr/bin/env bash
# The whole forward migration on this machine, under a write load, from nothing:
#   sudo demo/run.sh [--scale 1] [--rate 200] [--connections 4] [--reset]
# Debian 12, as root. Installs the apt packages and the venv, starts the two local clusters
# (inventories/local), loads the sample database into the source, starts the write workload, runs
# migrate.yml, stops the workload, waits for the sync to drain and prints the verification table.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=1
RATE=200
CONNECTIONS=4
RESET=0
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --reset) RESET=1; shift ;;
        *) echo "usage: $0 [--scale N] [--rate OPS] [--connections N] [--reset]" >&2; exit 2 ;;
    esac
done

# The local inventory's settings (inventories/local/group_vars/all/main.yml).
LOCAL_ROOT=/var/tmp/great-escape/local
SOURCE_PORT=55432
CONFIG=$LOCAL_ROOT/state/great-escape.yml
export GE_SOURCE_PASSWORD=${GE_SOURCE_PASSWORD:-ge-local-secret}

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the local clusters run as the postgres user, started through runuser" >&2
    exit 1
fi

say "Installing packages and the python environment (scripts/setup.sh)"
cd "$ROOT"
bash scripts/setup.sh
export PATH=$ROOT/.venv/bin:$PATH

if [ "$RESET" -eq 1 ]; then
    say "Removing the local clusters under $LOCAL_ROOT"
    for kind in source aurora; do
        .venv/bin/python -m great_escape.localcluster remove --dir "$LOCAL_ROOT/$kind"
    done
    rm -rf "$LOCAL_ROOT"
fi

say "Starting the local clusters"
ansible-playbook -i inventories/local playbooks/00_preflight.yml --tags local_clusters

say "Loading the sample database (scale $SCALE) into the source"
if [ "$RESET" -eq 1 ]; then
    .venv/bin/python demo/sample.py --port "$SOURCE_PORT" --scale "$SCALE" --reset
else
    .venv/bin/python demo/sample.py --port "$SOURCE_PORT" --scale "$SCALE" \
        || { echo "(use --reset to start over)" >&2; exit 1; }
fi

say "Starting the write workload: $CONNECTIONS connections, $RATE operations/s"
WORKLOAD_LOG=$LOCAL_ROOT/workload.log
.venv/bin/python demo/workload.py --port "$SOURCE_PORT" --connections "$CONNECTIONS" --rate "$RATE" \
    >"$LOCAL_ROOT/workload.json" 2>"$WORKLOAD_LOG" &
WORKLOAD_PID=$!
stop_workload() {
    if kill -0 "$WORKLOAD_PID" 2>/dev/null; then
        kill -TERM "$WORKLOAD_PID"
        wait "$WORKLOAD_PID" || true
    fi
}
trap stop_workload EXIT

say "Migrating: ansible-playbook -i inventories/local migrate.yml"
STARTED=$(date +%s)
ansible-playbook -i inventories/local migrate.yml
say "migrate.yml took $(( $(date +%s) - STARTED ))s"

say "Stopping the workload"
stop_workload
trap - EXIT
echo "workload totals: $(cat "$LOCAL_ROOT/workload.json")"

say "Waiting for the sync to drain (great-escape status)"
deadline=$(( $(date +%s) + 600 ))
while :; do
    pending=$(great-escape status --config "$CONFIG" --json \
        | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["pending"])')
    [ "$pending" -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "the sync still has $pending pending changes after 600s; see great-escape status --tables" >&2
        break
    fi
    sleep 2
done
great-escape status --config "$CONFIG" --tables

say "Verifying source against target"
great-escape verify --config "$CONFIG"
