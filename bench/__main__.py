"""`python -m bench <benchmark> [--scale quick|medium|full] [--quick]`: one benchmark, baselines included."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "copy": "bench.initial_copy",
    "overhead": "bench.overhead",
    "catchup": "bench.catchup",
    "lag": "bench.lag",
    "cutover": "bench.cutover",
    "rss": "bench.rss",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [--scale quick|medium|full] [--quick]",
              file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
