// Command stencil runs a Jacobi heat stencil on a DSM cluster and checks
// its result.
//
// It starts its own local cluster (2 nodes by default) and runs one copy of
// itself per node. The two n×n grids of float64 (the old and the new
// temperatures) are allocated by name in the shared region, aligned to
// pages. The rows are split into bands, one per node, that start on page
// boundaries, so that a band's pages stay with its node and only the halo
// rows at the bands' edges travel between neighbours. Each iteration every
// node computes its band of the new grid from the old one (each interior
// cell becomes the mean of its four neighbours; the top edge is held hot,
// the other edges cold), then all nodes meet at a barrier and the grids
// swap. At the end every node checks the whole final grid, as it sees it,
// against a private computation of the same iterations in ordinary memory:
// the arithmetic is the same, so the two must be equal bit for bit.
//
// It prints the bands, the milliseconds per iteration (the median on node
// 0) and whether the check passed; a failed check exits with status 1.
// The program each node runs is jacobi.Run (examples/stencil/jacobi),
// shared with the benchmark command's stencil part.
//
// The daemons read ahead of a program's sequential read faults once a run
// reaches three pages, with a window no longer than the run so far. A halo
// row of two pages (n = 1024) is no such run; a longer one (n >= 1536) is,
// and a node's daemon then also fetches pages of the neighbouring band
// after the halo, read only, which the neighbour must take back, one
// write-protect fault each, when it next writes them. -read-ahead -1 turns
// read-ahead off to compare.
//
// Flags: -nodes (1 runs on a one-node cluster), -n (grid size), -iters,
// -json (one JSON object instead of text), -read-ahead, -prefetch, -rc
// (release-consistent grids, each band's pages at home on its node),
// -timeout.
//
//	go run ./examples/stencil [-nodes 2] [-n 1024] [-iters 100] [-json] [-read-ahead -1] [-rc]
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
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/examples/stencil/jacobi"
	"github.com/dsmrt/dsm/node"
)

// envWorker carries the worker's parameters (JSON) from the launcher to
// the copy of this program on every node. When it is set, the process is a
// worker.
const envWorker = "DSM_STENCIL_WORKER"

// resultPrefix starts the line of a worker's output that carries its
// result.
const resultPrefix = "RESULT "

// workerParams are what every node's copy of the program needs.
type workerParams struct {
	N          int           `json:"n"`
	Iters      int           `json:"iters"`
	Timeout    time.Duration `json:"timeout"`
	NoPrefetch bool          `json:"no_prefetch,omitempty"`
	// RC puts the grids in release-consistent memory, homed in blocks.
	RC bool `json:"rc,omitempty"`
}

// Summary is the outcome of a run: what -json prints.
type Summary struct {
	Nodes int `json:"nodes"`
	N     int `json:"n"`
	Iters int `json:"iters"`
	// MsPerIter is the median time of an iteration on node 0, from one
	// barrier's release to the next; MeanMsPerIter is the mean.
	MsPerIter     float64 `json:"ms_per_iter"`
	MeanMsPerIter float64 `json:"mean_ms_per_iter"`
	// Prefetch reports that the nodes asked for their halo ahead
	// (jacobi.Run).
	Prefetch bool `json:"prefetch"`
	// RC reports that the grids were release-consistent (-rc).
	RC bool `json:"rc"`
	// Bands are the nodes' bands, by node, and the median time of their
	// sweeps (halo faults included).
	Bands []Band `json:"bands"`
	// Passed reports that every node's check passed.
	Passed     bool     `json:"check_passed"`
	Mismatches []string `json:"mismatches,omitempty"`
}

// Band is one node's band of rows, Lo..Hi-1.
type Band struct {
	Node      int     `json:"node"`
	Lo        int     `json:"lo"`
	Hi        int     `json:"hi"`
	SweepMs   float64 `json:"sweep_ms"`
	MsPerIter float64 `json:"ms_per_iter"`
}

func main() {
	node.RunDaemonIfChild()
	if js, ok := os.LookupEnv(envWorker); ok {
		if err := worker(js); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	nodes := flag.Int("nodes", 2, "nodes in the local cluster (1 runs on a one-node cluster)")
	n := flag.Int("n", 1024, "grid size: n×n cells of float64")
	iters := flag.Int("iters", 100, "iterations")
	asJSON := flag.Bool("json", false, "print one JSON object with the figures and the check instead of text")
	readAhead := flag.Int("read-ahead", 0, "pages the daemons read ahead of sequential read faults (0: their default, -1: none)")
	prefetch := flag.Bool("prefetch", true, "ask for the halo ahead and sweep the interior while it comes (false: sweep top to bottom, the halo comes by faults)")
	rcGrids := flag.Bool("rc", false, "put the grids in release-consistent memory (dsm.ReleaseConsistent, homed in blocks: dsm.BlockHomes), where the barrier carries each band's rows to its neighbours")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up when the workers have not finished after this long")
	flag.Parse()
	switch {
	case flag.NArg() > 0:
		fatal(fmt.Errorf("unexpected arguments %q (flags only; see -h)", flag.Args()))
	case *nodes < 1 || *nodes > 64:
		fatal(errors.New("-nodes must be 1..64"))
	case *n < 3:
		fatal(errors.New("-n must be at least 3 (a grid with an interior)"))
	case *nodes > *n:
		fatal(fmt.Errorf("-nodes %d is more than the %d rows to split", *nodes, *n))
	case *iters < 1:
		fatal(errors.New("-iters must be positive"))
	case *timeout <= 0:
		fatal(errors.New("-timeout must be positive"))
	case *readAhead > 1024:
		fatal(errors.New("-read-ahead must be at most 1024 pages (-1 for none)"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if !*asJSON {
		explain(*nodes, *n, *iters, *readAhead, *prefetch, *rcGrids)
	}
	sum, err := run(ctx, workerParams{N: *n, Iters: *iters, Timeout: *timeout, NoPrefetch: !*prefetch, RC: *rcGrids}, *nodes, *readAhead)
	if err != nil && !errors.Is(err, jacobi.ErrMismatch) {
		fatal(err)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(sum)
	} else {
		report(sum)
	}
	if err != nil {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "stencil:", err)
	os.Exit(1)
}

// explain says what the run does before it starts.
func explain(nodes, n, iters, readAhead int, prefetch, rcGrids bool) {
	ps := os.Getpagesize()
	row := n * jacobi.CellBytes
	on := "1 node"
	if nodes > 1 {
		on = fmt.Sprintf("%d nodes", nodes)
	}
	fmt.Printf("Jacobi heat stencil: %d×%d float64 cells (%s a row, %s), %d iterations on %s of a local cluster.\n",
		n, n, sizeName(row), pagesName(row, ps), iters, on)
	fmt.Println("The two grids are allocated by name in the shared region, page aligned. Each node owns a band of rows")
	fmt.Println("that starts on a page boundary, computes its band of the new grid from the old one, meets the others at")
	fmt.Println("a barrier, and the grids swap. A band's pages stay with its node: only the halo, the rows at the edges")
	fmt.Println("of the bands, moves between neighbours, once per iteration each way. At the end every node compares the")
	fmt.Println("whole grid, as it sees it, with a private computation of the same iterations in ordinary memory.")
	switch {
	case nodes == 1:
		fmt.Println("With one node nothing is shared: this is the baseline, the DSM's barrier included.")
	case readAhead >= 0 && row >= 3*ps:
		// A halo row of three pages or more looks like a sequential
		// read to the daemons (pager/readahead.go).
		fmt.Println("The daemons' read-ahead also fetches a few pages past the halo, which their owner must then take")
		fmt.Println("back when it writes them (-read-ahead -1 turns read-ahead off).")
	}
	if rcGrids {
		fmt.Println("The grids are release-consistent (dsm.ReleaseConsistent), each band's pages at home on the node that")
		fmt.Println("writes them (dsm.BlockHomes): a barrier sends the band's writes home and tells the neighbours which")
		fmt.Println("pages changed; the halo pages they hold are dropped then and fetched again when read.")
	}
	if nodes > 1 && prefetch && !rcGrids {
		fmt.Println("Each iteration starts with prefetch hints (Region.Prefetch): the halo rows, and ownership of the band's")
		fmt.Println("edge rows, which the neighbours read last time; the interior is swept while they come, the edge rows")
		fmt.Println("last (-prefetch=false sweeps top to bottom and lets the halo come by faults).")
	}
	fmt.Println()
}

func sizeName(b int) string {
	if b%1024 == 0 {
		return fmt.Sprintf("%d KiB", b/1024)
	}
	return fmt.Sprintf("%d bytes", b)
}

func pagesName(row, ps int) string {
	switch {
	case row == ps:
		return fmt.Sprintf("one page of %d KiB", ps/1024)
	case row%ps == 0:
		return fmt.Sprintf("%d pages of %d KiB", row/ps, ps/1024)
	case ps%row == 0:
		return fmt.Sprintf("%d rows to a page of %d KiB", ps/row, ps/1024)
	default:
		return fmt.Sprintf("%.2f pages of %d KiB", float64(row)/float64(ps), ps/1024)
	}
}

// report prints the summary as text.
func report(s Summary) {
	for _, b := range s.Bands {
		fmt.Printf("node %d: rows %d..%d, sweep of its band %.2f ms (median, halo faults included)\n", b.Node, b.Lo, b.Hi-1, b.SweepMs)
	}
	fmt.Printf("ms per iteration: %.2f (median of %d on node 0; mean %.2f)\n", s.MsPerIter, s.Iters, s.MeanMsPerIter)
	if s.Passed {
		fmt.Printf("check: passed (every node's final grid equals the private computation of %d iterations, bit for bit)\n", s.Iters)
		return
	}
	fmt.Println("check: FAILED")
	for _, m := range s.Mismatches {
		fmt.Println("  " + m)
	}
}

// run starts a cluster of nodes whose daemons read ahead readAhead pages
// (node.Config.ReadAhead), runs the stencil on it and summarizes the nodes'
// results. When a check failed, the error wraps jacobi.ErrMismatch and the
// summary is complete.
func run(ctx context.Context, p workerParams, nodes, readAhead int) (Summary, error) {
	ps := os.Getpagesize()
	// The two grids, each page aligned, rounded up to whole MiB.
	size := uint64(2*jacobi.GridBytes(p.N)+2*ps+(1<<20)-1) &^ (1<<20 - 1)
	var rcSize uint64
	if p.RC {
		// Both grids are release-consistent; the region's last MiB is
		// the allocator's own.
		rcSize = size
		size += 1 << 20
	}
	tune := func(c *node.Config) {
		c.ReadAhead = readAhead
		c.RCSize = rcSize
	}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes, Size: size, Tune: tune})
	if err != nil {
		return Summary{}, fmt.Errorf("start a %d-node cluster: %w", nodes, err)
	}
	defer c.Stop()
	exe, err := os.Executable()
	if err != nil {
		return Summary{}, fmt.Errorf("find this executable (it is the program on every node): %w", err)
	}
	js, err := json.Marshal(p)
	if err != nil {
		return Summary{}, err
	}
	// The scanner goroutine owns lines until scanned is closed.
	var lines []string
	pr, pw := io.Pipe()
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64<<10), 16<<20)
		for s.Scan() {
			lines = append(lines, s.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	rctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	runErr := c.Run(rctx, []string{exe}, pw, envWorker+"="+string(js))
	pw.Close()
	<-scanned // every line is in lines
	var results []jacobi.Result
	for _, line := range lines {
		_, js, ok := strings.Cut(line, resultPrefix)
		if !ok {
			continue
		}
		var r jacobi.Result
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			return Summary{}, fmt.Errorf("bad worker result %q: %w", line, err)
		}
		results = append(results, r)
	}
	sum, err := summarize(results, nodes, p.N, p.Iters)
	sum.RC = p.RC
	if err != nil && errors.Is(err, jacobi.ErrMismatch) {
		return sum, err
	}
	if runErr != nil || err != nil {
		return sum, fmt.Errorf("%w\noutput of the workers:\n%s", errors.Join(runErr, err), strings.Join(lines, "\n"))
	}
	if err := c.Stop(); err != nil {
		return sum, fmt.Errorf("stop the cluster: %w", err)
	}
	return sum, nil
}

// summarize turns the nodes' results into a Summary. The error wraps
// jacobi.ErrMismatch when a node's check failed; it says what is missing
// when a node reported no result or not the run it was asked for.
func summarize(results []jacobi.Result, nodes, n, iters int) (Summary, error) {
	s := Summary{Nodes: nodes, N: n, Iters: iters, Passed: true}
	byNode := make([]*jacobi.Result, nodes)
	for i := range results {
		r := &results[i]
		if r.Node < 0 || r.Node >= nodes || byNode[r.Node] != nil {
			return s, fmt.Errorf("a result from node %d of %d, or a second one", r.Node, nodes)
		}
		if r.Nodes != nodes || r.N != n || r.Iters != iters || len(r.IterNs) != iters || len(r.SweepNs) != iters {
			return s, fmt.Errorf("node %d reports %d iterations of %d×%d on %d nodes, not %d of %d×%d on %d",
				r.Node, len(r.IterNs), r.N, r.N, r.Nodes, iters, n, n, nodes)
		}
		byNode[r.Node] = r
	}
	var missing, failed []string
	for i, r := range byNode {
		if r == nil {
			missing = append(missing, fmt.Sprint(i))
			continue
		}
		s.Bands = append(s.Bands, Band{Node: i, Lo: r.Lo, Hi: r.Hi, SweepMs: medianMs(r.SweepNs), MsPerIter: medianMs(r.IterNs)})
		if !r.Passed {
			s.Passed = false
			failed = append(failed, fmt.Sprint(i))
			s.Mismatches = append(s.Mismatches, fmt.Sprintf("node %d: %s", i, r.Mismatch))
		}
	}
	if r0 := byNode[0]; r0 != nil {
		s.Prefetch = r0.Prefetch
		s.MsPerIter = medianMs(r0.IterNs)
		var total int64
		for _, d := range r0.IterNs {
			total += d
		}
		s.MeanMsPerIter = float64(total) / float64(len(r0.IterNs)) / 1e6
	}
	// A failed check comes first: the node that failed exits with an
	// error, and the launcher may stop the others before they report.
	if !s.Passed {
		return s, fmt.Errorf("%w on node(s) %s", jacobi.ErrMismatch, strings.Join(failed, ", "))
	}
	if len(missing) > 0 {
		s.Passed = false
		return s, fmt.Errorf("no result from node(s) %s", strings.Join(missing, ", "))
	}
	return s, nil
}

// medianMs is the median of ns, in milliseconds.
func medianMs(ns []int64) float64 {
	if len(ns) == 0 {
		return 0
	}
	s := slices.Clone(ns)
	slices.Sort(s)
	m := float64(s[len(s)/2])
	if len(s)%2 == 0 {
		m = (float64(s[len(s)/2-1]) + m) / 2
	}
	return m / 1e6
}

// worker is the program on one node: attach, run the stencil, print the
// result (also when the check failed, so that the launcher can say where).
func worker(js string) error {
	var p workerParams
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		return fmt.Errorf("bad %s: %w", envWorker, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.Timeout)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	res, err := jacobi.Run(ctx, r, jacobi.Config{N: p.N, Iters: p.Iters, NoPrefetch: p.NoPrefetch, RC: p.RC})
	if err == nil || errors.Is(err, jacobi.ErrMismatch) {
		b, merr := json.Marshal(res)
		if merr != nil {
			return errors.Join(err, merr)
		}
		fmt.Printf("%s%s\n", resultPrefix, b)
	}
	return err
}
