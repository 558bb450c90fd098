package dsm_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/node"
)

func init() { workers["prefetch"] = workPrefetch }

// Pages of the prefetch test: node 1 writes both runs; node 0 prefetches
// the first for reading and the second for writing.
const (
	prefetchRead, prefetchWrite, prefetchPages = 40, 80, 16
)

// ownStatus asks this program's daemon for its status, as dsmnode status
// does.
func ownStatus() (node.Status, error) {
	var st node.Status
	err := ctl.Call(os.Getenv(dsm.EnvSocket), ctl.Request{Op: ctl.OpStatus}, &st)
	return st, err
}

// waitPrefetched waits until the daemon installed k more pages than it
// had in before.
func waitPrefetched(before node.Status, k uint64) (node.Status, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := ownStatus()
		if err != nil {
			return st, err
		}
		if st.Migrations["installs"] >= before.Migrations["installs"]+k {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("%d of %d prefetched pages installed after 20 s (status %+v)",
				st.Migrations["installs"]-before.Migrations["installs"], k, st.Migrations)
		}
		time.Sleep(time.Millisecond)
	}
}

func faultCount(st node.Status) uint64 {
	return st.Faults["read"] + st.Faults["write"] + st.Faults["write_protect"]
}

// workPrefetch: node 1 writes two runs of pages; node 0 prefetches the
// first for reading and the second for writing, waits until its daemon
// installed them, and then reads and writes them all without one fault;
// node 1 then reads node 0's writes.
func workPrefetch(r *dsm.Region) error {
	ps := r.PageSize()
	return prefetchRuns(r, "", prefetchRead*ps, prefetchWrite*ps, func(st node.Status) uint64 { return st.Migrations["prefetch"] })
}

// prefetchRuns is workPrefetch with the runs at byte offsets readOff and
// writeOff; tag names the barriers and starts the lines it prints, and
// asked reads the pages prefetch hints asked for from a status.
func prefetchRuns(r *dsm.Region, tag string, readOff, writeOff int, asked func(node.Status) uint64) error {
	ctx := context.Background()
	ps := r.PageSize()
	at := func(off int) *uint64 { return word(r, off) }
	val := func(off int) uint64 { return uint64(off) | 1<<40 }
	// each calls f for a word every 512 bytes of the run at off.
	each := func(off int, f func(int) error) error {
		for o := off; o < off+prefetchPages*ps; o += 512 {
			if err := f(o); err != nil {
				return err
			}
		}
		return nil
	}
	if r.NodeID() == 1 {
		for _, run := range []int{readOff, writeOff} {
			each(run, func(o int) error { atomic.StoreUint64(at(o), val(o)); return nil })
		}
	}
	if err := r.Barrier(ctx, tag+"written", r.Nodes()); err != nil {
		return err
	}
	if r.NodeID() == 0 {
		before, err := ownStatus()
		if err != nil {
			return err
		}
		// Two hints in one call; the second not page aligned: the
		// pages that hold the bytes.
		err = r.Prefetch(dsm.Hint{Off: readOff, Len: prefetchPages * ps, Intent: dsm.ForRead},
			dsm.Hint{Off: writeOff + 100, Len: prefetchPages*ps - 200, Intent: dsm.ForWrite})
		if err != nil {
			return err
		}
		after, err := waitPrefetched(before, 2*prefetchPages)
		if err != nil {
			return err
		}
		err = each(readOff, func(o int) error {
			if got := atomic.LoadUint64(at(o)); got != val(o) {
				return fmt.Errorf("prefetched word at %d = %#x, want %#x", o, got, val(o))
			}
			return nil
		})
		if err != nil {
			return err
		}
		each(writeOff, func(o int) error { atomic.AddUint64(at(o), 1); return nil })
		end, err := ownStatus()
		if err != nil {
			return err
		}
		if n := faultCount(end) - faultCount(before); n != 0 {
			return fmt.Errorf("%d faults on prefetched pages (before %v, after %v)", n, before.Faults, end.Faults)
		}
		fmt.Printf("%sprefetch ok: %d pages asked for, %d installed, no fault\n",
			tag, asked(after)-asked(before), after.Migrations["installs"]-before.Migrations["installs"])
	}
	if err := r.Barrier(ctx, tag+"used", r.Nodes()); err != nil {
		return err
	}
	if r.NodeID() == 1 {
		err := each(writeOff, func(o int) error {
			if got := atomic.LoadUint64(at(o)); got != val(o)+1 {
				return fmt.Errorf("word at %d = %#x after node 0's write, want %#x", o, got, val(o)+1)
			}
			return nil
		})
		if err != nil {
			return err
		}
		fmt.Printf("%swrites seen\n", tag)
	}
	return r.Barrier(ctx, tag+"done", r.Nodes())
}

// Prefetched pages come without a fault: read copies and ownership, and
// the writes made to pages prefetched for writing reach the other node.
func TestPrefetch(t *testing.T) {
	c := startCluster(t, 2)
	out := runWorkers(t, c, "prefetch")
	t.Log(out)
	require.Contains(t, out, fmt.Sprintf("prefetch ok: %d pages asked for, %d installed, no fault", 2*prefetchPages, 2*prefetchPages), out)
	require.Contains(t, out, "writes seen", out)
}

func init() { workers["prefetchbad"] = workPrefetchBad }

// workPrefetchBad: what Prefetch refuses, and what it takes without
// asking for anything.
func workPrefetchBad(r *dsm.Region) error {
	size := r.Size()
	for _, c := range []struct {
		off, n int
		intent dsm.Intent
		want   string
	}{
		{-1, 10, dsm.ForRead, "outside the region"},
		{0, -1, dsm.ForRead, "outside the region"},
		{size - 10, 11, dsm.ForWrite, "outside the region"},
		{size + 1, 0, dsm.ForRead, "outside the region"},
		{0, 10, dsm.Intent(7), "use dsm.ForRead or dsm.ForWrite"},
	} {
		// A bad hint beside a good one: the call is refused.
		err := r.Prefetch(dsm.Hint{Off: 0, Len: 10}, dsm.Hint{Off: c.off, Len: c.n, Intent: c.intent})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			return fmt.Errorf("Prefetch(%d, %d, %d) = %v, want an error saying %q", c.off, c.n, c.intent, err, c.want)
		}
	}
	for _, c := range []struct{ off, n int }{{0, 0}, {size, 0}, {size - 1, 1}} {
		if err := r.Prefetch(dsm.Hint{Off: c.off, Len: c.n}); err != nil {
			return fmt.Errorf("Prefetch(%d, %d): %w", c.off, c.n, err)
		}
	}
	if err := r.Prefetch(); err != nil {
		return fmt.Errorf("Prefetch(): %w", err)
	}
	// More hints than one message holds.
	many := make([]dsm.Hint, 600)
	for i := range many {
		many[i] = dsm.Hint{Off: i * r.PageSize(), Len: 1, Intent: dsm.Intent(i % 2)}
	}
	if err := r.Prefetch(many...); err != nil {
		return fmt.Errorf("Prefetch of 600 hints: %w", err)
	}
	if err := r.Close(); err != nil {
		return err
	}
	if err := r.Prefetch(dsm.Hint{Off: 0, Len: 10}); err == nil || !strings.Contains(err.Error(), "closed") {
		return fmt.Errorf("Prefetch after Close = %v, want an error saying the region is closed", err)
	}
	fmt.Println("refused ok")
	return nil
}

// Prefetch refuses ranges outside the region, unknown intents and a closed
// region, by name; empty ranges are fine.
func TestPrefetchRefuses(t *testing.T) {
	c := startCluster(t, 1)
	out := runWorkers(t, c, "prefetchbad")
	require.Contains(t, out, "refused ok", out)
}

func init() { workers["rcprefetch"] = workRCPrefetch }

// workRCPrefetch is workPrefetch on release-consistent memory: the
// barrier that ends the writes carries node 1's writes to node 0, and the
// next one node 0's to node 1.
func workRCPrefetch(r *dsm.Region) error {
	ps := r.PageSize()
	off, err := r.Alloc("rc_prefetch", 2*prefetchPages*ps, ps, dsm.ReleaseConsistent)
	if err != nil {
		return err
	}
	return prefetchRuns(r, "rc ", off, off+prefetchPages*ps, func(st node.Status) uint64 { return st.RC.Prefetched })
}

// Prefetch hints reach release-consistent memory too: copies of pages the
// node has none of come without a fault, read-only or (ForWrite) writable,
// and the writes made to the writable ones reach the other node at the
// next barrier.
func TestPrefetchReleaseConsistent(t *testing.T) {
	c := startClusterTuned(t, 2, rcCluster(t, 2))
	out := runWorkers(t, c, "rcprefetch")
	t.Log(out)
	require.Contains(t, out, fmt.Sprintf("rc prefetch ok: %d pages asked for, %d installed, no fault", 2*prefetchPages, 2*prefetchPages), out)
	require.Contains(t, out, "rc writes seen", out)
}
