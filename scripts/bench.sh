#!/usr/bin/env bash
# Run every benchmark in benchmarks/ and print its figures.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
for bench in benchmarks/bench_*.py; do
  echo "== $bench"
  .venv/bin/python "$bench" "$@"
done
