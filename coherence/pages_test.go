package coherence

import (
	"runtime"
	"slices"
	"testing"
)

// fillTurns has each of the writers write every page in turn, as the
// benchmark's memory part does, and checks where the pages end up: with the
// last writer, Exclusive, at version len(writers).
func fillTurns(t *testing.T, c *benchCluster, pages int, writers ...NodeID) {
	t.Helper()
	for _, n := range writers {
		e := c.engines[n]
		for p := range pages {
			if err := e.Fault(PageID(p), Write); err != nil {
				t.Fatal(err)
			}
			pumpHolds(t, c)
		}
	}
	last := writers[len(writers)-1]
	for n, e := range c.engines {
		if st := e.Stats(); st.Anomalies != 0 || !e.Idle() {
			t.Fatalf("node %d: %d anomalies, idle %v", n, st.Anomalies, e.Idle())
		}
	}
	for p := range PageID(pages) {
		for n, e := range c.engines {
			want := Invalid
			if NodeID(n) == last {
				want = Exclusive
			}
			if st := e.State(p); st != want {
				t.Fatalf("page %d on node %d: state %v, want %v", p, n, st, want)
			}
		}
		home := c.engines[int(p)%len(c.engines)]
		d, ok := home.DirEntry(p)
		if !ok || d.Version != uint64(len(writers)) || d.Owner != last || !d.HasOwner || !d.Exclusive ||
			!slices.Equal(d.Copies, []NodeID{last}) || d.Busy || d.Queue != 0 || len(d.Clock) != len(c.engines) {
			t.Fatalf("page %d: directory entry %+v", p, d)
		}
		if v, clock := c.engines[last].Version(p); v != uint64(len(writers)) || len(clock) != len(c.engines) {
			t.Fatalf("page %d: node %d holds version %d, clock %v", p, last, v, clock)
		}
	}
}

// pumpHolds delivers messages as benchCluster.pump does and ends every
// minimum hold the engines ask for (Config.Hold) at once.
func pumpHolds(t *testing.T, c *benchCluster) {
	t.Helper()
	var holds []PageID
	for busy := true; busy; {
		busy = false
		for _, e := range c.engines {
			holds = holds[:0]
			for _, o := range e.Ready() {
				busy = true
				if a := o.Act; a != nil && a.Kind == ActHold {
					holds = append(holds, a.Page)
				}
				m := o.Msg
				if m == nil {
					continue
				}
				if m.NeedData {
					m.Data, m.NeedData = c.page, false
				}
				if err := c.engines[m.To].Step(m); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range holds {
				e.EndHold(p)
			}
		}
	}
}

// TestPageTablesAcrossChunks runs pages over several chunks of the local
// and directory tables, the last one cut short, for a small cluster (request
// ids by node in the chunks) and one past seenDenseMax (in a map).
func TestPageTablesAcrossChunks(t *testing.T) {
	for _, nodes := range []int{3, seenDenseMax + 2} {
		pages := 2*localChunk + nodes*dirChunk + 7
		c := &benchCluster{page: make([]byte, 64)}
		for i := range nodes {
			e, err := New(Config{ID: NodeID(i), Nodes: nodes, Pages: pages})
			if err != nil {
				t.Fatal(err)
			}
			c.engines = append(c.engines, e)
		}
		// Three writers, so that the directory has ids from some nodes
		// only in the large cluster.
		fillTurns(t, c, pages, 0, NodeID(nodes-2), NodeID(nodes-1))

		// Node 0's request for page 1 (its second), delivered again late,
		// is stale: the home keeps the newest id per node and page.
		e0, home := c.engines[0], c.engines[1]
		stale := home.Stats().Stale
		if err := home.Step(&Message{Type: MsgRequest, From: 0, To: 1, Page: 1, Req: 2, Requester: 0, Access: Write}); err != nil {
			t.Fatal(err)
		}
		if home.HasReady() || home.Stats().Stale != stale+1 {
			t.Errorf("%d nodes: a duplicate request was not ignored (outputs %v)", nodes, home.Ready())
		}
		// And a new one is served: node 0 takes page 1 back.
		if err := e0.Fault(1, Write); err != nil {
			t.Fatal(err)
		}
		c.pump(t)
		if e0.State(1) != Exclusive {
			t.Errorf("%d nodes: page 1 is %v on node 0 after a write", nodes, e0.State(1))
		}
	}
}

// TestFillMemory has three engines write every page of a region in turn
// and reports what the engines keep per page. The daemon's memory part
// (go run ./bench -run memory) does the same with a 1 GiB region; the
// engines' state per page is most of what a daemon keeps beyond its twins.
func TestFillMemory(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("writes 3 × 65536 pages")
	}
	const pages = 65536
	before := heapAfterGC()
	c := &benchCluster{page: make([]byte, 64)}
	for i := range 3 {
		e, err := New(Config{ID: NodeID(i), Nodes: 3, Pages: pages, Hold: true})
		if err != nil {
			t.Fatal(err)
		}
		c.engines = append(c.engines, e)
	}
	fillTurns(t, c, pages, 0, 1, 2)
	perPage := float64(int64(heapAfterGC())-int64(before)) / pages / 3
	t.Logf("%.1f bytes of heap per page and engine (local state of every page, directory of a third)", perPage)
	// Before the page tables (a map of pointers to 112-byte states, a map
	// per directory entry) this was 342 bytes; with them, 92.
	if perPage > 110 {
		t.Errorf("%.1f bytes of heap per page and engine, want at most 110", perPage)
	}
	runtime.KeepAlive(c)
}

// heapAfterGC returns the bytes of live heap objects after a collection.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
