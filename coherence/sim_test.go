package coherence

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/dsmrt/dsm/internal/seedrun"
)

var (
	seedFlag      = flag.Uint64("seed", 0, "replay one simulator schedule with this seed (0: run the whole set)")
	schedulesFlag = flag.Int("schedules", 10000, "number of seeded simulator schedules TestSimulator runs (-short or -race: a fifth)")
)

// skipWhenReplaying skips the other simulator tests when -seed asks to
// replay one schedule of TestSimulator.
func skipWhenReplaying(t *testing.T) {
	if *seedFlag != 0 {
		t.Skip("-seed replays one schedule of TestSimulator only")
	}
}

// replayHint is printed with every failing seed.
func replayHint(seed uint64) string {
	return fmt.Sprintf("replay with: go test ./coherence -run TestSimulator -seed=%d", seed)
}

// traceTail reruns a schedule with tracing and returns its last lines.
func traceTail(cfg SimConfig, lines int) string {
	return seedrun.TraceTail(func(w io.Writer) { cfg.Trace = w; Simulate(cfg) }, lines)
}

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
		t.Logf("config %+v", SimConfigFor(*seedFlag))
		t.Logf("result: %d steps, %d reads, %d writes, %d faults, %d sent, %d lost, %d duplicated, %d holds",
			res.Steps, res.Reads, res.Writes, res.Faults, res.Sent, res.Lost, res.Duplicated, res.Holds)
		if err != nil {
			t.Fatalf("%v\n%s", err, replayHint(*seedFlag))
		}
		return
	}
	n := *schedulesFlag
	if testing.Short() || raceEnabled {
		// The race detector slows the simulator about tenfold; the
		// schedules exercise the same code either way.
		n /= 5
	}
	var (
		total  SimResult
		engine Stats // summed over every engine of every schedule
	)
	seed, err := seedrun.Run(1, n, func(seed uint64) (SimResult, error) {
		return Simulate(SimConfigFor(seed))
	}, func(res SimResult) {
		total.Add(res)
		for _, st := range res.Stats {
			engine.Pipelined += st.Pipelined
			engine.EarlyFwds += st.EarlyFwds
			engine.Holds += st.Holds
		}
	})
	if err != nil {
		t.Fatalf("%v\nlast steps of the schedule:\n%s\n%s", err, traceTail(SimConfigFor(seed), 80), replayHint(seed))
	}
	t.Logf("%d schedules: %d steps, %d reads, %d writes, %d faults, %d messages (%d lost, %d duplicated)",
		n, total.Steps, total.Reads, total.Writes, total.Faults, total.Sent, total.Lost, total.Duplicated)
	t.Logf("%d transactions pipelined, %d forwards arrived before their page, %d holds asked, %d ended",
		engine.Pipelined, engine.EarlyFwds, engine.Holds, total.Holds)
	if total.Reads == 0 || total.Writes == 0 || total.Lost == 0 || total.Duplicated == 0 ||
		engine.Pipelined == 0 || engine.EarlyFwds == 0 || engine.Holds == 0 || total.Holds == 0 {
		t.Fatalf("the schedules exercised too little: %+v, engines %+v", total, engine)
	}
}

// TestSimulatorDeterministic checks that a seed replays exactly.
func TestSimulatorDeterministic(t *testing.T) {
	skipWhenReplaying(t)
	for _, seed := range []uint64{3, 17, 4242} {
		var a, b bytes.Buffer
		ca, cb := SimConfigFor(seed), SimConfigFor(seed)
		ca.Trace, cb.Trace = &a, &b
		ra, ea := Simulate(ca)
		rb, eb := Simulate(cb)
		if ea != nil || eb != nil {
			t.Fatalf("seed %d: %v / %v", seed, ea, eb)
		}
		if a.String() != b.String() || ra.Steps != rb.Steps || ra.Sent != rb.Sent {
			t.Fatalf("seed %d does not replay: %d vs %d steps", seed, ra.Steps, rb.Steps)
		}
		if a.Len() == 0 {
			t.Fatalf("seed %d: empty trace", seed)
		}
	}
}

// findViolation runs schedules until one fails and returns its violation.
func findViolation(t *testing.T, seeds int, tweak func(*SimConfig)) *Violation {
	t.Helper()
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		cfg := SimConfigFor(seed)
		tweak(&cfg)
		_, err := Simulate(cfg)
		if err == nil {
			continue
		}
		var v *Violation
		if !errors.As(err, &v) || !errors.Is(err, ErrViolation) {
			t.Fatalf("seed %d: error %v is not a *Violation", seed, err)
		}
		return v
	}
	return nil
}

// TestSimulatorCatchesBugs breaks the protocol or the daemon on purpose and
// checks that the simulator notices, with the right complaint.
func TestSimulatorCatchesBugs(t *testing.T) {
	skipWhenReplaying(t)
	tests := []struct {
		name  string
		tweak func(*SimConfig)
		kinds []string // any of these
	}{
		{
			name:  "home skips invalidations",
			tweak: func(c *SimConfig) { c.bugs.skipInval = true },
			kinds: []string{ViolReaderBeside, ViolStaleCopy, ViolStaleRead},
		},
		{
			name:  "owner sends without write-protecting",
			tweak: func(c *SimConfig) { c.bugs.noProtect = true },
			kinds: []string{ViolDaemonContract},
		},
		{
			name: "daemon ignores invalidations",
			tweak: func(c *SimConfig) {
				c.mutate = func(n NodeID, o *Output) bool { return o.Act == nil || o.Act.Kind != ActDrop }
			},
			kinds: []string{ViolInvalidData},
		},
		{
			name: "corrupt page data in flight",
			tweak: func(c *SimConfig) {
				c.mutate = func(n NodeID, o *Output) bool {
					if a := o.Act; a != nil && a.Kind == ActInstall && !a.Zero {
						bad := bytes.Clone(a.Data)
						bad[0] ^= 1
						a.Data = bad
					}
					return true
				}
			},
			kinds: []string{ViolStaleCopy},
		},
		{
			name: "installs claim the wrong version",
			tweak: func(c *SimConfig) {
				c.mutate = func(n NodeID, o *Output) bool {
					if a := o.Act; a != nil && a.Kind == ActInstall && !a.Writable {
						a.Version++
					}
					return true
				}
			},
			kinds: []string{ViolVersion},
		},
		{
			name: "writable copies forget the page's history",
			tweak: func(c *SimConfig) {
				c.mutate = func(n NodeID, o *Output) bool {
					if a := o.Act; a != nil && a.Writable {
						a.Clock = make([]uint64, len(a.Clock))
					}
					return true
				}
			},
			kinds: []string{ViolClock},
		},
		{
			name: "forwards and invalidations ignore the minimum hold",
			tweak: func(c *SimConfig) {
				c.Hold = true
				c.bugs.noHold = true
			},
			kinds: []string{ViolHold},
		},
		{
			name: "the daemon ends holds at once, before woken threads ran",
			tweak: func(c *SimConfig) {
				c.Hold = true
				c.earlyHold = true
			},
			kinds: []string{ViolProgress},
		},
		{
			name: "the daemon never ends a hold",
			tweak: func(c *SimConfig) {
				c.Hold, c.SettleSteps = true, 5000
				c.mutate = func(n NodeID, o *Output) bool { return o.Act == nil || o.Act.Kind != ActHold }
			},
			kinds: []string{ViolLiveness},
		},
		{
			name: "the home pipelines behind a read and forgets the reader",
			tweak: func(c *SimConfig) {
				c.Hold, c.NoPipeline = true, false
				c.bugs.pipeRead = true
			},
			kinds: []string{ViolReaderBeside, ViolStaleCopy, ViolStaleRead},
		},
		{
			name: "requests are never retransmitted",
			tweak: func(c *SimConfig) {
				c.SettleSteps = 5000
				c.bugs.noRetry = true
			},
			kinds: []string{ViolLiveness},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := findViolation(t, 2000, tt.tweak)
			if v == nil {
				t.Fatalf("2000 schedules passed with the bug in place")
			}
			ok := false
			for _, k := range tt.kinds {
				ok = ok || v.Kind == k
			}
			if !ok {
				t.Fatalf("caught %q, want one of %q: %v", v.Kind, tt.kinds, v)
			}
			t.Logf("caught: %v", v)
		})
	}
}

// TestSimulatorShapes runs cluster shapes the seeded set does not draw: a
// single node, many threads on one page, a wide cluster, a network that
// loses most messages, and very eager retransmission.
func TestSimulatorShapes(t *testing.T) {
	skipWhenReplaying(t)
	tests := []struct {
		name string
		edit func(c *SimConfig)
	}{
		{"one node", func(c *SimConfig) { c.Nodes, c.Threads = 1, 3 }},
		{"many threads, one page", func(c *SimConfig) { c.Pages, c.Threads, c.Ops = 1, 4, 8 }},
		{"wide cluster", func(c *SimConfig) { c.Nodes, c.Pages, c.Threads, c.Ops = 12, 6, 1, 4 }},
		{"lossy network", func(c *SimConfig) { c.Loss, c.Dup, c.MaxDelay = 0.7, 0.3, 5 }},
		{"eager retries, long delays", func(c *SimConfig) { c.RetryTicks, c.MaxDelay = 1, 60 }},
		{"read-mostly", func(c *SimConfig) { c.WriteRatio = 0.02 }},
		{"write-only", func(c *SimConfig) { c.WriteRatio = 1 }},
		{"the protocol without hold or pipelining", func(c *SimConfig) { c.Hold = false }},
		{"holds without pipelining", func(c *SimConfig) { c.Hold, c.NoPipeline = true, true }},
		{"contended page, long holds", func(c *SimConfig) {
			c.Pages, c.WriteRatio, c.Hold, c.NoPipeline, c.HoldSteps = 1, 0.9, true, false, 60
		}},
	}
	seeds := 300
	if testing.Short() || raceEnabled {
		seeds = 60
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for seed := uint64(1); seed <= uint64(seeds); seed++ {
				cfg := SimConfigFor(seed)
				tt.edit(&cfg)
				if _, err := Simulate(cfg); err != nil {
					t.Fatalf("%v\nlast steps:\n%s\nreplay with: go test ./coherence -run 'TestSimulatorShapes/%s' -v",
						err, traceTail(cfg, 60), strings.ReplaceAll(tt.name, " ", "_"))
				}
			}
		})
	}
}
