package rc

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/dsmrt/dsm/internal/seedrun"
)

var (
	seedFlag      = flag.Uint64("seed", 0, "replay one schedule of TestSimulator (with -v: its trace)")
	schedulesFlag = flag.Int("schedules", 10000, "number of seeded schedules TestSimulator runs (-short or -race: a fifth)")
)

func replayHint(seed uint64) string {
	return fmt.Sprintf("replay: go test ./coherence/rc -run 'TestSimulator$' -seed=%d -v", seed)
}

// traceTail replays a schedule with a trace and returns its last lines.
func traceTail(cfg SimConfig, lines int) string {
	return seedrun.TraceTail(func(w io.Writer) { cfg.Trace = w; Simulate(cfg) }, lines)
}

// runSchedules runs seeds 1..n of cfgFor on every CPU and returns the
// first failure (the smallest failing seed) and the summed results.
func runSchedules(n int, cfgFor func(uint64) SimConfig) (uint64, SimResult, Stats, error) {
	var (
		total  SimResult
		engine Stats
	)
	seed, err := seedrun.Run(1, n, func(seed uint64) (SimResult, error) {
		return Simulate(cfgFor(seed))
	}, func(res SimResult) {
		total.Add(res)
		for _, st := range res.Stats {
			engine.Fetches += st.Fetches
			engine.Stale += st.Stale
			engine.Diffs += st.Diffs
			engine.DiffBytes += st.DiffBytes
			engine.Retransmits += st.Retransmits
			engine.Duplicates += st.Duplicates
			engine.Invalidations += st.Invalidations
			engine.Truncated += st.Truncated
			engine.Shares += st.Shares
			engine.PayloadNotices += st.PayloadNotices
		}
	})
	return seed, total, engine, err
}

// TestSimulator runs 10,000 seeded schedules of whole clusters: programs
// free of data races read, after every acquire, the last write that
// happens before it; the homes lose no byte; every word written by two
// concurrent writes is reported as a race, and no other.
func TestSimulator(t *testing.T) {
	if *seedFlag != 0 {
		cfg := SimConfigFor(*seedFlag)
		var buf bytes.Buffer
		if testing.Verbose() {
			cfg.Trace = &buf
		}
		res, err := Simulate(cfg)
		if buf.Len() > 0 {
			t.Logf("trace of seed %d:\n%s", *seedFlag, buf.String())
		}
		t.Logf("config %+v\nresult %+v", SimConfigFor(*seedFlag), res)
		if err != nil {
			t.Fatalf("%v\n%s", err, replayHint(*seedFlag))
		}
		return
	}
	n := *schedulesFlag
	if testing.Short() || raceEnabled {
		n /= 5
	}
	seed, total, engine, err := runSchedules(n, SimConfigFor)
	if err != nil {
		t.Fatalf("%v\nlast steps of the schedule:\n%s\n%s", err, traceTail(SimConfigFor(seed), 60), replayHint(seed))
	}
	t.Logf("%d schedules: %d steps, %d reads (%d checked), %d writes, %d releases, %d acquires, %d messages (%d lost, %d duplicated)",
		n, total.Steps, total.Reads, total.Checked, total.Writes, total.Releases, total.Acquires, total.Sent, total.Lost, total.Duplicated)
	t.Logf("in-place pages: %d writes made in place, %d pages shared when another node asked", total.InPlaceWrites, engine.Shares)
	t.Logf("acquires took the notices of %d nodes from their payloads, without asking", engine.PayloadNotices)
	t.Logf("engines: %d fetches (%d stale, fetched again), %d diffs of %d bytes, %d invalidations, %d acquires that dropped every copy (forgotten notices), %d retransmissions, %d duplicates; %d races reported on %d racy words",
		engine.Fetches, engine.Stale, engine.Diffs, engine.DiffBytes, engine.Invalidations, engine.Truncated, engine.Retransmits, engine.Duplicates, total.Races, total.RacyWords)
	if total.Checked == 0 || total.Lost == 0 || total.Duplicated == 0 || engine.Stale == 0 || engine.Truncated == 0 ||
		engine.Invalidations == 0 || engine.Retransmits == 0 || total.RacyWords == 0 || total.Races == 0 ||
		total.InPlaceWrites == 0 || engine.Shares == 0 || engine.PayloadNotices == 0 {
		t.Fatalf("the schedules exercised too little: %+v, engines %+v", total, engine)
	}
}

func TestSimulatorDeterministic(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		a, b := traceTail(SimConfigFor(seed), 1<<30), traceTail(SimConfigFor(seed), 1<<30)
		if a != b {
			t.Fatalf("seed %d does not replay the same schedule", seed)
		}
	}
}

// TestSimulatorCatchesBugs breaks the protocol on purpose, one mistake at a
// time, and expects the simulator to find a schedule that shows it.
func TestSimulatorCatchesBugs(t *testing.T) {
	cases := []struct {
		name string
		bug  bugs
		want string
	}{
		{"acquire invalidates nothing", bugs{noInvalidate: true}, "the last write that happens before the read"},
		{"acquire does not flush", bugs{noFlush: true}, ""},
		{"diffs of whole words", bugs{wideRuns: true}, ""},
		{"home reports no race", bugs{noRaces: true}, "no race was reported"},
		{"losing copies not refreshed", bugs{noRefresh: true}, "differs from its home's"},
		{"forgotten notices not said", bugs{noTruncate: true}, ""},
		{"shared in-place page left untracked at its home", bugs{keepOwn: true}, ""},
		{"payload notices trusted despite a gap", bugs{trustPayload: true}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seed, _, _, err := runSchedules(3000, func(seed uint64) SimConfig {
				c := SimConfigFor(seed)
				c.bugs = tc.bug
				return c
			})
			if err == nil {
				t.Fatalf("3000 schedules passed with the bug in place")
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("seed %d: %v; want a violation mentioning %q", seed, err, tc.want)
			}
			t.Logf("seed %d: %v", seed, err)
		})
	}
}
