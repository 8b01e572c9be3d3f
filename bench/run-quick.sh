#!/usr/bin/env bash
# Every benchmark at quick scale (small data, bounded time, no goals judged): the CI smoke test of the
# harness and of every baseline. Must finish in under 5 minutes, so it runs two lanes side by side
# (each benchmark has its own ports and directories; quick numbers are not judged, so sharing the CPU
# is harmless).
#   bench/run-quick.sh                                       # results to a temporary file
#   GE_BENCH_RESULTS=bench/RESULTS.md bench/run-quick.sh     # record them
set -euo pipefail

cd "$(dirname "$0")/.."
python="${GE_BENCH_PYTHON:-.venv/bin/python}"
results="${GE_BENCH_RESULTS:-$(mktemp --suffix=.md)}"
budget=290  # seconds for the whole run, a little under the 5 minutes
started=$SECONDS
logdir="$(mktemp -d)"

# A lane entry is a benchmark name, or one of these names for a benchmark with extra arguments.
args_of() {
    case "$1" in
        # The copy across the emulated WAN link (bench/wan.py: netns + tc tbf), baselines only: ~15 s.
        copy-wan) echo "copy --link wan --variants plain,pgcopydb" ;;
        # The default copy method only: the pg_dump method is exercised by the playbook tests, and both
        # together take most of the budget on a loaded machine.
        copy) echo "copy --ge-methods chunked" ;;
        *) echo "$1" ;;
    esac
}

lane() {
    local benchmark left argv
    for benchmark in "$@"; do
        left=$((budget - (SECONDS - started)))
        if ((left <= 0)); then
            echo "run-quick: the ${budget}s budget was used up before '${benchmark}'" >&2
            return 1
        fi
        echo "run-quick: ${benchmark} starts (${left}s left)" >&2
        read -r -a argv <<<"$(args_of "${benchmark}")"
        # SIGTERM on overrun: each benchmark stops its daemons and removes its clusters on the way out.
        if ! timeout --signal=TERM --kill-after=30 "${left}" \
            "${python}" -m bench "${argv[@]}" --quick --results "${logdir}/${benchmark}.md" \
            >"${logdir}/${benchmark}.log" 2>&1; then
            echo "run-quick: ${benchmark} FAILED after $((SECONDS - started))s; its output:" >&2
            tail -n 30 "${logdir}/${benchmark}.log" >&2
            return 1
        fi
        echo "run-quick: ${benchmark} passed at $((SECONDS - started))s" >&2
    done
}

lane copy copy-wan rss &
lane_a=$!
lane overhead lag cutover catchup &
lane_b=$!
status=0
wait "${lane_a}" || status=1
wait "${lane_b}" || status=1

# Both lanes wrote their own files (no two writers on one file); merge them in benchmark order.
for benchmark in copy copy-wan overhead catchup lag cutover rss; do
    if [[ -f "${logdir}/${benchmark}.md" ]]; then
        "${python}" -c 'import re, sys
from pathlib import Path
from bench.common import write_section
text = Path(sys.argv[1]).read_text()
for m in re.finditer(r"<!-- BEGIN (\S+):(\S+) -->\n.*?<!-- END \1:\2 -->\n", text, re.S):
    write_section(Path(sys.argv[2]), m.group(1), m.group(2), m.group(0))' "${logdir}/${benchmark}.md" "${results}"
    fi
done
rm -rf "${logdir}"
if ((status != 0)); then
    echo "run-quick: FAILED after $((SECONDS - started))s" >&2
    exit 1
fi
echo "run-quick: all benchmarks passed in $((SECONDS - started))s; results in ${results}" >&2
