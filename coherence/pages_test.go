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
					m = e.Fill(m, c.page, nil)
				}
				if err := c.engines[m.To].Step(m); err != nil {
					t.Fatal(err)
				}
			}
			e.Advance()
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
		pages := 2*localChunk + 3*dirSpan + 7
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
	// per directory entry) this was 342 bytes; with them, 64: 24 for the
	// local state, 24 for its clock (each node's own), and a third of 24
	// for a directory entry and 12 for its request ids (its clock is the
	// requester's in this process; a daemon decodes its own).
	if perPage > 75 {
		t.Errorf("%.1f bytes of heap per page and engine, want at most 75", perPage)
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

// A floor that lies more than 32 bits above its page's version is kept
// exactly, outside the page's state, and forgotten once the version
// catches up.
func TestFloorFarAboveVersion(t *testing.T) {
	e, err := New(Config{ID: 0, Nodes: 2, Pages: 4})
	if err != nil {
		t.Fatal(err)
	}
	const p = PageID(3)
	lp := e.local.at(p)
	e.setVersion(p, lp, 5)
	far := uint64(5 + 1<<40)
	e.raiseFloor(p, lp, far)
	if got := e.floor(p, lp); got != far || lp.above != aboveBig || len(e.floors) != 1 {
		t.Fatalf("floor %d (above %d, %d kept apart), want %d", got, lp.above, len(e.floors), far)
	}
	e.raiseFloor(p, lp, 7) // lower: no change
	if got := e.floor(p, lp); got != far {
		t.Fatalf("floor %d after raising it to 7, want %d", got, far)
	}
	e.setVersion(p, lp, far+1)
	if got := e.floor(p, lp); got != far+1 || lp.above != 0 || len(e.floors) != 0 {
		t.Fatalf("floor %d (above %d, %d kept apart) at version %d", got, lp.above, len(e.floors), far+1)
	}
	e.raiseFloor(p, lp, far+3)
	if got := e.floor(p, lp); got != far+3 || lp.above != 2 {
		t.Fatalf("floor %d (above %d), want %d", got, lp.above, far+3)
	}
}

// A page that Config.Home did not place here when its span's entries were
// made (a Home that is not deterministic, as it must be) still gets an
// entry of its own.
func TestDirTableStrayEntry(t *testing.T) {
	moved := false
	home := func(p PageID) NodeID {
		if p == 7 && moved {
			return 0
		}
		return NodeID(p % 2)
	}
	tab := newDirTable(0, 2, 100, home)
	d := tab.at(2)
	if d.dirEntry == nil || len(d.span.seen) != 2*len(d.span.ents) {
		t.Fatalf("at(2) = %+v", d)
	}
	if d := tab.get(7); d.dirEntry != nil {
		t.Fatal("page 7 has an entry on node 0, its home is node 1")
	}
	moved = true
	d7 := tab.at(7)
	tab.setSeen(7, d7, 1, 42)
	d7.version = 3
	x := &dirBusy{}
	tab.setBusy(d7, x)
	if d := tab.get(7); d.dirEntry != d7.dirEntry || tab.lastSeen(7, d, 1) != 42 || d.busy() != x {
		t.Fatalf("get(7) = %+v; at(7) gave %+v", d, d7)
	}
	var busy []*dirBusy
	tab.allBusy(func(x *dirBusy) bool {
		busy = append(busy, x)
		return true
	})
	if len(busy) != 1 || busy[0] != x {
		t.Fatalf("allBusy visits %v, want the stray entry's", busy)
	}
	// An entry of a span: its span has the array of pointers only while
	// one of its entries has a dirBusy.
	y := &dirBusy{}
	tab.setBusy(d, y)
	if d.busy() != y || d.span.nbusy != 1 {
		t.Fatalf("busy() = %p after setBusy(%p), %d busy", d.busy(), y, d.span.nbusy)
	}
	tab.setBusy(d, nil)
	if d.busy() != nil || d.span.busy != nil || len(tab.spare.free) != 1 || cap(tab.spare.free[0]) != len(d.span.ents) {
		t.Fatalf("idle span keeps %d pointers, spares %d", len(d.span.busy), len(tab.spare.free))
	}
}

// A chunk has its array of pageBusy pointers only while one of its pages is
// in flight, and the next chunk to need one reuses it.
func TestLocalTableBusy(t *testing.T) {
	tab := localTable{pages: 3 * localChunk}
	a, b := PageID(1), PageID(localChunk+2)
	tab.at(a)
	tab.at(b)
	if tab.busy(a) != nil || tab.busy(7*localChunk) != nil {
		t.Fatal("busy before any setBusy")
	}
	x, y := &pageBusy{}, &pageBusy{}
	tab.setBusy(a, x)
	tab.setBusy(a, x) // again: still one
	tab.setBusy(3, y)
	if c := tab.chunks[0]; tab.busy(a) != x || tab.busy(3) != y || c.nbusy != 2 {
		t.Fatalf("busy(1) = %p, busy(3) = %p, %d in flight", tab.busy(a), tab.busy(3), c.nbusy)
	}
	tab.setBusy(a, nil)
	tab.setBusy(3, nil)
	if c := tab.chunks[0]; c.busy != nil || c.nbusy != 0 || len(tab.spare.free) != 1 || cap(tab.spare.free[0]) != localChunk {
		t.Fatalf("idle chunk keeps %d pointers (%d in flight), spares %d", len(c.busy), c.nbusy, len(tab.spare.free))
	}
	spare := &tab.spare.free[0][:1][0]
	tab.setBusy(b, x)
	if c := tab.chunks[1]; &c.busy[0] != spare || tab.busy(b) != x || len(tab.spare.free) != 0 {
		t.Fatal("the second chunk did not reuse the first one's array")
	}
	tab.setBusy(b, nil)

	// Chunks that take turns (two grids' pages in flight in alternation)
	// allocate no array once the pool has theirs.
	c2 := PageID(2*localChunk + 5)
	tab.at(c2)
	allocs := testing.AllocsPerRun(100, func() {
		tab.setBusy(a, x)
		tab.setBusy(c2, y)
		tab.setBusy(a, nil)
		tab.setBusy(b, x)
		tab.setBusy(c2, nil)
		tab.setBusy(b, nil)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per turn of three chunks, want 0", allocs)
	}
}

// Request ids are kept in 32 bits from a base per node, and exactly in a
// map when they lie too far from it: a node that restarts with a far
// higher ReqBase, or ids far below the first one seen.
func TestSeenIDs(t *testing.T) {
	for _, n := range []int{3, seenDenseMax + 1} {
		tab := newDirTable(0, n, 1000, func(PageID) NodeID { return 0 })
		seen, other := tab.at(5), tab.at(600)
		ids := []uint64{
			1_700_000_000_000_000_000, // the first: sets node 1's base
			1_700_000_000_000_000_007,
			1_700_000_000_000_000_000 - 1<<30, // below, within reach
			1_700_000_000_000_000_000 + 1<<40, // a restart, far above
			1_700_000_000_000_000_009,         // back within reach
			1<<31 - 5,                         // far below
		}
		for _, id := range ids {
			tab.setSeen(5, seen, 1, id)
			if got := tab.lastSeen(5, seen, 1); got != id {
				t.Fatalf("%d nodes: lastSeen = %d after setSeen(%d)", n, got, id)
			}
			if got := tab.lastSeen(5, seen, 2); got != 0 {
				t.Fatalf("%d nodes: node 2's id is %d, it never asked", n, got)
			}
			if got := tab.lastSeen(600, other, 1); got != 0 {
				t.Fatalf("%d nodes: page 600's id is %d, nobody asked", n, got)
			}
		}
		if n <= seenDenseMax && len(tab.seenBig) != 1 {
			t.Errorf("%d ids kept apart, want 1 (the last)", len(tab.seenBig))
		}
		// A small base: ids from 1 up fit.
		tab.setSeen(600, other, 2, 1)
		tab.setSeen(600, other, 2, 3_000_000_000)
		if got := tab.lastSeen(600, other, 2); got != 3_000_000_000 {
			t.Fatalf("%d nodes: lastSeen = %d, want 3e9", n, got)
		}
	}
}
