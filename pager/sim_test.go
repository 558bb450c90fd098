package pager

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/internal/seedrun"
)

// The coherence simulator with this package's Pager in every node's
// daemon: the faults, installs, protections, wake-ups, holds, read-ahead
// and page messages of the schedules are the node daemon's own.

var (
	seedFlag      = flag.Uint64("seed", 0, "replay one schedule of TestSimulatorThroughPager with this seed (0: run the whole set)")
	schedulesFlag = flag.Int("schedules", 10000, "number of seeded schedules TestSimulatorThroughPager runs (-short or -race: a fifth)")
)

// simDaemon adapts a Pager to the simulator.
type simDaemon struct {
	g     *Pager
	progs []*Prog
	batch []Fault
}

type sendFunc func(*coherence.Message)

func (f sendFunc) Send(m *coherence.Message) { f(m) }

// holdFactor is MaxHold over MinHold in the simulations, as in the
// daemon's defaults (20 µs and 200 µs).
const holdFactor = 10

// pagerDaemon returns the simulator's daemon factory; tweak, when set,
// changes the Pager's config or the programs it sees (to make it
// misbehave).
func pagerDaemon(tweak func(*Config, []Program)) func(coherence.SimWorld) (coherence.SimDaemon, error) {
	return func(w coherence.SimWorld) (coherence.SimDaemon, error) {
		cfg := Config{
			ID: w.Node, Engine: w.Engine, Pages: w.Pages, PageSize: w.PageSize,
			Store: w.Store, Sender: sendFunc(w.Send),
			MinHold: w.MinHold, MaxHold: holdFactor * w.MinHold,
			ReadAhead: 7, TwinBudget: 2,
			Analyzer: analyzer.New(w.PageSize),
			Now:      w.Now, Fail: w.Fail,
		}
		progs := make([]Program, len(w.Programs))
		for i, p := range w.Programs {
			progs[i] = p
		}
		if tweak != nil {
			tweak(&cfg, progs)
		}
		g, err := New(cfg)
		if err != nil {
			return nil, err
		}
		d := &simDaemon{g: g}
		for i, p := range progs {
			d.progs = append(d.progs, g.Attach(i+1, p))
		}
		return d, nil
	}
}

func (d *simDaemon) Faults(fs []coherence.SimFault) {
	d.batch = d.batch[:0]
	for _, f := range fs {
		d.batch = append(d.batch, Fault{Prog: d.progs[f.Prog], Page: f.Page, Write: f.Write, WP: f.WP, At: f.At})
	}
	ahead := d.g.Counters().ReadAheads
	d.g.Faults(d.batch)
	simReadAheads.Add(int64(d.g.Counters().ReadAheads - ahead))
}

// simReadAheads counts the pages the pagers of the simulations asked for
// ahead of sequential read faults.
var simReadAheads atomic.Int64

func (d *simDaemon) Step(m *coherence.Message) error { return d.g.Step(m) }

// simPrefetched counts the pages the pagers of the simulations asked
// their engines for on a prefetch hint.
var simPrefetched atomic.Int64

func (d *simDaemon) Prefetch(p coherence.PageID, write bool) {
	simPrefetched.Add(int64(d.g.Prefetch(p, p+1, write)))
}
func (d *simDaemon) Tick(now time.Time)                 { d.g.Tick(now) }
func (d *simDaemon) ServeHolds(now time.Time) time.Time { return d.g.ServeHolds(now) }
func (d *simDaemon) NextHold() time.Time                { return d.g.NextHold() }
func simConfig(seed uint64) coherence.SimConfig {
	cfg := coherence.SimConfigFor(seed)
	cfg.Daemon = pagerDaemon(nil)
	return cfg
}

func traceTail(cfg coherence.SimConfig, lines int) string {
	return seedrun.TraceTail(func(w io.Writer) { cfg.Trace = w; coherence.Simulate(cfg) }, lines)
}

func replayHint(seed uint64) string {
	return fmt.Sprintf("replay with: go test ./pager -run TestSimulatorThroughPager -seed=%d -v", seed)
}

// TestSimulatorThroughPager runs the coherence simulator's seeded
// schedules (loss, duplication, reordering, delay, one or two programs per
// node) with the Pager as every node's daemon, checking the invariants
// after every step and every operation the daemon makes.
func TestSimulatorThroughPager(t *testing.T) {
	if *seedFlag != 0 {
		cfg := simConfig(*seedFlag)
		var buf bytes.Buffer
		if testing.Verbose() {
			cfg.Trace = &buf
		}
		res, err := coherence.Simulate(cfg)
		if buf.Len() > 0 {
			t.Logf("trace of seed %d:\n%s", *seedFlag, buf.String())
		}
		t.Logf("config %+v", cfg)
		t.Logf("result: %+v", res)
		if err != nil {
			t.Fatalf("%v\n%s", err, replayHint(*seedFlag))
		}
		return
	}
	n := *schedulesFlag
	prefetched := simPrefetched.Load()
	if testing.Short() || raceEnabled {
		n /= 5
	}
	var (
		total coherence.SimResult
		eng   coherence.Stats
	)
	firstSeed, firstErr := seedrun.Run(1, n, func(seed uint64) (coherence.SimResult, error) {
		return coherence.Simulate(simConfig(seed))
	}, func(res coherence.SimResult) {
		total.Add(res)
		for _, st := range res.Stats {
			eng.Holds += st.Holds
			eng.Pipelined += st.Pipelined
			eng.MigrationsIn += st.MigrationsIn
			eng.Upgrades += st.Upgrades
		}
	})
	if firstErr != nil {
		t.Fatalf("%v\nlast steps of the schedule:\n%s\n%s", firstErr, traceTail(simConfig(firstSeed), 80), replayHint(firstSeed))
	}
	t.Logf("%d schedules through the pager: %d steps, %d reads, %d writes, %d faults, %d messages (%d lost, %d duplicated), %d prefetch hints (%d pages asked for); engines: %d holds, %d pipelined, %d migrations, %d upgrades",
		n, total.Steps, total.Reads, total.Writes, total.Faults, total.Sent, total.Lost, total.Duplicated,
		total.Prefetches, simPrefetched.Load()-prefetched, eng.Holds, eng.Pipelined, eng.MigrationsIn, eng.Upgrades)
	if total.Reads == 0 || total.Writes == 0 || total.Lost == 0 || total.Duplicated == 0 || eng.Holds == 0 || eng.MigrationsIn == 0 || eng.Upgrades == 0 || simPrefetched.Load() == prefetched {
		t.Fatalf("the schedules exercised too little: %+v, engines %+v", total, eng)
	}
}

// A program whose write protection cannot be set.
type noProtect struct{ Program }

func (p noProtect) Protect(q coherence.PageID, count int, protect, wake bool) error {
	if protect {
		return nil
	}
	return p.Program.Protect(q, count, protect, wake)
}

// A program whose threads are never woken but by Copy.
type noWake struct{ Program }

func (noWake) Wake(coherence.PageID) error { return nil }

// TestSimulatorThroughPagerCatchesBugs makes the daemon misbehave in ways
// the protocol cannot survive and checks that the simulator says so.
func TestSimulatorThroughPagerCatchesBugs(t *testing.T) {
	if *seedFlag != 0 {
		t.Skip("-seed replays one schedule of TestSimulatorThroughPager only")
	}
	cases := []struct {
		name  string
		tweak func(*Config, []Program)
		want  []string // any of these kinds
	}{
		{"holds end at once", func(c *Config, _ []Program) { c.MinHold, c.MaxHold = 0, 0 },
			[]string{coherence.ViolHold}},
		{"write protection ignored", func(_ *Config, ps []Program) {
			for i := range ps {
				ps[i] = noProtect{ps[i]}
			}
		}, []string{coherence.ViolTwoWriters, coherence.ViolReaderBeside, coherence.ViolStaleCopy, coherence.ViolStaleRead, coherence.ViolStateMismatch}},
		{"wake-ups lost", func(_ *Config, ps []Program) {
			for i := range ps {
				ps[i] = noWake{ps[i]}
			}
		}, []string{coherence.ViolLiveness}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 3000; seed++ {
				cfg := coherence.SimConfigFor(seed)
				cfg.Daemon = pagerDaemon(tc.tweak)
				cfg.SettleSteps = 20000
				_, err := coherence.Simulate(cfg)
				if err == nil {
					continue
				}
				var v *coherence.Violation
				if !errors.As(err, &v) {
					t.Fatalf("seed %d: %v is not a violation", seed, err)
				}
				for _, k := range tc.want {
					if v.Kind == k {
						t.Logf("found at seed %d: %v", seed, err)
						return
					}
				}
				t.Fatalf("seed %d: found %q, want one of %q: %v", seed, v.Kind, tc.want, err)
			}
			t.Fatalf("no schedule of 3000 found the bug")
		})
	}
}

// TestSimulatorReadAhead runs schedules whose threads mostly read pages
// in order, over more pages than the others, so that the pagers read
// ahead (read copies nobody faulted on yet, which writers then take back)
// while the invariants are checked.
func TestSimulatorReadAhead(t *testing.T) {
	n := *schedulesFlag / 50
	if testing.Short() || raceEnabled {
		n = 20
	}
	first := uint64(1)
	if *seedFlag != 0 {
		first, n = *seedFlag, 1
	}
	ahead := simReadAheads.Load()
	config := func(seed uint64) coherence.SimConfig {
		cfg := simConfig(seed)
		cfg.Pages = 8 + int(seed%17)
		cfg.Ops = 20 + int(seed%20)
		cfg.Sequential = 0.9
		cfg.WriteRatio = []float64{0.05, 0.2, 0.5}[seed%3]
		return cfg
	}
	for seed := first; seed < first+uint64(n); seed++ {
		if _, err := coherence.Simulate(config(seed)); err != nil {
			t.Fatalf("%v\nlast steps of the schedule:\n%s\nreplay with: go test ./pager -run TestSimulatorReadAhead -seed=%d -v",
				err, traceTail(config(seed), 80), seed)
		}
	}
	got := simReadAheads.Load() - ahead
	t.Logf("%d schedules of mostly sequential reads: %d pages asked for ahead of a fault", n, got)
	if got == 0 {
		t.Fatal("no page was read ahead: the schedules did not exercise read-ahead")
	}
}
