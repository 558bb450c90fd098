package main

import (
	"context"
	"fmt"
	"time"

	"github.com/dsmrt/dsm/cluster"
)

// The barrier part: what a Barrier costs, one after the other, on one
// node (the program and its daemon only) and on two (a round trip between
// the daemons besides). A barrier is what a bulk-synchronous program (the
// stencil) pays once per step.

// modeBarrier: every node passes Iters barriers back to back after
// lockWarmup untimed ones; node 0 times each.
const modeBarrier = "barrier"

// keyBarrier is the key of the barrier figure of a cluster of nodes.
func keyBarrier(nodes int) string { return fmt.Sprintf("locks/barrier/nodes=%d", nodes) }

// barriers measures Barrier on clusters of 1 and 2 nodes.
func (s *suite) barriers(ctx context.Context) error {
	for _, nodes := range []int{1, 2} {
		err := s.withCluster(ctx, fmt.Sprintf("%s, barriers", nodesName(nodes)), nodes, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
			sp := spec{Mode: modeBarrier, Tag: fmt.Sprint(nodes), K: nodes, Iters: s.cfg.LockPairs}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			r, ok := out.byNode(0)
			if !ok || len(r.Samples) != sp.Iters {
				return fmt.Errorf("barriers on %s: node 0 reported %d of %d samples", nodesName(nodes), len(r.Samples), sp.Iters)
			}
			s.addLatency(Figure{Key: keyBarrier(nodes), Part: "locks", Nodes: nodes, Compare: cmpFloor, Floor: keyLimitChain,
				Name:   fmt.Sprintf("Barrier of %s, one after the other (the call, as node 0's program sees it)", nodesName(nodes)),
				Params: map[string]any{"barriers": sp.Iters},
				Note:   fmt.Sprintf("after %d untimed barriers; every node calls Barrier again as soon as it returns", lockWarmup)}, r.Samples)
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// barrierLoop passes lockWarmup untimed barriers, then sp.Iters timed ones.
func (w *worker) barrierLoop(res *workerResult) error {
	name := "bench/barrier/" + w.sp.Tag
	samples := make([]int64, 0, w.sp.Iters)
	for i := range lockWarmup + w.sp.Iters {
		t := time.Now()
		if err := w.r.Barrier(w.ctx, name, w.parts); err != nil {
			return fmt.Errorf("barrier %d: %w", i, err)
		}
		if i >= lockWarmup {
			samples = append(samples, int64(time.Since(t)))
		}
	}
	res.Samples, res.Ops = samples, len(samples)
	return nil
}
