package jacobi

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	// Prefetch reports that the node asked for its halo ahead (Run).
	Prefetch bool `json:"prefetch"`
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

// Config is what every node of the cluster must give Run alike.
type Config struct {
	N     int // the grid is N×N cells
	Iters int // iterations
	// Alloc is given to the grids' allocation.
	Alloc []dsm.AllocOption
	// RC puts the grids in release-consistent memory, where the barrier
	// is what carries each band's rows to the nodes that read them, with
	// each band's pages at home on the node that writes it (Homes).
	RC bool
	// NoPrefetch sweeps each band top to bottom and lets the halo come
	// by faults, instead of asking for it ahead (see Run).
	NoPrefetch bool
}

// Run is the program each node of the cluster runs, with r attached to its
// daemon: it allocates the two N×N grids in the shared region (page
// aligned, the same offsets on every node), initializes its band of both,
// and then, Iters times, sweeps its band of the new grid from the old one
// and meets the other nodes at a barrier before the grids swap. At the end
// it checks the whole final grid, as this node sees it, against Reference.
//
// On more than one node, each iteration starts with prefetch hints
// (Region.Prefetch): the neighbours' rows next to the band (the halo,
// read copies) and ownership of the band's edge rows, which the
// neighbours read as their halo the iteration before. The interior rows,
// which need neither, are swept while those pages come, and the edge rows
// last. The result is the same bit for bit: each row depends on the old
// grid only.
//
// The error wraps ErrMismatch when the check failed; the Result is
// complete then too.
func Run(ctx context.Context, r *dsm.Region, cfg Config) (Result, error) {
	n, iters := cfg.N, cfg.Iters
	id, nodes, ps := r.NodeID(), r.Nodes(), r.PageSize()
	res := Result{Node: id, Nodes: nodes, N: n, Iters: iters, Prefetch: nodes > 1 && !cfg.NoPrefetch}
	if n < 3 || nodes > n || iters < 1 {
		return res, fmt.Errorf("jacobi: a %d×%d grid on %d nodes for %d iterations: want n >= 3, at most n nodes and at least one iteration", n, n, nodes, iters)
	}
	var grids [2][]float64
	var offs [2]int
	opts := cfg.Alloc
	if cfg.RC {
		opts = append(slices.Clip(opts), dsm.ReleaseConsistent, Homes(n, ps, nodes))
	}
	for i := range grids {
		off, err := r.Alloc(fmt.Sprintf("stencil_grid_%d", i), GridBytes(n), ps, opts...)
		if err != nil {
			return res, fmt.Errorf("jacobi: %w", err)
		}
		grids[i] = unsafe.Slice((*float64)(r.Ptr(off)), n*n)
		offs[i] = off
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
		src, dst := grids[it%2], grids[(it+1)%2]
		if res.Prefetch {
			if err := prefetch(r, offs[it%2], offs[(it+1)%2], n, res.Lo, res.Hi); err != nil {
				return res, fmt.Errorf("jacobi: node %d, iteration %d: %w", id, it, err)
			}
			Sweep(dst, src, n, res.Lo+1, res.Hi-1)
			Sweep(dst, src, n, res.Lo, min(res.Lo+1, res.Hi))
			Sweep(dst, src, n, max(res.Hi-1, res.Lo+1), res.Hi)
		} else {
			Sweep(dst, src, n, res.Lo, res.Hi)
		}
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

// Homes returns the allocation option that homes a grid's pages where
// Band puts its rows, so that each band's pages are at home on the node
// that writes them: blocks of whole steps of rows (dsm.BlockHomesOf), or
// of pages when the bands are not made of whole steps.
func Homes(n, pageSize, nodes int) dsm.AllocOption {
	g := pageSize / gcd(n*CellBytes, pageSize)
	if n/g < nodes || n%g != 0 {
		return dsm.BlockHomes
	}
	return dsm.BlockHomesOf(g * n * CellBytes)
}

// prefetch asks for what the sweep of rows [lo, hi) from the grid at
// offset srcOff into the one at dstOff needs from the neighbours: read
// copies of their rows beside the band, and ownership of the band's edge
// rows of dst, which they read as their halo the iteration before. The
// hints go in one call, so that the daemon's requests share datagrams.
func prefetch(r *dsm.Region, srcOff, dstOff, n, lo, hi int) error {
	row := n * CellBytes
	var hints [4]dsm.Hint
	k := 0
	if lo > 0 {
		hints[k] = dsm.Hint{Off: srcOff + (lo-1)*row, Len: row, Intent: dsm.ForRead}
		hints[k+1] = dsm.Hint{Off: dstOff + lo*row, Len: row, Intent: dsm.ForWrite}
		k += 2
	}
	if hi < n {
		hints[k] = dsm.Hint{Off: srcOff + hi*row, Len: row, Intent: dsm.ForRead}
		hints[k+1] = dsm.Hint{Off: dstOff + (hi-1)*row, Len: row, Intent: dsm.ForWrite}
		k += 2
	}
	return r.Prefetch(hints[:k]...)
}
