package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/examples/stencil/jacobi"
	"github.com/dsmrt/dsm/node"
)

// The stencil part runs a whole program rather than one kind of fault: the
// Jacobi heat stencil of examples/stencil, the very same code (package
// jacobi), on clusters of 1, 2 and 3 nodes. Each node sweeps its band of
// rows, the bands starting on page boundaries so that only the halo rows
// travel, and the nodes meet at a barrier every iteration. The figure is
// node 0's time per iteration, from the release of one barrier to the
// release of the next. At the end every node checks the whole grid against
// a private computation of the same iterations, bit for bit; a mismatch
// fails the run.

// envStencil carries a stencil worker's parameters (JSON) from the
// launcher to the program on every node. When it is set, the binary is a
// stencil worker.
const envStencil = "DSM_BENCH_STENCIL"

// stencilNodes are the cluster sizes of the part.
var stencilNodes = []int{1, 2, 3}

// keyStencil is the key of the figure of a cluster of nodes.
func keyStencil(nodes int) string { return fmt.Sprintf("stencil/nodes=%d", nodes) }

// keyStencilRC is the key of the figure of a cluster of nodes whose grids
// are release-consistent.
func keyStencilRC(nodes int) string { return fmt.Sprintf("stencil/rc/nodes=%d", nodes) }

// keyStencilNoPrefetch is the key of the figure of a cluster of nodes
// whose stencil sends no prefetch hints (jacobi.Config.NoPrefetch): the
// halo comes by faults, as a program unaware of Region.Prefetch gets it.
func keyStencilNoPrefetch(nodes int) string {
	return fmt.Sprintf("stencil/noprefetch/nodes=%d", nodes)
}

// nodesName is "1 node", "2 nodes", ...
func nodesName(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}

// stencilSpec is what the stencil worker on every node needs.
type stencilSpec struct {
	N          int           `json:"n"`
	Iters      int           `json:"iters"`
	RC         bool          `json:"rc,omitempty"`          // release-consistent grids
	NoPrefetch bool          `json:"no_prefetch,omitempty"` // no prefetch hints
	Timeout    time.Duration `json:"timeout"`
}

// stencilGrid returns the grid size and the iterations of the part:
// 1024×1024 (16 MiB for the two grids) for 100 iterations, or 256×256 for
// 50 with -quick.
func (c *Config) stencilGrid() (n, iters int) {
	if c.Quick {
		return 256, 50
	}
	return 1024, 100
}

// stencilChildIfRequested makes the process a stencil worker, and exits,
// when it was started as one (childMain).
func stencilChildIfRequested() {
	js, ok := os.LookupEnv(envStencil)
	if !ok {
		return
	}
	if err := stencilWorker(js); err != nil {
		fmt.Fprintln(os.Stderr, "bench stencil worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// stencil runs the stencil on a cluster of each size in stencilNodes and
// records node 0's time per iteration, compared with the 1-node run.
func (s *suite) stencil(ctx context.Context) error {
	n, iters := s.cfg.stencilGrid()
	// Both grids start on a page boundary (jacobi.Run allocates them page
	// aligned from the start of the region).
	need := 2 * roundUp(jacobi.GridBytes(n), s.ps)
	if uint64(need) > s.cfg.RegionSize {
		return fmt.Errorf("the two %d×%d grids need %d bytes, the region has %d: enlarge the region", n, n, need, s.cfg.RegionSize)
	}
	// The sequentially consistent grids with prefetch hints on every
	// cluster size, then without them on 2 nodes (what they save), then
	// the release-consistent grids.
	type variant struct {
		nodes []int
		stencilSpec
	}
	for _, v := range []variant{
		{stencilNodes, stencilSpec{}},
		{[]int{2}, stencilSpec{NoPrefetch: true}},
		{stencilNodes, stencilSpec{RC: true}},
	} {
		var tune func(*node.Config)
		if v.RC {
			rcSize := uint64(roundUp(need, 64<<10))
			if rcSize+(1<<20) > s.cfg.RegionSize {
				return fmt.Errorf("the two %d×%d grids need %d release-consistent bytes, the region has %d: enlarge the region", n, n, rcSize, s.cfg.RegionSize)
			}
			tune = func(c *node.Config) { c.RCSize = rcSize }
		}
		for _, nodes := range v.nodes {
			label := nodesName(nodes)
			switch {
			case v.RC:
				label += ", release-consistent grids"
			case v.NoPrefetch:
				label += ", no prefetch"
			}
			sp := v.stencilSpec
			sp.N, sp.Iters, sp.Timeout = n, iters, s.cfg.RunTimeout
			err := s.withCluster(ctx, label, nodes, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
				return s.stencilRun(ctx, c, logs, sp)
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// stencilRun runs the stencil worker on every node of c and records the
// figure of the cluster's size. A failed check is recorded too, then
// returned as the error.
func (s *suite) stencilRun(ctx context.Context, c *cluster.Cluster, logs *tailBuffer, sp stencilSpec) error {
	nodes, n, iters := len(c.Daemons), sp.N, sp.Iters
	js, err := json.Marshal(sp)
	if err != nil {
		return err
	}
	lines := &lineCollector{tail: logs}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RunTimeout+15*time.Second)
	defer cancel()
	runErr := c.Run(rctx, []string{s.exe}, lines, envStencil+"="+string(js))

	// The results are read even when the run failed: a node whose check
	// failed prints its result before it exits with an error, and the
	// figure and the place of the mismatch are wanted then most of all.
	byNode := make([]*jacobi.Result, nodes)
	for _, l := range lines.results() {
		var r jacobi.Result
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return errors.Join(runErr, fmt.Errorf("bad result line %q: %w", l, err))
		}
		if r.Node < 0 || r.Node >= nodes || byNode[r.Node] != nil {
			return errors.Join(runErr, fmt.Errorf("a result from node %d of %d, or a second one", r.Node, nodes))
		}
		if r.Nodes != nodes || r.N != n || r.Iters != iters || len(r.IterNs) != iters {
			return errors.Join(runErr, fmt.Errorf("node %d reports %d iterations of %d×%d on %d nodes, not %d of %d×%d on %d",
				r.Node, len(r.IterNs), r.N, r.N, r.Nodes, iters, n, n, nodes))
		}
		byNode[r.Node] = &r
	}
	var mismatches []string
	for _, r := range byNode {
		if r != nil && !r.Passed {
			mismatches = append(mismatches, fmt.Sprintf("node %d: %s", r.Node, r.Mismatch))
		}
	}
	var checkErr error
	if len(mismatches) > 0 {
		checkErr = fmt.Errorf("check failed: %s", strings.Join(mismatches, "; "))
	}
	r0 := byNode[0]
	if r0 == nil {
		// Without node 0's times there is no figure, failed check or not.
		return errors.Join(checkErr, runErr, fmt.Errorf("node 0 printed no result\n%s", logs.String()))
	}
	if checkErr == nil {
		if runErr != nil {
			return fmt.Errorf("stencil run: %w\n%s", runErr, logs.String())
		}
		var missing []string
		for i, r := range byNode {
			if r == nil {
				missing = append(missing, fmt.Sprint(i))
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no result from node(s) %s\n%s", strings.Join(missing, ", "), logs.String())
		}
	}
	s.addStencilFigure(sp, byNode, mismatches)
	return checkErr
}

// addStencilFigure records the figure of a run on len(byNode) nodes: node
// 0's time per iteration; mismatches are the nodes' failed checks.
func (s *suite) addStencilFigure(sp stencilSpec, byNode []*jacobi.Result, mismatches []string) {
	nodes, n, iters := len(byNode), sp.N, sp.Iters
	r0 := byNode[0]
	st := summarize(r0.IterNs)
	check := "passed"
	if len(mismatches) > 0 {
		check = "failed"
	}
	params := map[string]any{
		"n": n, "iters": iters,
		"ms_per_iter": st.Median / 1e6,
		"check":       check,
	}
	var bands, sweeps []string
	for _, r := range byNode {
		if r == nil {
			continue // gone after another node's failed check
		}
		bands = append(bands, fmt.Sprintf("node %d rows %d..%d", r.Node, r.Lo, r.Hi-1))
		sweeps = append(sweeps, fmt.Sprintf("node %d %s", r.Node, fmtNs(summarize(r.SweepNs).Median)))
	}
	note := fmt.Sprintf("%s; median sweep of a band (its halo faults included): %s; mean %s per iteration",
		strings.Join(bands, ", "), strings.Join(sweeps, ", "), fmtNs(st.Mean))
	key, one, name := keyStencil(nodes), keyStencil(1), ""
	switch {
	case sp.RC:
		key, one, name = keyStencilRC(nodes), keyStencilRC(1), ", release-consistent grids homed in blocks"
	case sp.NoPrefetch:
		key, name = keyStencilNoPrefetch(nodes), ", no prefetch hints (the halo comes by faults)"
	case nodes > 1:
		name = ", halo prefetched (Region.Prefetch) while the interior is swept"
	}
	if nodes > 1 {
		if fl, ok := s.res.figure(one); ok && fl.Latency.Median > 0 {
			note += fmt.Sprintf("; %s× the 1-node time", trimFloat(st.Median/fl.Latency.Median, 2))
		}
	}
	if len(mismatches) > 0 {
		params["mismatch"] = strings.Join(mismatches, "; ")
		note += "; CHECK FAILED: " + strings.Join(mismatches, "; ")
	} else {
		note += fmt.Sprintf("; every node's final grid equals the private computation of %d iterations, bit for bit", iters)
	}
	s.addLatency(Figure{Key: key, Part: "stencil", Nodes: nodes,
		Name:    fmt.Sprintf("Jacobi stencil %d×%d, %d iterations, %s%s: one iteration on node 0 (barrier to barrier)", n, n, iters, nodesName(nodes), name),
		Compare: cmpFloor, Floor: one,
		Params: params, Note: note}, r0.IterNs)
}

// roundUp rounds n up to a multiple of m.
func roundUp(n, m int) int { return (n + m - 1) / m * m }

// stencilWorker is the program on one node: attach, run the stencil
// (jacobi.Run, as examples/stencil does), print the result as one line
// after resultPrefix. A failed check prints the result too, so that the
// launcher can say where the grid differs, and then returns the error.
func stencilWorker(js string) error {
	var sp stencilSpec
	if err := json.Unmarshal([]byte(js), &sp); err != nil {
		return fmt.Errorf("bad %s: %w", envStencil, err)
	}
	ctx := context.Background()
	if sp.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, sp.Timeout)
		defer cancel()
	}
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	// With RC, each band's pages are at home on the node that writes it.
	res, err := jacobi.Run(ctx, r, jacobi.Config{N: sp.N, Iters: sp.Iters, RC: sp.RC, NoPrefetch: sp.NoPrefetch})
	if err != nil && !errors.Is(err, jacobi.ErrMismatch) {
		return err
	}
	b, merr := json.Marshal(res)
	if merr != nil {
		return errors.Join(err, merr)
	}
	fmt.Printf("%s%s\n", resultPrefix, b)
	return err
}
