#!/usr/bin/env bash
# Runs every fuzz target of the module for a while (default 5m each; the
# first argument changes it, e.g. scripts/fuzz.sh 30s) and stops at the
# first failure. New inputs are minimized for at most 10 s: Go's fuzzer
# otherwise spends up to a minute minimizing each large new input without
# counting those runs, which shows as 0 execs/s and looks like a hang
# (see FuzzUnmarshalMessage in coherence/message_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
time=${1:-5m}
targets=$(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
for file in $targets; do
  pkg=./$(dirname "${file#./}")
  for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
    echo "== $pkg $fn ($time)"
    go test "$pkg" -run '^$' -fuzz "^${fn}\$" -fuzztime "$time" -fuzzminimizetime 10s -parallel 1 2>&1 |
      awk '/elapsed/ { last = $0; next } { print } END { if (last) print last }'
  done
done
