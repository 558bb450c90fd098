#!/usr/bin/env bash
# The project's test command (the README's second command).
#
# Runs every test, the programs' tests again beside a release-consistent
# area, then the packages that use no userfaultfd again under the race
# detector (-short keeps the simulators' schedule counts small there;
# the full runs happened in the first pass). Tests that need userfaultfd skip
# with the reason when the machine does not allow it, unless
# DSM_REQUIRE_UFFD=1, where they fail instead (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -timeout 20m ./... "$@"
# The programs' tests again on clusters that keep a release-consistent area:
# sequentially consistent memory must work the same beside it (locks and
# barriers then release and acquire through the release-consistent engine).
DSM_TEST_RC_AREA=1 go test -count=1 -timeout 20m ./dsm/ "$@"
race_pkgs=$(go list ./clocks/... ./dht/... ./coherence/... ./lockmgr/... ./net/... ./analyzer/... ./pager/... 2>/dev/null || true)
if [ -n "$race_pkgs" ]; then
  go test -count=1 -race -short -timeout 20m $race_pkgs
fi
