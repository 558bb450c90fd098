// Package counters is the program each node runs in the false-sharing
// demo: every node increments a counter of its own, with the counters laid
// out packed on one page, padded onto pages of their own, or packed in
// release-consistent memory. It is a package so that the demo
// (examples/falsesharing) and the benchmarks (bench) run the very same
// code.
package counters

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dsmrt/dsm/dsm"
)

// The layouts.
const (
	Packed   = "packed"    // counter_A, counter_B, ... next to each other on one page
	Padded   = "padded"    // each counter on a page of its own
	PackedRC = "packed-rc" // packed, in release-consistent memory
)

// Result is one node's run.
type Result struct {
	Node    int     `json:"node"`
	Seconds float64 `json:"seconds"` // the node's iters increments
	Value   uint64  `json:"value"`   // this node's counter
	Total   uint64  `json:"total"`   // every counter, as this node reads them at the end
}

// Run allocates the counters in layout, waits for every node, increments
// this node's counter iters times (yielding the CPU every 64 increments
// when yield is set: the nodes of a local cluster share the machine's
// cores), keeps incrementing until every node is done (so that the last
// one contends as long as it runs), checks its counter, and, after a
// barrier, reads every counter. Every node of the cluster must call it
// with the same layout.
func Run(ctx context.Context, r *dsm.Region, layout string, iters int, yield bool) (Result, error) {
	res := Result{Node: r.NodeID()}
	ps := r.PageSize()
	start, err := r.Alloc("start_barrier", 24, ps)
	if err != nil {
		return res, err
	}
	align := 8
	var opts []dsm.AllocOption
	switch layout {
	case Packed:
	case Padded:
		align = ps
	case PackedRC:
		// Both nodes write the counters' page at once; each node's
		// writes reach the others at its next release.
		opts = append(opts, dsm.ReleaseConsistent)
	default:
		return res, fmt.Errorf("layout %q: want %s, %s or %s", layout, Packed, Padded, PackedRC)
	}
	var counters []int
	// The first counter starts a page of its own, away from the barrier.
	if _, err := r.Alloc("pad", 8, ps); err != nil {
		return res, err
	}
	for i := 0; i < r.Nodes(); i++ {
		off, err := r.Alloc("counter_"+string(rune('A'+i)), 8, align, opts...)
		if err != nil {
			return res, err
		}
		counters = append(counters, off)
	}
	mine := (*uint64)(r.Ptr(counters[r.NodeID()]))
	// Start together: the last node to arrive sets a start time a little
	// ahead; everyone waits for it. (The nodes share one clock here: the
	// demo's cluster is local.) Without it the first node would finish its
	// increments before the others got going, and nothing would be shared.
	bar := (*uint64)(r.Ptr(start))
	startAt := (*int64)(r.Ptr(start + 8))
	if atomic.AddUint64(bar, 1) == uint64(r.Nodes()) {
		atomic.StoreInt64(startAt, time.Now().Add(50*time.Millisecond).UnixNano())
	}
	var at int64
	for at = atomic.LoadInt64(startAt); at == 0; at = atomic.LoadInt64(startAt) {
		time.Sleep(20 * time.Microsecond)
	}
	time.Sleep(time.Until(time.Unix(0, at)))
	t0 := time.Now()
	inc := func(i int) {
		atomic.AddUint64(mine, 1)
		// The node that holds the page would keep a core busy while its
		// daemon waits for CPU time to hand the page on, and the
		// scheduler, not the protocol, would set the pace; on a cluster
		// every node has cores of its own. Every layout runs this loop.
		if yield && i&63 == 0 {
			syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
	}
	for i := 0; i < iters; i++ {
		inc(i)
	}
	res.Seconds = time.Since(t0).Seconds()
	done := (*uint64)(r.Ptr(start + 16))
	atomic.AddUint64(done, 1)
	extra := 0
	for atomic.LoadUint64(done) < uint64(r.Nodes()) {
		for k := 0; k < 4096; k++ {
			inc(extra)
			extra++
		}
	}
	res.Value = atomic.LoadUint64(mine)
	if res.Value != uint64(iters+extra) {
		return res, fmt.Errorf("counter %d = %d after %d increments", r.NodeID(), res.Value, iters+extra)
	}
	// Under release consistency the barrier is what brings the others'
	// counts here.
	if err := r.Barrier(ctx, "fs_end", r.Nodes()); err != nil {
		return res, err
	}
	for _, off := range counters {
		res.Total += atomic.LoadUint64((*uint64)(r.Ptr(off)))
	}
	// Wait until every node has read the counters before detaching.
	atomic.AddUint64(bar, 1)
	for atomic.LoadUint64(bar) < 2*uint64(r.Nodes()) {
		time.Sleep(100 * time.Microsecond)
	}
	return res, nil
}
