package coherence

import (
	"math/bits"
	"unsafe"

	"github.com/dsmrt/dsm/clocks"
)

// The engine keeps state for every page a node touched and for the pages
// homed on it: with a 1 GiB region of 4 KiB pages that is 262144 pages, so
// the bytes per page decide the daemon's memory (issue 8). The page states
// are small values (24 bytes for a local page, 24 for a directory entry and
// 4 per node for its request ids) in chunks that are never moved, not one
// allocation per page behind a map: what only a page in flight needs (a
// request, a kept hand-over, waiting messages; the directory's queue and
// open transactions) is allocated while it is, and a vector clock is a
// pointer and a length. The clocks themselves (8 bytes per node) are
// shared wherever the protocol lets them be.

// localChunk is the number of local page states allocated together.
const localChunk = 512

// localTable holds the local state of every page, in chunks of localChunk
// pages allocated when one of their pages is first touched: a node that
// uses part of a large region pays for that part only.
type localTable struct {
	chunks []*localChunkPages
	pages  int
	// spare holds the busy arrays of chunks that went idle, for the next
	// chunk that needs one: the pages in flight often go idle and come
	// back, and that should cost no allocation.
	spare sparePool[pageBusy]
}

// localChunkPages is one chunk of a localTable, with the pageBusy of its
// pages in flight. Few pages are in flight at a time, so a chunk has the
// array of pointers only while one of its pages is: 8 bytes a page while
// it lasts, instead of a pointer in every page's state.
type localChunkPages struct {
	pages []localPage
	busy  []*pageBusy // by page of the chunk; nil when nbusy is 0
	nbusy int
}

// get returns page p's state, or nil if no page of its chunk was touched
// (the state of such a page is the zero localPage: Invalid, never held).
func (t *localTable) get(p PageID) *localPage {
	c := int(uint(p) / localChunk)
	if c >= len(t.chunks) || t.chunks[c] == nil {
		return nil
	}
	return &t.chunks[c].pages[int(uint(p)%localChunk)]
}

// at returns page p's state, allocating its chunk if needed. The pointer
// stays valid: chunks never move.
func (t *localTable) at(p PageID) *localPage {
	c := int(uint(p) / localChunk)
	if c >= len(t.chunks) {
		t.chunks = append(t.chunks, make([]*localChunkPages, c+1-len(t.chunks))...)
	}
	if t.chunks[c] == nil {
		// The last chunk is cut to the region, so that an engine for a
		// few pages (the simulator runs thousands) stays small.
		t.chunks[c] = &localChunkPages{pages: make([]localPage, min(localChunk, t.pages-c*localChunk))}
	}
	return &t.chunks[c].pages[int(uint(p)%localChunk)]
}

// busy returns the pageBusy of page p, or nil.
func (t *localTable) busy(p PageID) *pageBusy {
	k := int(uint(p) / localChunk)
	if k >= len(t.chunks) || t.chunks[k] == nil || t.chunks[k].busy == nil {
		return nil
	}
	return t.chunks[k].busy[int(uint(p)%localChunk)]
}

// setBusy makes x (nil: none) the pageBusy of page p, whose state exists.
func (t *localTable) setBusy(p PageID, x *pageBusy) {
	c, i := t.chunks[int(uint(p)/localChunk)], int(uint(p)%localChunk)
	if c.busy == nil {
		if x == nil {
			return
		}
		c.busy = t.spare.get(len(c.pages))
	}
	switch old := c.busy[i]; {
	case old == nil && x != nil:
		c.nbusy++
	case old != nil && x == nil:
		c.nbusy--
	}
	c.busy[i] = x
	if c.nbusy == 0 {
		// Every pointer in it is nil again.
		t.spare.put(c.busy)
		c.busy = nil
	}
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

// dirSpan is the number of consecutive pages whose directory entries (the
// ones homed on this node) are allocated together.
const dirSpan = 512

// seenDenseMax is the largest cluster for which the directory keeps one
// request id per node for every entry, beside the entries (4 bytes per node
// and page, no header): beyond it most nodes never ask for most pages, and
// the ids live in a map keyed by page and node.
const seenDenseMax = 16

// The directory keeps the request ids of a small cluster in 32 bits, as
// the distance from a base per requesting node: a node numbers its
// requests one after another (from Config.ReqBase), so the ids one home
// sees from it stay within 2^32 of each other for billions of requests.
// An id that does not fit (a node restarted with a far higher ReqBase, or
// the first id seen was 2^31 above the others) is kept in a map instead.
const (
	seenNone = 0          // no request accepted yet
	seenBig  = ^uint32(0) // the id is in dirTable.seenBig
)

// dirTable holds the directory entries of the pages homed on this node. The
// pages are cut in spans of dirSpan; a span's entries are allocated when one
// of them is first needed, one for each page of the span homed here (every
// Nodes-th page by default), and a bitmap of those pages maps a page to its
// entry: a bit per page instead of an index entry per homed page.
type dirTable struct {
	id    NodeID
	n     int // nodes in the cluster
	pages int
	home  func(PageID) NodeID
	spans []*dirEntries // by page / dirSpan
	// seen holds the request ids when the cluster has more than
	// seenDenseMax nodes, keyed by seenKey.
	seen map[uint64]uint64
	// seenBase is the base of each node's request ids, set by the first
	// one (seenSet); seenBig holds the ids too far from it (seenBig).
	seenBase []uint64
	seenSet  []bool
	seenBig  map[uint64]uint64
	// stray holds the entries of pages that Config.Home did not place
	// here when their span was made, each in a span of its own: only a
	// Home that is not deterministic, as it must be, puts any there.
	stray map[PageID]*dirEntries
	// spare holds the busy arrays of spans that went idle, for the next.
	spare sparePool[dirBusy]
}

// dirEntries holds the directory entries of the pages of one span homed
// on this node, with the newest request id accepted from each node for each
// of them (seen[i*n+node], see seenBig) when the cluster is small enough
// (seenDenseMax), and the dirBusy of those that have one.
type dirEntries struct {
	homed [dirSpan / 64]uint64 // bit i: page i of the span is homed here
	below [dirSpan / 64]uint16 // homed pages in the words before
	ents  []dirEntry           // one per homed page, in page order
	seen  []uint32
	busy  []*dirBusy // by entry; nil when nbusy is 0
	nbusy int
}

// dirRef is a page's directory entry (nil if it has none) and the span
// that holds it, where its request ids and dirBusy are. Three words: it is
// passed around by value on every message to the home.
type dirRef struct {
	*dirEntry
	span *dirEntries
	k    int // the entry's index in span
}

// busy returns the page's dirBusy, or nil.
func (r dirRef) busy() *dirBusy {
	if r.span.busy == nil {
		return nil
	}
	return r.span.busy[r.k]
}

func newDirTable(id NodeID, n, pages int, home func(PageID) NodeID) dirTable {
	return dirTable{id: id, n: n, pages: pages, home: home}
}

// get returns page p's directory entry, whose dirEntry is nil if it has
// none yet.
func (t *dirTable) get(p PageID) dirRef {
	c := int(uint(p) / dirSpan)
	if c < len(t.spans) && t.spans[c] != nil {
		if r := t.spans[c].entry(p); r.dirEntry != nil {
			return r
		}
	}
	if s := t.stray[p]; s != nil {
		return dirRef{dirEntry: &s.ents[0], span: s}
	}
	return dirRef{}
}

// entry returns page p's entry in the span, if p is homed here.
func (s *dirEntries) entry(p PageID) dirRef {
	i := int(uint(p) % dirSpan)
	w, bit := i/64, uint64(1)<<(i%64)
	if s.homed[w]&bit == 0 {
		return dirRef{}
	}
	k := int(s.below[w]) + bits.OnesCount64(s.homed[w]&(bit-1))
	return dirRef{dirEntry: &s.ents[k], span: s, k: k}
}

// at returns page p's directory entry, making its span if needed. The
// dirEntry pointer stays valid: spans never move.
func (t *dirTable) at(p PageID) dirRef {
	if r := t.get(p); r.dirEntry != nil {
		return r
	}
	c := int(uint(p) / dirSpan)
	if c >= len(t.spans) {
		t.spans = append(t.spans, make([]*dirEntries, c+1-len(t.spans))...)
	}
	if t.spans[c] == nil {
		t.spans[c] = t.newSpan(c)
		if r := t.spans[c].entry(p); r.dirEntry != nil {
			return r
		}
	}
	if t.stray == nil {
		t.stray = map[PageID]*dirEntries{}
	}
	s := &dirEntries{ents: make([]dirEntry, 1)}
	if t.n <= seenDenseMax {
		s.seen = make([]uint32, t.n)
	}
	t.stray[p] = s
	return dirRef{dirEntry: &s.ents[0], span: s}
}

// setBusy makes x (nil: none) the dirBusy of r.
func (t *dirTable) setBusy(r dirRef, x *dirBusy) {
	s := r.span
	if s.busy == nil {
		if x == nil {
			return
		}
		s.busy = t.spare.get(len(s.ents))
	}
	switch old := s.busy[r.k]; {
	case old == nil && x != nil:
		s.nbusy++
	case old != nil && x == nil:
		s.nbusy--
	}
	s.busy[r.k] = x
	if s.nbusy == 0 {
		// Every pointer in it is nil again.
		t.spare.put(s.busy)
		s.busy = nil
	}
}

// allBusy calls f for every dirBusy until f returns false.
func (t *dirTable) allBusy(f func(*dirBusy) bool) {
	for _, s := range t.spans {
		if s != nil && !s.eachBusy(f) {
			return
		}
	}
	for _, s := range t.stray {
		if !s.eachBusy(f) {
			return
		}
	}
}

// eachBusy calls f for every dirBusy of the span until f returns false,
// and reports whether f never did.
func (s *dirEntries) eachBusy(f func(*dirBusy) bool) bool {
	for _, x := range s.busy {
		if x != nil && !f(x) {
			return false
		}
	}
	return true
}

// newSpan makes the entries of span c.
func (t *dirTable) newSpan(c int) *dirEntries {
	s := &dirEntries{}
	k := 0
	for i := range min(dirSpan, t.pages-c*dirSpan) {
		if i%64 == 0 {
			s.below[i/64] = uint16(k)
		}
		if t.home(PageID(c*dirSpan+i)) == t.id {
			s.homed[i/64] |= 1 << (i % 64)
			k++
		}
	}
	s.ents = make([]dirEntry, k)
	if t.n <= seenDenseMax {
		s.seen = make([]uint32, k*t.n)
	}
	return s
}

// seenKey is the key of the request id of node n for page p in
// dirTable.seen.
func seenKey(p PageID, n NodeID) uint64 { return uint64(p)<<16 | uint64(n) }

// lastSeen returns the newest request id accepted from node n for page p,
// whose entry is r (0: none).
func (t *dirTable) lastSeen(p PageID, r dirRef, n NodeID) uint64 {
	if r.span.seen == nil {
		return t.seen[seenKey(p, n)]
	}
	switch v := r.span.seen[r.k*t.n+int(n)]; v {
	case seenNone:
		return 0
	case seenBig:
		return t.seenBig[seenKey(p, n)]
	default:
		return t.seenBase[n] + uint64(v)
	}
}

// setSeen records req as the newest request id accepted from node n for
// page p, whose entry is r.
func (t *dirTable) setSeen(p PageID, r dirRef, n NodeID, req uint64) {
	if r.span.seen == nil {
		if t.seen == nil {
			t.seen = map[uint64]uint64{}
		}
		t.seen[seenKey(p, n)] = req
		return
	}
	if t.seenBase == nil {
		t.seenBase, t.seenSet = make([]uint64, t.n), make([]bool, t.n)
	}
	if !t.seenSet[n] {
		// Room for ids below the first one, which may come later.
		t.seenBase[n], t.seenSet[n] = max(req, 1<<31)-1<<31, true
	}
	v := &r.span.seen[r.k*t.n+int(n)]
	if *v == seenBig {
		delete(t.seenBig, seenKey(p, n))
	}
	if base := t.seenBase[n]; req > base && req-base < uint64(seenBig) {
		*v = uint32(req - base)
		return
	}
	if t.seenBig == nil {
		t.seenBig = map[uint64]uint64{}
	}
	*v = seenBig
	t.seenBig[seenKey(p, n)] = req
}

// sparePool keeps a few emptied busy arrays (every pointer nil) for reuse.
// One is not enough: chunks take turns (a stencil's two grids lie in
// different chunks, and their pages go busy and idle in alternation), and
// with a single spare every turn allocated an array.
type sparePool[T any] struct{ free [][]*T }

// maxSpare bounds the arrays a pool keeps: 4 KiB each for a chunk of
// local states.
const maxSpare = 8

// get returns an array of n nil pointers.
func (s *sparePool[T]) get(n int) []*T {
	for i := len(s.free) - 1; i >= 0; i-- {
		if b := s.free[i]; cap(b) >= n {
			s.free[i] = s.free[len(s.free)-1]
			s.free = s.free[:len(s.free)-1]
			return b[:n]
		}
	}
	return make([]*T, n)
}

// put keeps b, whose pointers are all nil, if the pool has room.
func (s *sparePool[T]) put(b []*T) {
	if len(s.free) < maxSpare {
		s.free = append(s.free, b)
	}
}
