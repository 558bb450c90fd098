package jacobi

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/dsmrt/dsm/dsm"
)

// Result is what Run reports for one node.
type Result struct {
	Node  int `json:"node"`
	Nodes int `json:"nodes"`
	N     int `json:"n"`
	Iters int `json:"iters"`
	// Lo and Hi are the node's band: rows Lo..Hi-1.
	Lo int `json:"lo"`
	Hi int `json:"hi"`
	// IterNs is the time of each iteration in nanoseconds, from the
	// release of one barrier to the release of the next: the sweep, the
	// halo's page faults in it, and the wait for the slowest node.
	IterNs []int64 `json:"iter_ns"`
	// SweepNs is the time of each iteration's sweep alone, halo faults
	// included.
	SweepNs []int64 `json:"sweep_ns"`
	// Passed reports that the node's view of the final grid, all of it,
	// equals the private computation; Mismatch says where it does not.
	Passed   bool   `json:"passed"`
	Mismatch string `json:"mismatch,omitempty"`
}

// Barrier names. One name serves every iteration: a barrier name can be
// used again for the next phase.
const (
	barrierStart   = "stencil/start"
	barrierIter    = "stencil/iteration"
	barrierChecked = "stencil/checked"
)

// Run is the program each node of the cluster runs, with r attached to its
// daemon: it allocates the two n×n grids in the shared region (page
// aligned, the same offsets on every node), initializes its band of both,
// and then, iters times, sweeps its band of the new grid from the old one
// and meets the other nodes at a barrier before the grids swap. At the end
// it checks the whole final grid, as this node sees it, against Reference.
//
// Every node must call Run with the same n, iters and opts. opts are given
// to the grids' allocation: dsm.ReleaseConsistent puts them in
// release-consistent memory, where the barrier is what carries each band's
// rows to the nodes that read them. The error wraps ErrMismatch when the
// check failed; the Result is complete then too.
func Run(ctx context.Context, r *dsm.Region, n, iters int, opts ...dsm.AllocOption) (Result, error) {
	id, nodes, ps := r.NodeID(), r.Nodes(), r.PageSize()
	res := Result{Node: id, Nodes: nodes, N: n, Iters: iters}
	if n < 3 || nodes > n || iters < 1 {
		return res, fmt.Errorf("jacobi: a %d×%d grid on %d nodes for %d iterations: want n >= 3, at most n nodes and at least one iteration", n, n, nodes, iters)
	}
	var grids [2][]float64
	for i := range grids {
		off, err := r.Alloc(fmt.Sprintf("stencil_grid_%d", i), GridBytes(n), ps, opts...)
		if err != nil {
			return res, fmt.Errorf("jacobi: %w", err)
		}
		grids[i] = unsafe.Slice((*float64)(r.Ptr(off)), n*n)
	}
	res.Lo, res.Hi = Band(n, ps, nodes, id)
	Init(grids[0], n, res.Lo, res.Hi)
	Init(grids[1], n, res.Lo, res.Hi)
	if err := r.Barrier(ctx, barrierStart, nodes); err != nil {
		return res, fmt.Errorf("jacobi: node %d before the first iteration: %w", id, err)
	}
	res.IterNs = make([]int64, iters)
	res.SweepNs = make([]int64, iters)
	prev := time.Now()
	for it := 0; it < iters; it++ {
		Sweep(grids[(it+1)%2], grids[it%2], n, res.Lo, res.Hi)
		swept := time.Now()
		// No node may start the next sweep, which overwrites the grid
		// this one read, before every node has finished reading it.
		if err := r.Barrier(ctx, barrierIter, nodes); err != nil {
			return res, fmt.Errorf("jacobi: node %d, iteration %d: %w", id, it, err)
		}
		now := time.Now()
		res.SweepNs[it] = int64(swept.Sub(prev))
		res.IterNs[it] = int64(now.Sub(prev))
		prev = now
	}
	checkErr := Check(grids[iters%2], Reference(n, iters), n)
	res.Passed = checkErr == nil
	if checkErr != nil {
		res.Mismatch = checkErr.Error()
	}
	// Stay attached until every node has read the whole grid for its check.
	if err := r.Barrier(ctx, barrierChecked, nodes); err != nil {
		return res, errors.Join(checkErr, fmt.Errorf("jacobi: node %d after the check: %w", id, err))
	}
	if checkErr != nil {
		return res, fmt.Errorf("jacobi: node %d: %w", id, checkErr)
	}
	return res, nil
}
