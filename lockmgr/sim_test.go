package lockmgr

import (
	"errors"
	"flag"
	"fmt"
	"testing"

	"github.com/dsmrt/dsm/internal/seedrun"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "replay only this simulator seed, with a trace (lockmgr tests)")
	seedsFlag = flag.Int("seeds", 0, "number of simulator schedules to run (0: the default)")
)

// simSeeds is how many schedules TestSimulation runs.
func simSeeds() int {
	if *seedsFlag > 0 {
		return *seedsFlag
	}
	if raceEnabled {
		return 1000
	}
	return 10000
}

// runSeeds runs schedules first..first+n-1 on every core and returns the
// summed stats and the violation of the smallest failing seed, if any.
func runSeeds(first uint64, n int, mk func(seed uint64) SimConfig) (SimStats, *Violation) {
	var total SimStats
	_, err := seedrun.Run(first, n, func(seed uint64) (SimStats, error) {
		st, err := Simulate(mk(seed))
		var v *Violation
		if err != nil && !errors.As(err, &v) {
			panic(err)
		}
		return st, err
	}, func(st SimStats) { total.Add(st) })
	var worst *Violation
	errors.As(err, &worst)
	return total, worst
}

func replayHint(seed uint64) string {
	return fmt.Sprintf("replay: go test ./lockmgr/ -run 'TestSimulation$' -seed=%d -v", seed)
}

// TestSimulation runs thousands of seeded schedules and checks every
// invariant after every step (see Simulate).
func TestSimulation(t *testing.T) {
	if *seedFlag != 0 {
		st, err := Simulate(SimConfig{Seed: *seedFlag, Trace: t.Logf})
		t.Logf("stats: %+v", st)
		if err != nil {
			t.Fatalf("%v\n%s", err, replayHint(*seedFlag))
		}
		return
	}
	n := simSeeds()
	if testing.Short() {
		n /= 10
	}
	total, v := runSeeds(1, n, func(seed uint64) SimConfig { return SimConfig{Seed: seed} })
	t.Logf("%d schedules: %+v", n, total)
	if v != nil {
		t.Fatalf("%v\n%s", v, replayHint(v.Seed))
	}
	// The schedules must exercise what the invariants are about.
	for name, got := range map[string]int{
		"grants": total.Grants, "lost leases": total.Lost, "refusals": total.Refused,
		"cancels": total.Canceled, "cancels after the grant": total.CancelRaces,
		"barrier completions": total.BarrierDone, "crashes": total.Crashes, "restarts": total.Restarts,
		"partitions": total.Partitions, "PeerDown calls": total.PeerDowns, "elections": total.Elections,
		"cached grants": total.CachedGrants, "re-grants from a cache": total.LocalGrants,
		"recalls": total.Recalls, "releases of a cache": total.CacheReleases,
		"duplicates": total.Duplicated, "drops": total.Dropped, "very late messages": total.Late,
		"releases with a payload": total.PayloadReleases, "grants with a payload": total.PayloadGrants,
		"grants that may miss a payload": total.PayloadsLost, "barrier completions with payloads": total.BarrierPayloads,
	} {
		if got == 0 {
			t.Errorf("no %s in %d schedules: the simulator no longer exercises them", name, n)
		}
	}
}

// TestSimulationDeterministic: a seed replays exactly; another seed does
// something else.
func TestSimulationDeterministic(t *testing.T) {
	trace := func(seed uint64) []string {
		var lines []string
		st, err := Simulate(SimConfig{Seed: seed, Trace: func(format string, args ...any) {
			lines = append(lines, fmt.Sprintf(format, args...))
		}})
		if err != nil {
			t.Fatalf("%v\n%s", err, replayHint(seed))
		}
		lines = append(lines, fmt.Sprintf("%+v", st))
		return lines
	}
	a, b, c := trace(42), trace(42), trace(43)
	if len(a) < 100 {
		t.Fatalf("trace of %d lines: the schedule does little", len(a))
	}
	if fmt.Sprint(a) != fmt.Sprint(b) {
		for i := range min(len(a), len(b)) {
			if a[i] != b[i] {
				t.Fatalf("seed 42 diverged at line %d:\n%s\n%s", i, a[i], b[i])
			}
		}
		t.Fatalf("seed 42 traces differ in length: %d and %d", len(a), len(b))
	}
	if fmt.Sprint(a) == fmt.Sprint(c) {
		t.Fatal("seeds 42 and 43 ran the same schedule")
	}
}

// TestSimulationCatchesBrokenConfigs proves the checker finds double
// holders when the lease rules are broken (a holder that believes in its
// lease at least as long as the home enforces it, or a restarted home that
// grants at once), tokens that go back when a home forgets what cached
// holders gave themselves, and payloads that are not the latest released
// (a home that keeps the first, or lets a late copy of an earlier release
// replace a later one) or go missing at a barrier.
func TestSimulationCatchesBrokenConfigs(t *testing.T) {
	tests := []struct {
		name string
		cfg  SimConfig
		rule string
	}{
		{"holder lease longer than the home's", SimConfig{holderLease: simHomeLease + 4, homeLease: simHomeLease}, "exclusion"},
		{"holder lease as long as the home's", SimConfig{holderLease: simHomeLease, homeLease: simHomeLease}, "exclusion"},
		{"restarted home skips the recovery wait", SimConfig{freshRestart: true}, "exclusion"},
		{"home ignores the tokens of cached holds", SimConfig{ignoreLastToken: true}, "token order"},
		{"home keeps a lock's first payload", SimConfig{payloadBug: payloadKeepFirst}, "payload"},
		{"late release copies replace the payload", SimConfig{payloadBug: payloadKeepStale}, "payload"},
		{"barrier drops an arrival's payload", SimConfig{payloadBug: payloadDropArrive}, "payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const chunk, limit = 500, 20000
			for first := uint64(1); first < limit; first += chunk {
				_, v := runSeeds(first, chunk, func(seed uint64) SimConfig {
					c := tc.cfg
					c.Seed = seed
					return c
				})
				if v == nil {
					continue
				}
				if v.Rule != tc.rule {
					t.Fatalf("found %v, want a violation of %q", v, tc.rule)
				}
				t.Logf("found: %v", v)
				return
			}
			t.Fatalf("no violation in %d schedules", limit)
		})
	}
}
