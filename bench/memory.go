package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/node"
)

// The memory part: what a daemon keeps beyond the memfd that backs the
// region, once every node has written every page. The nodes take turns:
// node 0 writes one word of every page, then node 1, and so on, so that
// every page migrates to every node with its data (a write fault taking
// ownership), which is what makes a daemon keep per-page state (twins, the
// analyzer's records, the engine's page states). The figure is each
// daemon's anonymous resident memory (RssAnon in /proc/PID/status: the
// memfd's pages are RssShmem) beside the aim, 32 MiB plus 3% of the
// region.

// keyMemory is the key of the memory figure.
const keyMemory = "memory/rss_beyond_memfd"

// memoryAim is the resident memory a daemon may keep beyond the memfd for
// a region of size bytes.
func memoryAim(size uint64) uint64 { return 32<<20 + size*3/100 }

func (s *suite) memory(ctx context.Context) error {
	size, nodes := s.cfg.MemRegion, s.cfg.MemNodes
	tune := func(c *node.Config) { c.Size = size }
	label := fmt.Sprintf("%d nodes, %d MiB", nodes, size>>20)
	pages := int(size / uint64(os.Getpagesize()))
	// The fill is nodes × pages faults one after another, 0.15-0.25 ms
	// each on a busy two-core machine: 2-3 minutes at 1 GiB, too close to
	// RunTimeout. Allow a millisecond per fault.
	if need := time.Duration(nodes*pages) * time.Millisecond; need > s.cfg.RunTimeout {
		defer func(t time.Duration) { s.cfg.RunTimeout = t }(s.cfg.RunTimeout)
		s.cfg.RunTimeout = need
	}
	return s.withCluster(ctx, label, nodes, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
		// K: every node writes; with the default of 2 participants node 2
		// would only serve as a home, and its figure would say nothing.
		sp := spec{Mode: modeFill, Tag: "fill", First: 0, Pages: pages, Rounds: 1, K: nodes}
		if _, err := s.runWorkers(ctx, c, logs, sp); err != nil {
			return err
		}
		var worst uint64
		var each []string
		per := map[string]any{}
		for _, d := range c.Daemons {
			anon, err := rssAnon(d.PID())
			if err != nil {
				return fmt.Errorf("daemon %d: %w", d.ID, err)
			}
			worst = max(worst, anon)
			each = append(each, fmt.Sprintf("node %d %.1f MiB", d.ID, float64(anon)/(1<<20)))
			per["node_"+strconv.Itoa(d.ID)+"_rss_anon_bytes"] = anon
		}
		aim := memoryAim(size)
		per["region_bytes"] = size
		per["aim_bytes"] = aim
		per["worst_rss_anon_bytes"] = worst
		per["worst_over_aim"] = float64(worst) / float64(aim)
		s.res.add(Figure{Key: keyMemory, Part: "memory", Nodes: nodes, Params: per,
			Name: fmt.Sprintf("daemon memory beyond the memfd, %d MiB region written by each of %d nodes in turn", size>>20, nodes),
			Note: fmt.Sprintf("RssAnon: %s; the largest is %.2f× the aim of 32 MiB + 3%% of the region (%.1f MiB)",
				strings.Join(each, ", "), float64(worst)/float64(aim), float64(aim)/(1<<20))})
		return nil
	})
}

// rssAnon returns the anonymous resident memory of process pid in bytes.
func rssAnon(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("RssAnon %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no RssAnon in /proc/%d/status", pid)
}

// fillTurns: each node in turn writes one word of every page of the range.
func (w *worker) fillTurns(res *workerResult) error {
	pages := pageRange(w.sp.First, w.sp.Pages)
	ptrs := w.ptrs(pages)
	for turn := 0; turn < w.parts; turn++ {
		if turn == w.id {
			for _, p := range ptrs {
				atomic.AddUint64((*uint64)(unsafe.Add(p, 8*turn)), 1)
			}
		}
		if err := w.barrier("turn", turn); err != nil {
			return err
		}
	}
	res.Ops = len(ptrs)
	return nil
}
