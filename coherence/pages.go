package coherence

import (
	"unsafe"

	"github.com/dsmrt/dsm/clocks"
)

// The engine keeps state for every page a node touched and for every page
// homed on it that somebody asked for: with a 1 GiB region of 4 KiB pages
// that is 262144 pages, so the bytes per page decide the daemon's memory
// (issue 8). The page states are small values in chunks that are never
// moved, not one allocation per page behind a map: what only a page in
// flight needs (a request, a kept hand-over, waiting messages; the
// directory's queue and open transactions) hangs off a pointer that is nil
// while the page is idle, and a vector clock is held in two words.

// localChunk is the number of local page states allocated together.
const localChunk = 512

// localTable holds the local state of every page, in chunks of localChunk
// pages allocated when one of their pages is first touched: a node that
// uses part of a large region pays for that part only.
type localTable struct {
	chunks [][]localPage
	pages  int
}

// get returns page p's state, or nil if no page of its chunk was touched
// (the state of such a page is the zero localPage: Invalid, never held).
func (t *localTable) get(p PageID) *localPage {
	c := int(p) / localChunk
	if c >= len(t.chunks) || t.chunks[c] == nil {
		return nil
	}
	return &t.chunks[c][int(p)%localChunk]
}

// at returns page p's state, allocating its chunk if needed. The pointer
// stays valid: chunks never move.
func (t *localTable) at(p PageID) *localPage {
	c := int(p) / localChunk
	if c >= len(t.chunks) {
		t.chunks = append(t.chunks, make([][]localPage, c+1-len(t.chunks))...)
	}
	if t.chunks[c] == nil {
		// The last chunk is cut to the region, so that an engine for a
		// few pages (the simulator runs thousands) stays small.
		t.chunks[c] = make([]localPage, min(localChunk, t.pages-c*localChunk))
	}
	return &t.chunks[c][int(p)%localChunk]
}

// clockOf and the clock fields of localPage and dirEntry keep a vector
// clock as a pointer to its first entry and its length: two words instead
// of a slice's three, on every page. It is sound because the engine never
// changes a kept clock in place nor appends to it (a page's clock is
// replaced when its version changes), so the capacity is not needed; the
// pointer keeps the clock's array alive for the collector like a slice.

// clockPtr returns what the clock fields keep of v.
func clockPtr(v clocks.Vector) (*uint64, uint32) {
	if len(v) == 0 {
		return nil, 0
	}
	return &v[0], uint32(len(v))
}

// clockOf returns the clock kept as p and n.
func clockOf(p *uint64, n uint32) clocks.Vector {
	if p == nil {
		return nil
	}
	return clocks.Vector(unsafe.Slice(p, n))
}

// dirChunk is the number of directory entries allocated together.
const dirChunk = 256

// seenDenseMax is the largest cluster for which the directory keeps one
// request id per node for every entry, in the entry's chunk (8 bytes per
// node and page, no header): beyond it most nodes never ask for most pages,
// and the ids live in a map keyed by page and node.
const seenDenseMax = 16

// dirTable holds the directory entries of the pages homed on this node that
// somebody asked for. Homed pages are spread over the region (every Nodes-th
// page by default), so the entries are numbered in the order they were
// made, and an index maps pages to their numbers.
type dirTable struct {
	n      int // nodes in the cluster
	pages  int
	index  map[PageID]uint32
	chunks []*dirEntries
	count  int
	// seen holds the request ids when the cluster has more than
	// seenDenseMax nodes, keyed by seenKey.
	seen map[uint64]uint64
}

// dirEntries is one chunk of directory entries, with the newest request id
// accepted from each node for each of them (seen[i*n+node]) when the
// cluster is small enough (seenDenseMax).
type dirEntries struct {
	ents []dirEntry
	seen []uint64
}

func newDirTable(n, pages int) dirTable {
	return dirTable{n: n, pages: pages, index: map[PageID]uint32{}}
}

// get returns page p's directory entry and its number, or nil if nobody
// asked for p yet.
func (t *dirTable) get(p PageID) (*dirEntry, uint32) {
	i, ok := t.index[p]
	if !ok {
		return nil, 0
	}
	return &t.chunks[i/dirChunk].ents[i%dirChunk], i
}

// at returns page p's directory entry and its number, making it if needed.
// The pointer stays valid: chunks never move.
func (t *dirTable) at(p PageID) (*dirEntry, uint32) {
	if d, i := t.get(p); d != nil {
		return d, i
	}
	i := uint32(t.count)
	c := t.count / dirChunk
	if c == len(t.chunks) {
		// Sized to the region for an engine with few pages.
		size := min(dirChunk, t.pages)
		ch := &dirEntries{ents: make([]dirEntry, size)}
		if t.n <= seenDenseMax {
			ch.seen = make([]uint64, size*t.n)
		}
		t.chunks = append(t.chunks, ch)
	}
	t.count++
	t.index[p] = i
	return &t.chunks[c].ents[i%dirChunk], i
}

// all calls f for every directory entry until f returns false.
func (t *dirTable) all(f func(*dirEntry) bool) {
	for k := 0; k < t.count; k++ {
		if !f(&t.chunks[k/dirChunk].ents[k%dirChunk]) {
			return
		}
	}
}

// seenKey is the key of the request id of node n for page p in
// dirTable.seen.
func seenKey(p PageID, n NodeID) uint64 { return uint64(p)<<16 | uint64(n) }

// lastSeen returns the newest request id accepted from node n for the page
// whose entry has number i (0: none).
func (t *dirTable) lastSeen(p PageID, i uint32, n NodeID) uint64 {
	if t.n <= seenDenseMax {
		return t.chunks[i/dirChunk].seen[int(i%dirChunk)*t.n+int(n)]
	}
	return t.seen[seenKey(p, n)]
}

// setSeen records req as the newest request id accepted from node n for the
// page whose entry has number i.
func (t *dirTable) setSeen(p PageID, i uint32, n NodeID, req uint64) {
	if t.n <= seenDenseMax {
		t.chunks[i/dirChunk].seen[int(i%dirChunk)*t.n+int(n)] = req
		return
	}
	if t.seen == nil {
		t.seen = map[uint64]uint64{}
	}
	t.seen[seenKey(p, n)] = req
}
