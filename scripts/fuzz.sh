#!/usr/bin/env bash
# Runs every fuzz target of the module for a while (default 5m each; the
# first argument changes it, e.g. scripts/fuzz.sh 30s; a second argument
# picks targets by a regexp on "package Target") and stops at the first
# failure. New inputs are minimized for at most 10 s: Go's fuzzer
# otherwise spends up to a minute minimizing each large new input without
# counting those runs, which shows as 0 execs/s and looks like a hang (see
# FuzzUnmarshalMessage in coherence/message_test.go). For each target it
# prints the result, the last progress line and the longest stretch the
# fuzzer reported no new execs.
set -euo pipefail
cd "$(dirname "$0")/.."
time=${1:-5m}
pick=${2:-.}
targets=$(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
for file in $targets; do
  pkg=./$(dirname "${file#./}")
  for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | cut -d' ' -f2); do
    echo "$pkg $fn" | grep -Eq -- "$pick" || continue
    echo "== $pkg $fn ($time)"
    go test "$pkg" -run '^$' -fuzz "^${fn}\$" -fuzztime "$time" -fuzzminimizetime 10s -parallel 1 2>&1 |
      awk '
        /elapsed/ {
          last = $0
          # "execs: N (R/sec)": a stretch without new execs is a stall.
          if (match($0, /execs: [0-9]+/)) {
            n = substr($0, RSTART + 7, RLENGTH - 7) + 0
            if (n == prev) { run += 3 } else { run = 0 }
            if (run > longest) longest = run
            prev = n
          }
          next
        }
        { print }
        END { if (last) print last; printf "longest stretch without new execs: about %d s\n", longest }'
  done
done
