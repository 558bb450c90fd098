package main

import (
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/internal/uffdtest"
)

// The test binary is also the node daemon, the userfaultfd child and the
// worker: the suite re-executes it with the environment of that role.
func TestMain(m *testing.M) {
	childMain()
	os.Exit(m.Run())
}

// testConfig is the quickest form of the suite: every part, small counts.
func testConfig(out string) Config {
	c := QuickConfig()
	c.Out = out
	c.Sizes = []int{2, 4}
	c.InvalidateNodes = 4
	c.RegionSize = 4 << 20
	c.LimitCount = 300
	c.ReadPages, c.ReadRounds = 60, 2
	c.OwnerPages = 60
	c.InvPages, c.InvRounds = 30, 2
	c.ScanPages, c.ScanRounds = 128, 2
	c.ScanDepths = []int{1, 4}
	c.Turns, c.HammerTime = 50, 100*time.Millisecond
	c.SizePages, c.SizeRounds = 40, 2
	c.SizeOwnerPages = 40
	c.ContentPages, c.ContentRounds = 30, 2
	c.LossPages, c.LossRounds = 40, 2
	c.Losses = []float64{0.01, 0.05}
	c.LockPairs, c.LockHandoffs, c.MutexOps = 30, 30, 20000
	c.RunTimeout = 40 * time.Second
	return c
}

// requiredFigures is every figure the suite must produce with testConfig.
var requiredFigures = []string{
	"limit/chain",
	"limit/uffd_local_fault",
	"limit/udp_rtt",
	"limit/kcp_rtt",
	"limit/udp_rtt_2proc",
	"limit/kcp_rtt_2proc",
	"read_fault",
	"read_fault/home=reader",
	"read_fault/home=writer",
	"write_fault_owner",
	"write_fault_invalidate/nodes=4/k=1",
	"write_fault_invalidate/nodes=4/k=2",
	"write_fault_invalidate/nodes=4/k=3",
	"scan/depth=1",
	"scan/depth=4",
	"pingpong/turns/handover",
	"pingpong/turns/write",
	"pingpong/hammer",
	"size/nodes=2/read_fault",
	"size/nodes=2/write_fault_owner",
	"size/nodes=4/read_fault",
	"size/nodes=4/read_fault/home=other",
	"size/nodes=4/write_fault_owner",
	"content/zero/compress",
	"content/text/compress",
	"content/random/compress",
	"content/zero/nocompress",
	"content/text/nocompress",
	"content/random/nocompress",
	"loss/1%/nofec",
	"loss/1%/fec10+3",
	"loss/5%/nofec",
	"loss/5%/fec10+3",
	"locks/floor/sync_mutex_uncontended",
	"locks/floor/sync_mutex_handoff",
	"locks/uncontended/home=local",
	"locks/uncontended/home=remote",
	"locks/reacquire",
	"locks/handoff",
	"locks/handoff/held",
	"heap/floor/go_new",
	"heap/new",
	"heap/free",
	"falsesharing/floor/padded",
	"falsesharing/packed",
	"falsesharing/rc",
	"rc/release/dirty=1",
	"rc/acquire/notices=1",
	"stencil/nodes=1",
	"stencil/nodes=2",
	"stencil/noprefetch/nodes=2",
	"stencil/rc/nodes=1",
	"stencil/rc/nodes=2",
}

// costFigures are the figures that must carry what a fault costs.
var costFigures = []string{"read_fault", "write_fault_owner", "scan/depth=1", "scan/depth=4"}

var requiredPlots = []string{
	"latency_cdf.png", "latency_box.png", "size.png", "invalidate.png", "scan.png", "content.png", "loss.png",
}

func TestSuiteQuick(t *testing.T) {
	uffdtest.Require(t)
	if testing.Short() {
		t.Skip("starts many local clusters; skipped with -short")
	}
	dir := t.TempDir()
	cfg := testConfig(dir)
	seen := false
	cfg.onCluster = func(c *cluster.Cluster) {
		t.Cleanup(func() { c.Stop() })
		if !seen {
			// The check for leftover processes below does see children.
			seen = true
			assert.GreaterOrEqual(t, len(childrenOf(t, os.Getpid())), len(c.Daemons), "the daemons are not seen as children")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	require.NoError(t, err)
	require.NotNil(t, res)

	// Every process the suite started (daemons, workers, the userfaultfd
	// child) has been stopped and reaped.
	assert.Empty(t, childrenOf(t, os.Getpid()), "processes left running by the suite")

	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	require.NoError(t, err)
	var got struct {
		Machine map[string]any `json:"machine"`
		Limits  struct {
			LimitNs      float64            `json:"limit_ns"`
			Measurements []LimitMeasurement `json:"measurements"`
		} `json:"limits"`
		Aim     *Aim     `json:"aim"`
		Figures []Figure `json:"figures"`
		Plots   []string `json:"plots"`
		Errors  []string `json:"errors"`
	}
	require.NoError(t, json.Unmarshal(js, &got))
	assert.Empty(t, got.Errors)
	for _, k := range []string{"kernel", "cpu", "cores", "memory_mib", "go_version", "date"} {
		assert.NotEmpty(t, got.Machine[k], "machine field %q", k)
	}
	assert.Greater(t, got.Limits.LimitNs, 0.0)
	// Each limit was measured at the start and at the end of the run.
	require.Len(t, got.Limits.Measurements, len(limitKinds))
	for _, m := range got.Limits.Measurements {
		require.Len(t, m.Runs, 2, m.Limit)
		assert.Equal(t, "start", m.Runs[0].When)
		assert.Equal(t, "end", m.Runs[1].When)
		assert.Equal(t, cfg.LimitCount, m.Runs[1].Count, m.Limit)
	}
	require.NotNil(t, got.Aim, "the aim (read fault against the limit) is missing")
	assert.Greater(t, got.Aim.Ratio, 0.0)

	figs := map[string]Figure{}
	for _, f := range got.Figures {
		assert.NotContains(t, figs, f.Key, "figure key %q appears twice", f.Key)
		figs[f.Key] = f
	}
	for _, k := range requiredFigures {
		f, ok := figs[k]
		if !assert.True(t, ok, "figure %q missing from results.json", k) {
			continue
		}
		assert.Positive(t, f.Latency.Count, "%s: count", k)
		assert.Positive(t, f.Latency.Median, "%s: median", k)
		assert.GreaterOrEqual(t, f.Latency.P99, f.Latency.Median, "%s: p99 below the median", k)
		switch {
		case strings.HasPrefix(k, "limit/"), strings.Contains(k, "/floor/"):
			// The yardsticks themselves.
		case f.Compare == cmpFloor:
			assert.Positive(t, f.FloorRatio, "%s: no ratio to its floor", k)
			assert.Positive(t, f.FloorNs, "%s: no floor beside it", k)
			assert.Zero(t, f.Ratio, "%s: compared with its floor, not the limit", k)
		default:
			assert.Positive(t, f.Ratio, "%s: no ratio to the limit", k)
			assert.Positive(t, f.LimitNs, "%s: no limit beside it", k)
		}
	}
	scan := figs["scan/depth=1"]
	assert.Positive(t, scan.PagesPerSec)
	assert.Positive(t, scan.MBPerSec)
	assert.Positive(t, figs["pingpong/turns/handover"].MigrationsPerSec)
	assert.Positive(t, figs["pingpong/hammer"].MigrationsPerSec)
	assert.InDelta(t, 8, figs["rc/diff_bytes"].Bytes, 0.01, "a one-word release diffs 8 bytes")
	for _, k := range []string{"locks/uncontended/home=local", "locks/uncontended/home=remote", "locks/reacquire", "locks/handoff"} {
		assert.Equal(t, cmpFloor, figs[k].Compare, k)
	}
	assert.Equal(t, "locks/floor/sync_mutex_uncontended", figs["locks/reacquire"].Floor)
	assert.Equal(t, cfg.LockPairs, figs["locks/reacquire"].Latency.Count)
	// The fault figures are compared with the chain.
	chain := figs["limit/chain"]
	assert.Equal(t, chain.Latency.Median, got.Limits.LimitNs, "the limit is the chain's median")
	assert.Equal(t, chain.Latency.Median, figs["read_fault"].LimitNs)
	for _, k := range costFigures {
		f := figs[k]
		assert.Positive(t, f.SwitchesPerFault, "%s: switches per fault", k)
		assert.Positive(t, f.DaemonCPUPerFault, "%s: daemon CPU per fault", k)
		assert.Positive(t, f.DatagramsPerFault, "%s: datagrams per fault", k)
		if assert.NotNil(t, f.Cost, "%s: cost", k) {
			assert.Positive(t, f.Cost.Faults, "%s: faults in the windows", k)
			assert.Equal(t, f.Latency.Count, f.Cost.Ops, "%s: every timed operation is in a window", k)
		}
	}
	// The raw keys of results.json, as other tools read them.
	var raw struct {
		Figures []map[string]any `json:"figures"`
	}
	require.NoError(t, json.Unmarshal(js, &raw))
	for _, f := range raw.Figures {
		if slices.Contains(costFigures, f["key"].(string)) {
			for _, k := range []string{"switches_per_fault", "daemon_cpu_ns_per_fault", "datagrams_per_fault"} {
				assert.Contains(t, f, k, "%s", f["key"])
			}
		}
	}
	assert.Equal(t, "locks/floor/sync_mutex_uncontended", figs["locks/uncontended/home=remote"].Floor)
	assert.Equal(t, "locks/floor/sync_mutex_handoff", figs["locks/handoff"].Floor)
	// The held hand-off is compared with the fault chain and counts its
	// hand-offs (how many depends on timing: at least one).
	held := figs["locks/handoff/held"]
	assert.Equal(t, "limit/chain", held.Floor)
	assert.Positive(t, held.Params["handoffs"])
	// The stencil passed its check on every node, and each cluster size is
	// compared with the one-node run.
	for _, k := range []string{"stencil/nodes=1", "stencil/nodes=2", "stencil/noprefetch/nodes=2"} {
		assert.Equal(t, "passed", figs[k].Params["check"], k)
		assert.Positive(t, figs[k].Params["ms_per_iter"], k)
		assert.Equal(t, "stencil/nodes=1", figs[k].Floor, k)
	}
	// Every daemon of the memory part was measured, beside the aim (a
	// size, not a latency: not among requiredFigures).
	require.Contains(t, figs, "memory/rss_beyond_memfd")
	mem := figs["memory/rss_beyond_memfd"].Params
	for i := 0; i < cfg.MemNodes; i++ {
		assert.Positive(t, mem["node_"+strconv.Itoa(i)+"_rss_anon_bytes"], "node %d", i)
	}
	assert.EqualValues(t, 32<<20+cfg.MemRegion*3/100, mem["aim_bytes"])
	assert.Equal(t, cfg.LockPairs, figs["locks/uncontended/home=local"].Latency.Count)
	assert.Positive(t, figs["locks/handoff"].AcquisitionsPerSec)
	assert.Positive(t, figs["locks/floor/sync_mutex_handoff"].AcquisitionsPerSec)
	assert.Greater(t, figs["content/random/compress"].BytesPerPage, figs["content/zero/compress"].BytesPerPage,
		"a random page must cost more bytes on the wire than a zero page")
	assert.Greater(t, figs["content/text/nocompress"].BytesPerPage, figs["content/text/compress"].BytesPerPage,
		"compression must shrink text pages")

	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| figure |")
	assert.Contains(t, string(md), "Read-ahead depth d:")
	assert.Contains(t, string(md), "## Distributed locks")
	assert.Contains(t, string(md), "## Jacobi heat stencil")
	assert.Contains(t, string(md), "| sync.Mutex floor | × floor |")
	assert.Contains(t, string(md), "the fault chain (limit/chain)")
	assert.Contains(t, string(md), "per fault: ")

	assert.ElementsMatch(t, requiredPlots, got.Plots)
	for _, name := range requiredPlots {
		f, err := os.Open(filepath.Join(dir, name))
		if !assert.NoError(t, err) {
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if !assert.NoError(t, err, "%s is not a valid PNG", name) {
			continue
		}
		b := img.Bounds()
		assert.True(t, b.Dx() >= 400 && b.Dx() <= 4000 && b.Dy() >= 300 && b.Dy() <= 4000,
			"%s is %dx%d pixels", name, b.Dx(), b.Dy())
	}
}

// childrenOf lists the live processes whose parent is pid.
func childrenOf(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, s[:i+1])
		}
	}
	return out
}

func TestSummarize(t *testing.T) {
	seq := func(n int) []int64 {
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(n - i) // descending: summarize must sort
		}
		return s
	}
	for _, tc := range []struct {
		name              string
		in                []int64
		count             int
		median, p99, mean float64
		min, max          float64
	}{
		{"empty", nil, 0, 0, 0, 0, 0, 0},
		{"one", []int64{7}, 1, 7, 7, 7, 7, 7},
		{"two", []int64{10, 20}, 2, 15, 20, 15, 10, 20},
		{"odd", []int64{5, 1, 3}, 3, 3, 5, 3, 1, 5},
		{"1..100", seq(100), 100, 50.5, 99, 50.5, 1, 100},
		{"1..1000", seq(1000), 1000, 500.5, 990, 500.5, 1, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			st := summarize(tc.in)
			assert.Equal(t, in, tc.in, "summarize changed its input")
			assert.Equal(t, tc.count, st.Count)
			assert.Equal(t, tc.median, st.Median)
			assert.Equal(t, tc.p99, st.P99)
			assert.InDelta(t, tc.mean, st.Mean, 1e-9)
			assert.Equal(t, tc.min, st.Min)
			assert.Equal(t, tc.max, st.Max)
		})
	}
}

func TestHistMatchesExactQuantiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		gen  func(r *rand.Rand) int64
	}{
		{"small exact", func(r *rand.Rand) int64 { return r.Int64N(64) }},
		{"local and remote", func(r *rand.Rand) int64 {
			if r.IntN(100) == 0 {
				return 50_000 + r.Int64N(200_000)
			}
			return 30 + r.Int64N(40)
		}},
		{"log-uniform", func(r *rand.Rand) int64 { return int64(math.Exp(r.Float64() * 25)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			var samples []int64
			a, b := newHist(), newHist()
			for i := range 20000 {
				v := tc.gen(r)
				samples = append(samples, v)
				if i%2 == 0 {
					a.add(v)
				} else {
					b.add(v)
				}
			}
			require.NoError(t, a.merge(b))
			exact, approx := summarize(samples), a.stat()
			assert.Equal(t, exact.Count, approx.Count)
			assert.Equal(t, exact.Min, approx.Min)
			assert.Equal(t, exact.Max, approx.Max)
			assert.InDelta(t, exact.Mean, approx.Mean, 1e-6*exact.Mean+1e-9)
			for _, q := range []struct {
				name    string
				want, g float64
			}{{"median", exact.Median, approx.Median}, {"p99", exact.P99, approx.P99}, {"p10", exact.P10, approx.P10}} {
				// One bucket is 1/32 of its power of two wide.
				assert.InDelta(t, q.want, q.g, q.want/32+1, "%s", q.name)
			}
		})
	}
	assert.Error(t, newHist().merge(&hist{Counts: make([]uint64, 3), N: 1}))
}

func TestHistBucketsAreContiguous(t *testing.T) {
	prev := histBucket(0)
	for v := int64(1); v < 1<<22; v += 1 + v/97 {
		b := histBucket(v)
		require.GreaterOrEqual(t, b, prev, "bucket of %d went backwards", v)
		require.LessOrEqual(t, b-prev, 1+int(v/97), "bucket of %d skipped", v)
		mid := histValue(b)
		require.InDelta(t, float64(v), mid, float64(v)/32+1, "value %d in bucket %d (middle %v)", v, b, mid)
		prev = b
	}
}

func TestSelectParts(t *testing.T) {
	for _, tc := range []struct {
		run  string
		want []string
		err  string
	}{
		{"", []string{"limits", "readfault", "ownerwrite", "invalidate", "scan", "pingpong", "size", "content", "loss", "locks", "heap", "falsesharing", "rc", "memory", "stencil"}, ""},
		{"locks", []string{"limits", "locks"}, ""},
		{"readfault", []string{"limits", "readfault"}, ""},
		{"scan, readfault", []string{"limits", "readfault", "scan"}, ""},
		{"limits", []string{"limits"}, ""},
		{"^(size|loss)$", []string{"limits", "size", "loss"}, ""},
		{"fault", []string{"limits", "readfault"}, ""},
		{"nothing", nil, "matches no part"},
		{"read(", nil, "neither a part nor a regexp"},
	} {
		t.Run(tc.run, func(t *testing.T) {
			ps, err := selectParts(tc.run)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), "readfault", "the error should list the parts")
				return
			}
			require.NoError(t, err)
			var names []string
			for _, p := range ps {
				names = append(names, p.name)
			}
			assert.Equal(t, tc.want, names)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
		is     error
	}{
		{"full is valid", func(*Config) {}, "", nil},
		{"read-ahead", func(c *Config) { c.ScanDepths = []int{1, 0} }, "scan depth 0", ErrReadAhead},
		{"one-node cluster", func(c *Config) { c.Sizes = []int{1, 2} }, "cluster size 1", nil},
		{"no sizes", func(c *Config) { c.Sizes = nil }, "no cluster sizes", nil},
		{"content", func(c *Config) { c.Content = "video" }, `content "video"`, nil},
		{"loss", func(c *Config) { c.Losses = []float64{0.9} }, "loss 0.900", nil},
		{"fec", func(c *Config) { c.FECParity = 0 }, "FEC 10/0", nil},
		{"too many samples", func(c *Config) { c.ReadPages, c.ReadRounds = 100000, 10 }, "samples per worker", nil},
		{"zero count", func(c *Config) { c.Turns = 0 }, "turns = 0", nil},
		{"hammer time", func(c *Config) { c.HammerTime = 0 }, "hammer time", nil},
		{"lock pairs", func(c *Config) { c.LockPairs = 0 }, "lock pairs = 0", nil},
		{"too many hand-offs", func(c *Config) { c.LockHandoffs = 100000 }, "lock: 100000 samples per worker", nil},
		{"mutex ops", func(c *Config) { c.MutexOps = 10 }, "sync.Mutex ops 10", nil},
		{"region", func(c *Config) { c.RegionSize = 1000 }, "region size 1000", nil},
		{"region too small", func(c *Config) { c.RegionSize = 1 << 20 }, "readfault uses pages up to 5015, the region has 256", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := FullConfig()
			tc.change(&c)
			err := c.validate()
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			if tc.is != nil {
				assert.True(t, errors.Is(err, tc.is), "errors.Is(%v, %v)", err, tc.is)
			}
		})
	}
	q := QuickConfig()
	assert.NoError(t, q.validate())
	assert.NoError(t, func() error { c := testConfig(t.TempDir()); return c.validate() }())
}

func TestLineCollector(t *testing.T) {
	tail := &tailBuffer{max: 1 << 10}
	l := &lineCollector{tail: tail}
	// Lines arrive split across writes and several to a write.
	for _, chunk := range []string{"[0] hello\n[1] RES", "ULT {\"node\":1}\n[0] RESULT {\"node\":0}\n", "[1] bye\n"} {
		n, err := l.Write([]byte(chunk))
		require.NoError(t, err)
		assert.Equal(t, len(chunk), n)
	}
	assert.Equal(t, []string{`{"node":1}`, `{"node":0}`}, l.results())
	assert.Contains(t, tail.String(), "[0] hello\n[1] bye\n")
	assert.NotContains(t, tail.String(), "RESULT")
}

func TestTailBufferKeepsTheEnd(t *testing.T) {
	tb := &tailBuffer{max: 10}
	assert.Contains(t, tb.String(), "no output")
	tb.Write([]byte("0123456789"))
	tb.Write([]byte("abcdef"))
	assert.True(t, strings.HasSuffix(tb.String(), "6789abcdef"), tb.String())
}

func TestFmtNs(t *testing.T) {
	for _, tc := range []struct {
		ns   float64
		want string
	}{
		{0, "—"}, {47, "47 ns"}, {1500, "1.5 µs"}, {64213, "64.2 µs"}, {2.5e6, "2.50 ms"}, {3e9, "3.00 s"},
	} {
		assert.Equal(t, tc.want, fmtNs(tc.ns), "fmtNs(%v)", tc.ns)
	}
}
