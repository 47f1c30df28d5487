#!/usr/bin/env bash
# Every GPU path in one command, on a lent GPU machine (python3 with CUDA torch; no network).
# Set-up first, on the CPU machine: `python bench/gpu_bundle.py` (prints the carry list), then
# run this with that carry. Results go to $OUT: summary.json, logs.tar.gz, the benchmarks' JSON.
# Arguments go to bench/gpu_check.py (e.g. --only engine-bench,serving-bench, --budget 300).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
PYTHON=${PYTHON:-python3}
# the script keeps its own budget (460 s) and writes the summary; this is the safety net
exec timeout -k 5 480 "$PYTHON" bench/gpu_check.py --out "$OUT" "$@"
