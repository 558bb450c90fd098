package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/node"
)

// Config is a run of the suite: what to measure and how much.
type Config struct {
	Out   string // directory for results.md, results.json and the plots
	Quick bool   // recorded in the results
	Run   string // parts: comma-separated names or a regexp; empty means all

	Sizes           []int  // cluster sizes for the size part
	InvalidateNodes int    // cluster size for the invalidate part (k = 1 .. n-1)
	RegionSize      uint64 // the shared region of every cluster
	Content         string // page content of the headline runs (read, scan, size, loss)
	Seed            uint64

	LimitCount int // faults and round trips for each limit

	ReadPages, ReadRounds       int // read fault
	OwnerPages                  int // write fault taking ownership
	InvPages, InvRounds         int // write fault invalidating k readers
	ScanPages, ScanRounds       int // sequential scan
	ScanDepths                  []int
	Turns                       int           // ping-pong: turns per node
	HammerTime                  time.Duration // ping-pong: how long both nodes hammer
	SizePages, SizeRounds       int           // read fault per cluster size
	SizeOwnerPages              int           // ownership write fault per cluster size
	ContentPages, ContentRounds int           // read fault per content and compression
	LossPages, LossRounds       int           // read fault under loss
	Losses                      []float64
	FECData, FECParity          int
	LockPairs                   int // locks: uncontended Lock+Unlock pairs per home
	LockHandoffs                int // locks: acquisitions per node under contention
	MutexOps                    int // locks: sync.Mutex pairs for the floor

	// RunTimeout bounds each run of the workers.
	RunTimeout time.Duration
	// MemRegion and MemNodes size the memory part's cluster.
	MemRegion uint64
	MemNodes  int
	// Progress receives a progress line (rewritten with \r); nil for none.
	Progress io.Writer
	// Log, when set, receives the daemons' logs and the workers' output as
	// they come; otherwise they are kept and shown only when a run fails.
	Log io.Writer
	// Executable is the binary that serves as daemon and worker (default:
	// this executable, whose main must call childMain first).
	Executable string

	// onCluster is called with every cluster the suite starts (tests use it
	// to stop them in t.Cleanup whatever happens).
	onCluster func(*cluster.Cluster)
}

// FullConfig is the default run: on a 2-core machine it takes a few
// minutes.
func FullConfig() Config {
	return Config{
		Out:             "bench/results",
		Sizes:           []int{2, 4, 8},
		InvalidateNodes: 8,
		RegionSize:      64 << 20,
		Content:         contentRandom,
		Seed:            1,
		LimitCount:      50000,
		ReadPages:       5000, ReadRounds: 10,
		OwnerPages: 6000,
		InvPages:   1000, InvRounds: 5,
		ScanPages: 8192, ScanRounds: 5,
		ScanDepths: []int{1, 2, 4, 8, 16},
		Turns:      10000, HammerTime: 3 * time.Second,
		SizePages: 3000, SizeRounds: 5,
		SizeOwnerPages: 3000,
		ContentPages:   3000, ContentRounds: 4,
		LossPages: 1500, LossRounds: 2,
		Losses:    []float64{0, 0.01, 0.05},
		FECData:   10,
		FECParity: 3,
		LockPairs: 5000, LockHandoffs: 10000, MutexOps: 10_000_000,
		RunTimeout: 3 * time.Minute,
		MemRegion:  1 << 30, MemNodes: 3,
	}
}

// QuickConfig is the short run for CI-sized checks: well under a minute.
func QuickConfig() Config {
	c := FullConfig()
	c.Quick = true
	c.Sizes = []int{2, 4}
	c.InvalidateNodes = 4
	c.RegionSize = 16 << 20
	c.LimitCount = 5000
	c.ReadPages, c.ReadRounds = 1000, 4
	c.OwnerPages = 1000
	c.InvPages, c.InvRounds = 300, 3
	c.ScanPages, c.ScanRounds = 2048, 2
	c.ScanDepths = []int{1, 8}
	c.Turns, c.HammerTime = 1000, 500*time.Millisecond
	c.SizePages, c.SizeRounds = 500, 3
	c.SizeOwnerPages = 500
	c.ContentPages, c.ContentRounds = 500, 2
	c.LossPages, c.LossRounds = 200, 2
	c.Losses = []float64{0.01, 0.05}
	c.LockPairs, c.LockHandoffs, c.MutexOps = 1000, 1000, 1_000_000
	c.RunTimeout = time.Minute
	c.MemRegion = 64 << 20
	return c
}

// part is one selectable piece of the suite.
type part struct {
	name string
	what string
	run  func(*suite, context.Context) error
}

// parts in the order they run. limits always runs: every figure is
// compared with the limits measured in the same run.
var parts = []part{
	{"limits", "remote read fault chain (uffd, UDP, UFFDIO_COPY), local userfaultfd fault, UDP and KCP round trips with 4 KiB", (*suite).limits},
	{"readfault", "remote read fault, 2 nodes", (*suite).readFault},
	{"ownerwrite", "write fault taking ownership of a never-touched page homed elsewhere", (*suite).ownerWrite},
	{"invalidate", "write fault that must invalidate k readers", (*suite).invalidate},
	{"scan", "sequential scan of a remote region, by read-ahead depth", (*suite).scan},
	{"pingpong", "one page written alternately, and hammered, by two nodes", (*suite).pingPong},
	{"size", "read and ownership faults against cluster size", (*suite).size},
	{"content", "read fault by page content, with and without compression", (*suite).content},
	{"loss", "read fault under injected packet loss, KCP with and without FEC", (*suite).loss},
	{"locks", "distributed mutex: uncontended (local and remote home), reacquired by its last holder, and hand-off under contention, beside sync.Mutex", (*suite).locks},
	{"heap", "shared heap: dsm.New and dsm.Free of a 64-byte struct, beside Go's new", (*suite).heap},
	{"falsesharing", "the false-sharing demo's counters on 2 nodes: padded, packed, and packed in release-consistent memory", (*suite).falseSharing},
	{"rc", "release-consistent memory: Release with k written pages, Acquire of k notices, bytes per one-word release", (*suite).rc},
	{"memory", "daemon memory beyond the memfd once every node of 3 wrote every page of the region", (*suite).memory},
	{"stencil", "Jacobi heat stencil of examples/stencil on 1, 2 and 3 nodes: time per iteration, result checked", (*suite).stencil},
}

// selectParts resolves -run: comma-separated names, or a regexp matched
// against the names. limits is always included.
func selectParts(run string) ([]part, error) {
	if strings.TrimSpace(run) == "" {
		return parts, nil
	}
	want := map[string]bool{"limits": true}
	for _, tok := range strings.Split(run, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" {
			continue
		}
		found := false
		for _, p := range parts {
			if p.name == tok {
				want[p.name], found = true, true
			}
		}
		if found {
			continue
		}
		re, err := regexp.Compile(tok)
		if err != nil {
			return nil, fmt.Errorf("-run %q: %q is neither a part nor a regexp: %w (parts: %s)", run, tok, err, partNames())
		}
		for _, p := range parts {
			if re.MatchString(p.name) {
				want[p.name], found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("-run %q: %q matches no part (parts: %s)", run, tok, partNames())
		}
	}
	var out []part
	for _, p := range parts {
		if want[p.name] {
			out = append(out, p)
		}
	}
	return out, nil
}

func partNames() string {
	var s []string
	for _, p := range parts {
		s = append(s, p.name)
	}
	return strings.Join(s, ", ")
}

// validate checks the configuration and says what to change.
func (c *Config) validate() error {
	var errs []error
	pos := func(name string, v int) {
		if v < 1 {
			errs = append(errs, fmt.Errorf("%s = %d: must be at least 1", name, v))
		}
	}
	pos("limit count", c.LimitCount)
	pos("read pages", c.ReadPages)
	pos("read rounds", c.ReadRounds)
	pos("owner pages", c.OwnerPages)
	pos("invalidate pages", c.InvPages)
	pos("invalidate rounds", c.InvRounds)
	pos("scan pages", c.ScanPages)
	pos("scan rounds", c.ScanRounds)
	pos("turns", c.Turns)
	if c.HammerTime <= 0 {
		errs = append(errs, fmt.Errorf("hammer time %v: must be positive", c.HammerTime))
	}
	pos("size pages", c.SizePages)
	pos("size rounds", c.SizeRounds)
	pos("size owner pages", c.SizeOwnerPages)
	pos("content pages", c.ContentPages)
	pos("content rounds", c.ContentRounds)
	pos("loss pages", c.LossPages)
	pos("loss rounds", c.LossRounds)
	pos("lock pairs", c.LockPairs)
	pos("lock hand-offs", c.LockHandoffs)
	if c.MutexOps < mutexBatch {
		errs = append(errs, fmt.Errorf("sync.Mutex ops %d: must be at least %d (one batch)", c.MutexOps, mutexBatch))
	}
	if len(c.Sizes) == 0 {
		errs = append(errs, errors.New("no cluster sizes: give -sizes, e.g. 2,4,8"))
	}
	for _, n := range c.Sizes {
		if n < 2 || n > 64 {
			errs = append(errs, fmt.Errorf("cluster size %d: must be 2..64 (a remote fault needs two nodes)", n))
		}
	}
	if c.InvalidateNodes < 2 || c.InvalidateNodes > 64 {
		errs = append(errs, fmt.Errorf("invalidate cluster size %d: must be 2..64", c.InvalidateNodes))
	}
	for _, d := range c.ScanDepths {
		if d < 1 || d > MaxScanDepth {
			errs = append(errs, fmt.Errorf("scan depth %d: %w", d, ErrReadAhead))
		}
	}
	switch c.Content {
	case contentZero, contentText, contentRandom:
	default:
		errs = append(errs, fmt.Errorf("content %q: want %s, %s or %s", c.Content, contentZero, contentText, contentRandom))
	}
	for _, l := range c.Losses {
		if l < 0 || l >= 0.5 {
			errs = append(errs, fmt.Errorf("loss %.3f: must be in [0, 0.5)", l))
		}
	}
	if c.FECData < 1 || c.FECParity < 1 {
		errs = append(errs, fmt.Errorf("FEC %d/%d: both shard counts must be positive", c.FECData, c.FECParity))
	}
	// Samples travel as one line of JSON: keep them well below the
	// launcher's line limit.
	for name, n := range map[string]int{
		"read":    c.ReadPages * c.ReadRounds,
		"scan":    c.ScanPages * c.ScanRounds,
		"content": c.ContentPages * c.ContentRounds,
		"lock":    max(c.LockPairs, c.LockHandoffs),
	} {
		if n > maxSamples {
			errs = append(errs, fmt.Errorf("%s: %d samples per worker; at most %d", name, n, maxSamples))
		}
	}
	if c.RegionSize == 0 || c.RegionSize%uint64(os.Getpagesize()) != 0 {
		errs = append(errs, fmt.Errorf("region size %d: must be a positive multiple of the page size", c.RegionSize))
	}
	if c.RunTimeout <= 0 {
		c.RunTimeout = 3 * time.Minute
	}
	if len(errs) == 0 {
		if err := c.checkRegion(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkRegion checks that the pages every part uses fit in the region.
func (c *Config) checkRegion() error {
	pages := int(c.RegionSize / uint64(os.Getpagesize()))
	notHomed := func(nodes, first, n int) int {
		_, end := pagesNotHomedOn(nodes, 0, first, n)
		return end
	}
	need := map[string]int{
		"readfault":  firstPage + c.ReadPages,
		"ownerwrite": notHomed(2, firstPage, c.OwnerPages),
		"scan":       firstPage + c.ScanPages,
		"content":    firstPage + 3*c.ContentPages,
		"loss":       firstPage + c.LossPages,
		"locks":      firstPage + 1,
	}
	end := firstPage
	for range c.InvalidateNodes - 1 {
		end = notHomed(c.InvalidateNodes, end, c.InvPages)
	}
	need["invalidate"] = end
	for _, n := range c.Sizes {
		need["size"] = max(need["size"], notHomed(n, firstPage+c.SizePages, c.SizeOwnerPages))
	}
	var errs []error
	for _, p := range parts {
		if n, ok := need[p.name]; ok && n > pages {
			errs = append(errs, fmt.Errorf("%s uses pages up to %d, the region has %d: enlarge the region or measure fewer pages", p.name, n-1, pages))
		}
	}
	return errors.Join(errs...)
}

// maxSamples bounds one worker's samples (one JSON line).
const maxSamples = 60000

// suite is one run of the suite in progress.
type suite struct {
	cfg   Config
	exe   string
	res   *Results
	ps    int
	prog  *progress
	plots plotData
	// limitRuns are the measurements of the limits (start and end).
	limitRuns []limitRun
}

// Run runs the selected parts and writes the results into cfg.Out. It
// returns the results even when a part failed (the error says which).
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	sel, err := selectParts(cfg.Run)
	if err != nil {
		return nil, err
	}
	exe := cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find this executable (it serves as daemon and worker): %w", err)
		}
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("results directory: %w", err)
	}
	s := &suite{
		cfg: cfg, exe: exe, ps: os.Getpagesize(),
		res:  &Results{Machine: machineInfo(), Started: time.Now().UTC(), Quick: cfg.Quick, Config: publicConfig(cfg)},
		prog: newProgress(cfg.Progress, len(sel)),
	}
	for _, p := range sel {
		s.res.Parts = append(s.res.Parts, p.name)
	}
	defer s.prog.stop()
	var errs []error
	for i, p := range sel {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		s.prog.part(i, p.name)
		err := p.run(s, ctx)
		if err == nil {
			continue
		}
		err = fmt.Errorf("%s: %w", p.name, err)
		errs = append(errs, err)
		s.res.Errors = append(s.res.Errors, err.Error())
		if p.name == "limits" {
			// Without the limits there is nothing to compare with.
			break
		}
	}
	if len(s.limitRuns) == 1 && ctx.Err() == nil {
		s.prog.part(len(sel)-1, "limits again")
		if err := s.measureLimits(ctx, "end"); err != nil {
			errs = append(errs, err)
			s.res.Errors = append(s.res.Errors, err.Error())
		}
	}
	s.settleLimits()
	s.res.Machine.LoadEnd = loadAvg()
	s.res.Seconds = time.Since(s.res.Started).Seconds()
	s.prog.stop()
	s.res.finish()
	plots, perr := s.writePlots()
	s.res.Plots = plots
	if perr != nil {
		errs = append(errs, perr)
		s.res.Errors = append(s.res.Errors, perr.Error())
	}
	if err := s.res.write(cfg.Out); err != nil {
		errs = append(errs, err)
	}
	return s.res, errors.Join(errs...)
}

// withCluster starts a cluster, runs fn with it and stops it.
func (s *suite) withCluster(ctx context.Context, label string, nodes int, tune func(*node.Config), fn func(*cluster.Cluster, *tailBuffer) error) error {
	s.prog.step(label)
	logs := &tailBuffer{max: 64 << 10, tee: s.cfg.Log}
	c, err := cluster.Start(ctx, cluster.Options{
		Nodes: nodes, Size: s.cfg.RegionSize, Executable: s.exe,
		Log: logs, LogLevel: "warn", Tune: tune,
	})
	if err != nil {
		return fmt.Errorf("%s: start a %d-node cluster: %w\n%s", label, nodes, err, logs.String())
	}
	if s.cfg.onCluster != nil {
		s.cfg.onCluster(c)
	}
	defer c.Stop()
	if err := fn(c, logs); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	return nil
}

// counters is what the daemons of a cluster counted, summed over nodes.
type counters struct {
	migrations uint64
	bytesOut   uint64
	faults     uint64
}

// counters returns the sum of the daemons' counters and each daemon's
// status.
func (s *suite) counters(c *cluster.Cluster) (counters, []node.Status, error) {
	var t counters
	var all []node.Status
	for i := range c.Daemons {
		st, err := c.Status(i)
		if err != nil {
			return t, nil, fmt.Errorf("status of node %d: %w", i, err)
		}
		t.migrations += st.Migrations["in"]
		t.bytesOut += st.BytesOut
		t.faults += st.Latency.Count
		all = append(all, st)
	}
	return t, all, nil
}

// runOutcome is what one run of the workers produced.
type runOutcome struct {
	spec    spec // what the workers were told
	results []workerResult
	delta   counters      // what the daemons counted during the run
	status  []node.Status // each daemon's status after the run
	faults  []uint64      // each daemon's faults during the run
}

// byNode returns the result of node id.
func (o runOutcome) byNode(id int) (workerResult, bool) {
	for _, r := range o.results {
		if r.Node == id {
			return r, true
		}
	}
	return workerResult{}, false
}

// runWorkers runs the worker program of sp on every node of c and
// collects the results.
func (s *suite) runWorkers(ctx context.Context, c *cluster.Cluster, logs *tailBuffer, sp spec) (runOutcome, error) {
	out := runOutcome{spec: sp}
	if sp.Seed == 0 {
		sp.Seed = s.cfg.Seed
	}
	sp.Timeout = s.cfg.RunTimeout
	js, err := json.Marshal(sp)
	if err != nil {
		return out, err
	}
	before, beforeStatus, err := s.counters(c)
	if err != nil {
		return out, err
	}
	lines := &lineCollector{tail: logs}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RunTimeout+15*time.Second)
	defer cancel()
	err = c.Run(rctx, []string{s.exe}, lines, envSpec+"="+string(js))
	if err != nil {
		return out, fmt.Errorf("%s run: %w\n%s", sp.Mode, err, logs.String())
	}
	after, status, err := s.counters(c)
	if err != nil {
		return out, err
	}
	out.status = status
	for i := range status {
		out.faults = append(out.faults, status[i].Latency.Count-beforeStatus[i].Latency.Count)
	}
	out.delta = counters{
		migrations: after.migrations - before.migrations,
		bytesOut:   after.bytesOut - before.bytesOut,
		faults:     after.faults - before.faults,
	}
	for _, l := range lines.results() {
		var r workerResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return out, fmt.Errorf("%s run: bad result line: %w", sp.Mode, err)
		}
		out.results = append(out.results, r)
	}
	if len(out.results) != participants(sp) {
		return out, fmt.Errorf("%s run: %d of %d workers printed a result\n%s", sp.Mode, len(out.results), participants(sp), logs.String())
	}
	return out, nil
}

// lineCollector is the workers' output: it keeps the result lines and
// passes every other line to the tail buffer.
type lineCollector struct {
	tail    *tailBuffer
	mu      sync.Mutex
	partial []byte
	res     []string
}

func (l *lineCollector) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		if _, js, ok := strings.Cut(line, resultPrefix); ok {
			l.res = append(l.res, js)
			continue
		}
		l.tail.Write([]byte(line + "\n"))
	}
	return len(b), nil
}

func (l *lineCollector) results() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.res...)
}

// tailBuffer keeps the last max bytes written to it (the daemons' logs and
// the workers' messages, shown when something fails), and copies
// everything to tee when set.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
	tee io.Writer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tee != nil {
		t.tee.Write(p)
	}
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append([]byte(nil), t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.b) == 0 {
		return "(no output from the daemons or workers)"
	}
	return "output of the daemons and workers (last lines):\n" + string(t.b)
}

// progress shows one line on a terminal-like writer: the part, the step
// and the time so far.
type progress struct {
	w     io.Writer
	total int
	start time.Time
	mu    sync.Mutex
	line  string
	since time.Time
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, start: time.Now(), done: make(chan struct{})}
	if w == nil {
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				fmt.Fprintf(p.w, "\r%-100s\r", "")
				return
			case <-t.C:
				p.mu.Lock()
				line := fmt.Sprintf("bench %s  %.1fs  (total %s)", p.line, time.Since(p.since).Seconds(), time.Since(p.start).Round(time.Second))
				p.mu.Unlock()
				if len(line) > 100 {
					line = line[:100]
				}
				fmt.Fprintf(p.w, "\r%-100s", line)
			}
		}
	}()
	return p
}

func (p *progress) part(i int, name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line = fmt.Sprintf("[%d/%d %s]", i+1, p.total, name)
	p.since = time.Now()
}

func (p *progress) step(label string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i := strings.Index(p.line, "] "); i >= 0 {
		p.line = p.line[:i+1]
	}
	p.line += " " + label
	p.since = time.Now()
}

func (p *progress) stop() {
	p.once.Do(func() { close(p.done) })
	p.wg.Wait()
}
