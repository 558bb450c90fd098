// Command falsesharing shows what false sharing costs in a DSM, measures it,
// and lets the layout analyzer find it.
//
// Flags: -nodes, -iters, -json (one JSON object with the figures and the
// findings), -out DIR (the analyzer's pictures), -hold=false (no pipelined
// hand-off, to compare), -yield=false (workers never yield the CPU; on a
// machine with fewer cores than nodes x 2 the scheduler then sets the pace),
// -mode sc|rc|both: the packed layout under sequential consistency (sc,
// beside padded), under release consistency (rc: the counters allocated
// with dsm.ReleaseConsistent, so that both nodes write the page at once),
// or both beside padded (the default).
//
// It starts its own local cluster (2 nodes by default); each node increments
// its own counter. It runs the same program with two layouts: the counters
// packed next to each other on one page (counter_A, counter_B, ... allocated
// with r.Alloc), and the counters padded onto separate pages. For each it
// prints increments per second, time per increment, page migrations and
// bytes moved, then the slowdown of the packed layout, then the analyzer's
// report.
//
//	go run ./examples/falsesharing [-nodes 2] [-iters 20000] [-json] [-out DIR]
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/examples/falsesharing/counters"
	"github.com/dsmrt/dsm/node"
)

const (
	envLayout = "DSM_FS_LAYOUT"
	envIters  = "DSM_FS_ITERS"
	envYield  = "DSM_FS_YIELD"
)

// Layout is the result of one layout's run.
type Layout struct {
	Name             string        `json:"name"`
	Nodes            int           `json:"nodes"`
	ItersPerNode     int           `json:"iters_per_node"`
	Seconds          float64       `json:"seconds"`
	IncrementsPerSec float64       `json:"increments_per_sec"`
	NsPerIncrement   float64       `json:"ns_per_increment"`
	Migrations       uint64        `json:"migrations"`
	MigrationsPerInc float64       `json:"migrations_per_increment"`
	BytesMoved       uint64        `json:"bytes_moved"`
	FaultP50         time.Duration `json:"fault_p50_ns"`
	FaultP99         time.Duration `json:"fault_p99_ns"`
	Faults           uint64        `json:"faults"`
	FaultTime        time.Duration `json:"fault_time_ns"`
	// The fault path on node 0, p50 of each stage (see node.Breakdown).
	StageSend    time.Duration `json:"stage_send_ns"`
	StageRemote  time.Duration `json:"stage_remote_ns"`
	StageInstall time.Duration `json:"stage_install_ns"`
}

// Result is what -json prints.
type Result struct {
	Packed   Layout  `json:"packed"`
	Padded   Layout  `json:"padded"`
	Slowdown float64 `json:"slowdown"`
	// PackedRC is the packed layout in release-consistent memory, and
	// SlowdownRC its time per increment over the padded layout's.
	PackedRC   *Layout            `json:"packed_rc,omitempty"`
	SlowdownRC float64            `json:"slowdown_rc,omitempty"`
	Findings   []analyzer.Finding `json:"findings"`
	Plots      []string           `json:"plots,omitempty"`
}

func main() {
	node.RunDaemonIfChild()
	if layout := os.Getenv(envLayout); layout != "" {
		if err := worker(layout); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	nodes := flag.Int("nodes", 2, "nodes in the local cluster")
	iters := flag.Int("iters", 2_000_000, "increments per node")
	asJSON := flag.Bool("json", false, "print one JSON object with the figures and the findings")
	out := flag.String("out", "", "directory for the analyzer's pictures (heat map, migrations per variable)")
	hold := flag.Bool("hold", true, "pipelined hand-off with a minimum hold (false: one transaction per page at a time, to compare)")
	yield := flag.Bool("yield", true, "workers yield the CPU every 64 increments (the local cluster's nodes share this machine's cores)")
	mode := flag.String("mode", "both", "sc: packed and padded under sequential consistency; rc: packed under release consistency; both: all three")
	flag.Parse()
	layouts := map[string][]string{"sc": {"packed", "padded"}, "rc": {"packed-rc"}, "both": {"packed", "packed-rc", "padded"}}[*mode]
	if layouts == nil {
		fatal(fmt.Errorf("-mode %q: give sc, rc or both", *mode))
	}
	if *nodes < 2 || *nodes > 26 {
		fatal(errors.New("-nodes must be 2..26 (false sharing needs two writers; counters are named counter_A..counter_Z)"))
	}
	if *iters < 1 {
		fatal(errors.New("-iters must be positive"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var res Result
	var report cluster.Report
	for _, name := range layouts {
		l, rep, err := runLayout(ctx, name, *nodes, *iters, *out, *hold, *yield, !*asJSON)
		if err != nil {
			fatal(fmt.Errorf("%s layout: %w", name, err))
		}
		switch name {
		case "packed":
			res.Packed, report = l, rep
		case "packed-rc":
			res.PackedRC = &l
			if *mode == "rc" {
				report = rep
			}
		default:
			res.Padded = l
		}
	}
	if res.Padded.NsPerIncrement > 0 {
		res.Slowdown = res.Packed.NsPerIncrement / res.Padded.NsPerIncrement
		if res.PackedRC != nil {
			res.SlowdownRC = res.PackedRC.NsPerIncrement / res.Padded.NsPerIncrement
		}
	}
	res.Findings = report.Findings
	res.Plots = report.Plots
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return
	}
	for _, l := range []Layout{res.Packed, deref(res.PackedRC), res.Padded} {
		if l.Name == "" {
			continue
		}
		fmt.Printf("%-9s %d nodes x %d increments: %.0f increments/s, %.1f ns per increment, %d page migrations (%.4f per increment), %d bytes moved; faults: %d, p50 %v, p99 %v, %v waiting in all\n",
			l.Name, l.Nodes, l.ItersPerNode, l.IncrementsPerSec, l.NsPerIncrement, l.Migrations, l.MigrationsPerInc, l.BytesMoved, l.Faults, l.FaultP50, l.FaultP99, l.FaultTime.Round(time.Millisecond))
	}
	if p := res.Packed; p.Name != "" {
		fmt.Printf("packed fault path on node 0 (p50): %v to send the request, %v until the page came (network, home, owner and its hold), %v to install it and wake the thread\n",
			p.StageSend, p.StageRemote, p.StageInstall)
	}
	if res.Slowdown > 0 {
		fmt.Printf("slowdown of the packed layout: %.1fx\n", res.Slowdown)
	}
	if res.SlowdownRC > 0 {
		fmt.Printf("slowdown of the packed layout under release consistency: %.2fx\n", res.SlowdownRC)
	}
	fmt.Println()
	fmt.Print(report.Text())
	for _, p := range report.Plots {
		fmt.Println("wrote", p)
	}
}

func deref(l *Layout) Layout {
	if l == nil {
		return Layout{}
	}
	return *l
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "falsesharing:", err)
	os.Exit(1)
}

// runLayout runs one layout on a fresh cluster and collects its figures and
// node 0's analyzer report.
func runLayout(ctx context.Context, name string, nodes, iters int, out string, hold, yield, progress bool) (Layout, cluster.Report, error) {
	l := Layout{Name: name, Nodes: nodes, ItersPerNode: iters}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes, Size: 16 << 20, Tune: func(c *node.Config) {
		c.NoHold = !hold
		c.RCSize = 1 << 20 // the release-consistent layout's counters live there
	}})
	if err != nil {
		return l, cluster.Report{}, err
	}
	defer c.Stop()
	var outMu sync.Mutex
	var lines []string
	pr, pw := io.Pipe()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		s := bufio.NewScanner(pr)
		for s.Scan() {
			outMu.Lock()
			lines = append(lines, s.Text())
			outMu.Unlock()
		}
	}()
	stopProgress := make(chan struct{})
	var pwg sync.WaitGroup
	if progress {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			showProgress(c, name, stopProgress)
		}()
	}
	exe, err := os.Executable()
	if err != nil {
		return l, cluster.Report{}, err
	}
	env := []string{envLayout + "=" + name, envIters + "=" + strconv.Itoa(iters)}
	if yield {
		env = append(env, envYield+"=1")
	}
	err = c.Run(ctx, []string{exe}, pw, env...)
	close(stopProgress)
	pwg.Wait()
	pw.Close()
	<-scanned // every line is in lines
	if err != nil {
		outMu.Lock()
		defer outMu.Unlock()
		return l, cluster.Report{}, fmt.Errorf("%w\n%s", err, strings.Join(lines, "\n"))
	}
	outMu.Lock()
	var sum uint64
	var totals []uint64
	for _, line := range lines {
		_, js, ok := strings.Cut(line, "RESULT ")
		if !ok {
			continue
		}
		var w counters.Result
		if err := json.Unmarshal([]byte(js), &w); err != nil {
			outMu.Unlock()
			return l, cluster.Report{}, fmt.Errorf("bad worker result %q: %w", line, err)
		}
		l.Seconds = max(l.Seconds, w.Seconds)
		sum += w.Value
		totals = append(totals, w.Total)
	}
	outMu.Unlock()
	for _, t := range totals {
		if t != sum {
			return l, cluster.Report{}, fmt.Errorf("a node read %d increments in all at the end, the nodes made %d: %v", t, sum, totals)
		}
	}
	if l.Seconds == 0 {
		return l, cluster.Report{}, fmt.Errorf("workers printed no result:\n%s", strings.Join(lines, "\n"))
	}
	total := float64(nodes * iters)
	l.IncrementsPerSec = total / l.Seconds
	l.NsPerIncrement = l.Seconds * 1e9 / float64(iters)
	for i := range c.Daemons {
		st, err := c.Status(i)
		if err != nil {
			return l, cluster.Report{}, err
		}
		l.Migrations += st.Migrations["in"]
		l.BytesMoved += st.BytesOut
		l.Faults += st.Latency.Count
		if st.Latency.P50 > l.FaultP50 {
			l.FaultP50, l.FaultP99 = st.Latency.P50, st.Latency.P99
		}
		l.FaultTime += st.FaultTime
		if i == 0 {
			l.StageSend, l.StageRemote, l.StageInstall = st.Stages.Send.P50, st.Stages.Remote.P50, st.Stages.Install.P50
		}
	}
	l.MigrationsPerInc = float64(l.Migrations) / total
	if name == "padded" {
		out = ""
	}
	rep, err := c.Report(0, out)
	return l, rep, err
}

func showProgress(c *cluster.Cluster, name string, stop <-chan struct{}) {
	start := time.Now()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			fmt.Fprintf(os.Stderr, "\r%-78s\r", "")
			return
		case <-t.C:
			var mig, faults uint64
			for i := range c.Daemons {
				if st, err := c.Status(i); err == nil {
					mig += st.Migrations["in"]
					faults += st.Latency.Count
				}
			}
			fmt.Fprintf(os.Stderr, "\r%s: running %.1fs, %d faults, %d page migrations so far ", name, time.Since(start).Seconds(), faults, mig)
		}
	}
}

// worker is one node's program (package counters), its result printed
// as one RESULT line.
func worker(layout string) error {
	iters, err := strconv.Atoi(os.Getenv(envIters))
	if err != nil {
		return fmt.Errorf("%s: %w", envIters, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	res, err := counters.Run(ctx, r, layout, iters, os.Getenv(envYield) != "")
	if err != nil {
		return err
	}
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return nil
}
