package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/node"
)

// The rc part measures the release-consistent mode on 2 nodes:
//
//   - rc/release/dirty=K: Region.Release on node 0 after it wrote one word
//     in each of K pages it has copies of (the writes themselves, with
//     their write-protect faults, are timed apart and given in the note):
//     what write-fault tracking costs grows with K;
//   - rc/acquire/notices=K: Region.Acquire on node 0 after node 1 wrote K
//     pages node 0 has copies of, released, and raised a flag: node 0 asks
//     node 1 for its notices and invalidates K copies;
//   - rc/diff_bytes: what a release of one page with one changed word
//     sends: the diff's changed bytes, and its message's size;
//   - rc/limit/wp_async_scan/dirty=K: what asynchronous write protection,
//     which the runtime does not use, would cost instead of write-fault
//     tracking: one PAGEMAP_SCAN finding K written pages (wpscan.go).

// rcDirty are the K of the release and acquire figures.
var rcDirty = []int{1, 4, 16, 64, 256, 1024}

func keyRCRelease(k int) string { return fmt.Sprintf("rc/release/dirty=%d", k) }
func keyRCAcquire(k int) string { return fmt.Sprintf("rc/acquire/notices=%d", k) }
func keyRCWPScan(k int) string  { return fmt.Sprintf("rc/limit/wp_async_scan/dirty=%d", k) }

const keyRCDiffBytes = "rc/diff_bytes"

func (s *suite) rc(ctx context.Context) error {
	rounds := 50
	dirty := rcDirty
	if s.cfg.Quick {
		rounds, dirty = 10, []int{1, 16, 256}
	}
	// Every run allocates its pages anew: the area holds them all, each
	// rounded to the heap's 64 KiB chunks, and the one-word run's page.
	area := 64 << 10
	for _, k := range dirty {
		area += roundUp(k*s.ps, 64<<10)
	}
	if uint64(area)+(1<<20) > s.cfg.RegionSize {
		return fmt.Errorf("the rc part needs %d release-consistent bytes, the region has %d: enlarge the region", area, s.cfg.RegionSize)
	}
	for _, k := range dirty {
		s.prog.step(fmt.Sprintf("asynchronous write protection, %d pages", k))
		// A scan takes microseconds: more rounds than the cluster runs.
		scans, writes, err := measureWPScan(k, 200, s.ps)
		if errors.Is(err, errNoWPAsync) {
			fmt.Fprintf(os.Stderr, "bench: rc: %v: no %s figures\n", err, keyRCWPScan(k))
			break
		}
		if err != nil {
			return err
		}
		w := summarize(writes)
		s.addLatency(Figure{Key: keyRCWPScan(k), Part: "rc", Nodes: 1,
			Name:   fmt.Sprintf("asynchronous write protection (not used by the runtime): one PAGEMAP_SCAN finding and protecting again %d written pages of %d", k, wpScanPages),
			Params: map[string]any{"pages": k, "mapped_pages": wpScanPages, "rounds": len(scans)},
			Note: fmt.Sprintf("a shared memfd mapping registered with a userfaultfd in WP_ASYNC mode, as the release-consistent area would be; writing one word in each of the %d pages took %s (median: the kernel resolves each first write itself, no fault reaches a daemon), %s per page; compare %s (write-fault tracking, then the diffs)",
				k, fmtNs(w.Median), fmtNs(w.Median/float64(k)), keyRCRelease(k))}, scans)
	}
	tune := func(c *node.Config) { c.RCSize = uint64(area) }
	return s.withCluster(ctx, "2 nodes, release-consistent area", 2, tune, func(c *cluster.Cluster, logs *tailBuffer) error {
		for _, k := range dirty {
			s.prog.step(fmt.Sprintf("release and acquire, %d pages", k))
			sp := spec{Mode: modeRC, Tag: fmt.Sprintf("k%d", k), K: k, Rounds: rounds}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			r, ok := out.byNode(0)
			if !ok || len(r.Samples) != rounds || len(r.Cycles) != rounds || len(r.LockOnly) != rounds {
				return fmt.Errorf("rc, %d pages: node 0 reported %d, %d and %d of %d samples", k, len(r.Samples), len(r.Cycles), len(r.LockOnly), rounds)
			}
			writes := summarize(r.LockOnly)
			s.addLatency(Figure{Key: keyRCRelease(k), Part: "rc", Nodes: 2,
				Name:   fmt.Sprintf("Region.Release with %d written pages", k),
				Params: map[string]any{"pages": k, "rounds": rounds},
				Note: fmt.Sprintf("write-fault tracking: writing one word in each page (a write-protect fault per page) took %s (median), %s per page",
					fmtNs(writes.Median), fmtNs(writes.Median/float64(k)))}, r.Samples)
			s.addLatency(Figure{Key: keyRCAcquire(k), Part: "rc", Nodes: 2,
				Name:   fmt.Sprintf("Region.Acquire after the other node released %d written pages", k),
				Params: map[string]any{"pages": k, "rounds": rounds},
				Note:   fmt.Sprintf("node 0 asks node 1 for its notices and invalidates its %d copies; %d values checked afterwards", k, r.Checked)}, r.Cycles)
		}
		s.prog.step("one word")
		before, err := c.Status(0)
		if err != nil {
			return err
		}
		sp := spec{Mode: modeRC, Tag: "diff", K: 1, Rounds: rounds, Content: "word"}
		if _, err := s.runWorkers(ctx, c, logs, sp); err != nil {
			return err
		}
		after, err := c.Status(0)
		if err != nil {
			return err
		}
		diffs := after.RC.Engine.Diffs - before.RC.Engine.Diffs
		if diffs <= 0 {
			return fmt.Errorf("rc: node 0 sent no diff for %d releases", rounds)
		}
		payload := float64(after.RC.Engine.DiffBytes-before.RC.Engine.DiffBytes) / float64(diffs)
		msg := float64(after.RC.Engine.DiffMsgBytes-before.RC.Engine.DiffMsgBytes) / float64(diffs)
		s.res.add(Figure{Key: keyRCDiffBytes, Part: "rc", Nodes: 2,
			Name:   "bytes a release sends for one page with one changed word: the diff's changed bytes",
			Params: map[string]any{"releases": rounds, "diffs": diffs, "diff_payload_bytes": payload, "diff_message_bytes": msg},
			Bytes:  payload,
			Note: fmt.Sprintf("%d releases, %d diffs (a page homed on the releasing node is applied there, without a message); the diff message is %s B in all with its header (kind, nodes, page, sequence, interval, the 2-node clock, one run), before the transport's KCP and AEAD headers",
				rounds, diffs, trimFloat(msg, 0)),
		})
		return nil
	})
}

// rcWork: node 0 writes one word in each of K release-consistent pages and
// times Release (Samples; the writes in LockOnly); then node 1 writes them
// and releases, and node 0 times Acquire (Cycles) and checks the values.
// With Content "word" node 0 only changes one whole word of one page and
// releases, Rounds times.
func (w *worker) rcWork(res *workerResult) error {
	k, ps := w.sp.K, w.ps
	off, err := w.r.Alloc("bench_rc_pages_"+w.sp.Tag, k*ps, ps, dsm.ReleaseConsistent)
	if err != nil {
		return err
	}
	foff, err := w.r.Alloc("bench_rc_flags_"+w.sp.Tag, 16, 8)
	if err != nil {
		return err
	}
	word := func(i int) *uint64 { return (*uint64)(w.r.Ptr(off + i*ps)) }
	written := (*uint64)(w.r.Ptr(foff))  // node 1: rounds written and released
	read := (*uint64)(w.r.Ptr(foff + 8)) // node 0: rounds acquired and read
	if w.sp.Content == "word" {
		if w.id == 0 {
			for round := range w.sp.Rounds {
				// Every byte of the word changes.
				*word(0) = ^uint64(0) / 255 * uint64(1+round%254)
				if err := w.r.Release(w.ctx); err != nil {
					return err
				}
			}
		}
		return w.barrier("end", 0)
	}
	// Copies of every page on both nodes first.
	for i := range k {
		_ = atomic.LoadUint64(word(i))
	}
	if err := w.barrier("copies", 0); err != nil {
		return err
	}
	if w.id == 0 {
		for round := 1; round <= w.sp.Rounds; round++ {
			t0 := time.Now()
			for i := range k {
				*word(i) = uint64(round)
			}
			t1 := time.Now()
			if err := w.r.Release(w.ctx); err != nil {
				return err
			}
			res.LockOnly = append(res.LockOnly, int64(t1.Sub(t0)))
			res.Samples = append(res.Samples, int64(time.Since(t1)))
		}
	}
	if err := w.barrier("released", 0); err != nil {
		return err
	}
	for round := 1; round <= w.sp.Rounds; round++ {
		if w.id == 1 {
			// Node 0 has read the round before: no write overlaps a read.
			for atomic.LoadUint64(read) < uint64(round-1) {
				time.Sleep(20 * time.Microsecond)
			}
			for i := range k {
				*word(i) = uint64(1000 + round)
			}
			if err := w.r.Release(w.ctx); err != nil {
				return err
			}
			atomic.StoreUint64(written, uint64(round))
			continue
		}
		for atomic.LoadUint64(written) < uint64(round) {
			time.Sleep(20 * time.Microsecond)
		}
		t0 := time.Now()
		if err := w.r.Acquire(w.ctx); err != nil {
			return err
		}
		res.Cycles = append(res.Cycles, int64(time.Since(t0)))
		for i := range k {
			if v := *word(i); v != uint64(1000+round) {
				return fmt.Errorf("round %d: page %d holds %d after the acquire, want %d", round, i, v, 1000+round)
			}
			res.Checked++
		}
		atomic.StoreUint64(read, uint64(round))
	}
	return w.barrier("end", 0)
}
