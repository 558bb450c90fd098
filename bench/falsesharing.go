package main

import (
	"context"
	"fmt"

	"github.com/dsmrt/dsm/cluster"
	fscounters "github.com/dsmrt/dsm/examples/falsesharing/counters"
	"github.com/dsmrt/dsm/node"
)

// The falsesharing part runs the false-sharing demo's program (package
// counters, the very same code) on 2 nodes: each node increments its own
// counter, the counters padded onto pages of their own (the floor), packed
// on one page in sequentially consistent memory, and packed in
// release-consistent memory. The figure is the time per increment of the
// slower node, as the demo prints it.

func keyFalseSharing(layout string) string {
	switch layout {
	case fscounters.PackedRC:
		return "falsesharing/rc"
	case fscounters.Padded:
		return "falsesharing/floor/padded"
	}
	return "falsesharing/" + layout
}

func (s *suite) falseSharing(ctx context.Context) error {
	iters := 2_000_000
	if s.cfg.Quick {
		iters = 200_000
	}
	tune := func(c *node.Config) { c.RCSize = 1 << 20 }
	for _, layout := range []string{fscounters.Padded, fscounters.Packed, fscounters.PackedRC} {
		err := s.withCluster(ctx, "2 nodes, "+layout, 2, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
			sp := spec{Mode: modeCounters, Tag: layout, Content: layout, Iters: iters}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			var per []int64
			var slowest int64
			for _, r := range out.results {
				if r.Ops != iters || r.Elapsed <= 0 {
					return fmt.Errorf("%s: node %d reported %d of %d increments", layout, r.Node, r.Ops, iters)
				}
				ns := r.Elapsed / int64(iters)
				per = append(per, ns)
				slowest = max(slowest, ns)
			}
			var migrations uint64
			for i := range c.Daemons {
				st, err := c.Status(i)
				if err != nil {
					return err
				}
				migrations += st.Migrations["in"]
			}
			f := Figure{Key: keyFalseSharing(layout), Part: "falsesharing", Nodes: 2,
				Name:   fmt.Sprintf("false-sharing demo, %s layout: time per increment of the slower node", layout),
				Params: map[string]any{"iters_per_node": iters, "layout": layout, "page_migrations": migrations},
				Note:   fmt.Sprintf("%d increments per node (examples/falsesharing/counters); %d page migrations in all; the nodes' times per increment %v ns", iters, migrations, per),
			}
			if layout == fscounters.Padded {
				// The floor the other layouts are compared with.
				f.Latency = summarize([]int64{slowest})
				s.res.add(f)
				return nil
			}
			f.Compare, f.Floor = cmpFloor, keyFalseSharing(fscounters.Padded)
			s.addLatency(f, []int64{slowest})
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// countersWork runs the demo's program on this node.
func (w *worker) countersWork(res *workerResult) error {
	r, err := fscounters.Run(w.ctx, w.r, w.sp.Content, w.sp.Iters, true)
	if err != nil {
		return err
	}
	res.Ops, res.Elapsed, res.Checked = w.sp.Iters, int64(r.Seconds*1e9), int(r.Total)
	return nil
}
