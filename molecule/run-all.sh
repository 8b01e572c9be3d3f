#!/usr/bin/env bash
# Runs every molecule scenario (or the ones named) with `molecule test`, each in a private mount
# namespace where podman works on this kind of machine (cgroup v2 `unified` mount removed), and
# removes the scenario's containers afterwards even if molecule itself dies.
#
#   molecule/run-all.sh                          # all scenarios, default last
#   molecule/run-all.sh replication_role_function
#   molecule/run-all.sh production               # clean Debian 12 hosts: needs scripts/setup.sh's root file system
#
# Env: GE_VENV (default <checkout>/.venv). Prints one timing line per scenario; exits non-zero if any failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${GE_VENV:-$root/.venv}
export PATH="$venv/bin:$PATH"
cd "$root"

if [ "$#" -gt 0 ]; then
    scenarios=("$@")
else
    # The whole migrations are the slowest: run the small scenarios first so they fail fast, then the
    # default (~2 min), then production (~8 min: the provision phase installs the engine on a clean host).
    mapfile -t scenarios < <(find molecule -mindepth 2 -maxdepth 2 -name molecule.yml -printf '%h\n' \
        | xargs -n1 basename | grep -vx -e default -e production | sort)
    [ -f molecule/default/molecule.yml ] && scenarios+=(default)
    [ -f molecule/production/molecule.yml ] && scenarios+=(production)
fi

# Everything podman does for one scenario must happen in one mount namespace.
in_namespace() {
    unshare --mount --propagation private -- sh -c '
        if mountpoint -q /sys/fs/cgroup/unified; then umount /sys/fs/cgroup/unified; fi
        exec "$@"' sh "$@"
}

remove_containers() {
    in_namespace sh -c 'podman ps -aq --filter "label=great-escape.molecule=$1" | xargs -r podman rm -f -t 0 >/dev/null' \
        sh "$1" || echo "run-all: could not remove the containers of scenario $1; run: podman rm -f \$(podman ps -aq --filter label=great-escape.molecule=$1)" >&2
}

failed=()
summary=()
for scenario in "${scenarios[@]}"; do
    if [ ! -f "molecule/$scenario/molecule.yml" ]; then
        echo "run-all: no scenario molecule/$scenario/molecule.yml" >&2
        failed+=("$scenario")
        continue
    fi
    start=$(date +%s)
    status=ok
    in_namespace molecule test --scenario-name "$scenario" || status=FAILED
    remove_containers "$scenario"
    summary+=("molecule $scenario: $status in $(( $(date +%s) - start ))s")
    [ "$status" = ok ] || failed+=("$scenario")
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-all: failed scenarios: ${failed[*]}" >&2
    exit 1
fi
