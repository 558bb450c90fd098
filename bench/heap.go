package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
)

// The heap part measures dsm.New and dsm.Free on node 0 of a 2-node
// cluster, beside Go's new in one process, measured in the same run. One
// allocation is shorter than a clock read, so each sample times a batch of
// heapBatch operations and is divided by it: node 0 allocates a batch of
// heapObj (timed), then frees it (timed), again and again, so that after
// the first batch every allocation reuses freed memory of its own arena,
// the steady state of a program that allocates and frees.

// Keys of the heap figures.
const (
	keyHeapNew     = "heap/new"
	keyHeapFree    = "heap/free"
	keyHeapFloorGo = "heap/floor/go_new"
)

const heapBatch = 100

// heapObj is what the heap part allocates: 64 bytes, like a small tree node.
type heapObj struct {
	Key         uint64
	Left, Right *heapObj
	Pad         [5]uint64
}

// heapSink keeps Go's allocations on the heap (escaping), as dsm.New's are.
var heapSink []*heapObj

func measureGoNew(batches int) Stat {
	samples := make([]int64, 0, batches)
	heapSink = make([]*heapObj, heapBatch)
	for range batches {
		t0 := time.Now()
		for i := range heapBatch {
			heapSink[i] = new(heapObj)
		}
		samples = append(samples, int64(time.Since(t0)))
	}
	return scaleStat(summarize(samples), 1/float64(heapBatch))
}

func (s *suite) heap(ctx context.Context) error {
	s.prog.step("Go's new")
	batches := s.cfg.LockPairs
	s.res.add(Figure{Key: keyHeapFloorGo, Part: "heap",
		Name:    "floor: Go's new of a 64-byte struct, one process",
		Params:  map[string]any{"batches": batches, "batch": heapBatch},
		Latency: measureGoNew(batches),
		Note:    fmt.Sprintf("each sample is the mean of a batch of %d; the garbage collector runs as it would (Go has no free)", heapBatch),
	})
	return s.withCluster(ctx, "2 nodes", 2, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		s.prog.step("2 nodes, dsm.New and dsm.Free")
		sp := spec{Mode: modeHeap, Tag: "heap", Iters: batches}
		out, err := s.runWorkers(ctx, c, logs, sp)
		if err != nil {
			return err
		}
		r, ok := out.byNode(0)
		if !ok || len(r.Samples) != batches || len(r.LockOnly) != batches {
			return fmt.Errorf("heap: node 0 reported %d of %d batches", len(r.Samples), batches)
		}
		for _, f := range []struct {
			key, name string
			samples   []int64
		}{
			{keyHeapNew, "dsm.New of a 64-byte struct, steady state (reusing freed memory)", r.Samples},
			{keyHeapFree, "dsm.Free of a 64-byte struct allocated by the same node", r.LockOnly},
		} {
			s.res.add(Figure{Key: f.key, Part: "heap", Nodes: 2, Name: f.name, Compare: cmpFloor, Floor: keyHeapFloorGo,
				Params:  map[string]any{"batches": batches, "batch": heapBatch},
				Latency: scaleStat(summarize(f.samples), 1/float64(heapBatch)),
				Note:    fmt.Sprintf("timed on node 0, node 1 idle; each sample is the mean of a batch of %d; %d objects checked zeroed", heapBatch, r.Checked),
			})
		}
		return nil
	})
}

// heapWork: node 0 allocates and frees batches of heapObj, timing each
// batch of allocations (Samples) and of frees (LockOnly); every object must
// come zeroed.
func (w *worker) heapWork(res *workerResult) error {
	if err := w.barrier("start", 0); err != nil {
		return err
	}
	if w.id == 0 {
		objs := make([]*heapObj, heapBatch)
		news := make([]int64, 0, w.sp.Iters)
		frees := make([]int64, 0, w.sp.Iters)
		for b := -1; b < w.sp.Iters; b++ {
			t0 := time.Now()
			for i := range objs {
				p, err := dsm.New[heapObj](w.r)
				if err != nil {
					return fmt.Errorf("batch %d: %w", b, err)
				}
				objs[i] = p
			}
			t1 := time.Now()
			for i, p := range objs {
				if p.Key != 0 || p.Left != nil || p.Pad[4] != 0 {
					return fmt.Errorf("batch %d: object %d was not zeroed", b, i)
				}
				p.Key = uint64(i) + 1 // used, so Free must clear it
				res.Checked++
			}
			t2 := time.Now()
			for i, p := range objs {
				if err := dsm.Free(w.r, p); err != nil {
					return fmt.Errorf("batch %d, object %d: %w", b, i, err)
				}
			}
			t3 := time.Now()
			if b >= 0 { // the first batch claims the arena's chunk
				news = append(news, int64(t1.Sub(t0)))
				frees = append(frees, int64(t3.Sub(t2)))
			}
		}
		res.Samples, res.LockOnly, res.Ops = news, frees, len(news)
	}
	return w.barrier("end", 0)
}
