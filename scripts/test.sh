#!/usr/bin/env bash
# The test suite: lint, pytest (real PostgreSQL clusters, real rsync/pg_dump/pg_restore, moto for AWS),
# the molecule scenarios (podman containers), and the quick benchmarks (no timing assertions).
#   scripts/test.sh            # everything
#   GE_SKIP_MOLECULE=1 GE_SKIP_BENCH=1 scripts/test.sh   # a faster local loop
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export PATH="$root/.venv/bin:$PATH"

echo "== lint"
ruff check src library module_utils action_plugins tests bench demo
yamllint -s .
ansible-lint --offline -q
for m in library/*.py; do
    ANSIBLE_LIBRARY=library ANSIBLE_DOC_FRAGMENT_PLUGINS=doc_fragments ansible-doc -t module "$(basename "$m" .py)" \
        >/dev/null || { echo "ansible-doc failed for $m" >&2; exit 1; }
done

echo "== pytest"
pytest_log=$(mktemp)
python -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$pytest_log"
pytest_status=${PIPESTATUS[0]}
[ "$pytest_status" -eq 0 ] || exit "$pytest_status"

if [ -z "${GE_SKIP_MOLECULE:-}" ]; then
    echo "== molecule"
    bash molecule/run-all.sh
fi
if [ -z "${GE_SKIP_BENCH:-}" ]; then
    echo "== quick benchmarks (no timing assertions)"
    bash bench/run-quick.sh
fi

# The test count, as the last line (molecule and the benchmarks print their own lines above).
tail -n 1 "$pytest_log"
rm -f "$pytest_log"
