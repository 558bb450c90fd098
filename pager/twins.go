package pager

import (
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/coherence"
)

// Twins. When a page becomes writable here, the daemon keeps a copy of it
// as it was (its twin): the difference when the page leaves is what this
// node wrote, which the analyzer needs to tell false sharing from true, and
// a held page that differs from its twin was written (hold.go). A twin per
// writable page would cost as much memory as the region itself (a 256 MiB
// region written by every node of three: 300-530 MB beyond the memfd per
// daemon), so the twins live in a store of bounded size that forgets the
// oldest first: the pages that ping-pong, which are what the analyzer looks
// for, were made writable recently. A page whose twin was forgotten leaves
// without written ranges (the analyzer counts it as unknown) and its hold
// lasts MinHold, as a read's does.
//
// The buffers live outside the Go heap, in one anonymous mapping of the
// budget's size made at the first twin: the collector lets the heap grow to
// twice what is live before it collects (GOGC=100), so a buffer on the heap
// costs about twice its size in resident memory, while the twins are a
// fixed set of pointer-free buffers, reused, that live as long as the
// daemon. In the mapping they cost their size, and only once touched.

// twinStore holds at most max twins and forgets the oldest first.
type twinStore struct {
	max   int
	twins map[coherence.PageID]twin
	fifo  []twinRef // in the order twins were made; stale entries are skipped
	head  int       // fifo[head] is the oldest entry
	seq   uint64
	free  [][]byte // buffers of forgotten twins, for reuse
	size  int      // page size

	// arena holds max buffers of size bytes, outside the Go heap; used of
	// them were handed out. Nil until the first twin, and if the mapping
	// failed (the buffers are then made on the heap).
	arena  []byte
	used   int
	mapped bool // the mapping was tried
}

type twin struct {
	buf []byte
	seq uint64 // which fifo entry is this twin's own
}

type twinRef struct {
	page coherence.PageID
	seq  uint64
}

func newTwinStore(max, pageSize int) *twinStore {
	return &twinStore{max: max, size: pageSize, twins: make(map[coherence.PageID]twin)}
}

// get returns page p's twin.
func (s *twinStore) get(p coherence.PageID) ([]byte, bool) {
	t, ok := s.twins[p]
	return t.buf, ok
}

// has reports whether page p has a twin.
func (s *twinStore) has(p coherence.PageID) bool {
	_, ok := s.twins[p]
	return ok
}

// put makes data page p's twin, forgetting the oldest twin if the store is
// full. The store copies data.
func (s *twinStore) put(p coherence.PageID, data []byte) {
	t, ok := s.twins[p]
	if !ok {
		if len(s.twins) >= s.max {
			s.evictOldest()
		}
		if k := len(s.free); k > 0 {
			t.buf, s.free = s.free[k-1], s.free[:k-1]
		} else {
			t.buf = s.newBuf()
		}
	}
	copy(t.buf, data)
	s.seq++
	t.seq = s.seq
	s.twins[p] = t
	s.fifo = append(s.fifo, twinRef{page: p, seq: t.seq})
	if s.head > len(s.fifo)/2 && s.head > 1024 {
		// Reclaim the front of the queue.
		s.fifo = append(s.fifo[:0], s.fifo[s.head:]...)
		s.head = 0
	}
}

// newBuf returns a buffer of a page for a twin: the arena's next, or one on
// the heap if the arena could not be mapped. Buffers are never given back
// (drop keeps them for reuse), so the store never needs more than max.
func (s *twinStore) newBuf() []byte {
	if !s.mapped {
		s.mapped = true
		arena, err := unix.Mmap(-1, 0, s.max*s.size, unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err == nil {
			s.arena = arena
			// Unmapped when the store is unreachable: nodes made and
			// closed by tests leave nothing behind.
			runtime.AddCleanup(s, func(b []byte) { unix.Munmap(b) }, arena)
		}
	}
	if s.arena == nil || s.used == s.max {
		return make([]byte, s.size)
	}
	off := s.used * s.size
	s.used++
	return s.arena[off : off+s.size : off+s.size]
}

// drop forgets page p's twin.
func (s *twinStore) drop(p coherence.PageID) {
	if t, ok := s.twins[p]; ok {
		delete(s.twins, p)
		s.free = append(s.free, t.buf)
	}
	if len(s.twins) == 0 {
		s.fifo, s.head = s.fifo[:0], 0
	}
}

// evictOldest forgets the twin made longest ago.
func (s *twinStore) evictOldest() {
	for s.head < len(s.fifo) {
		r := s.fifo[s.head]
		s.head++
		if t, ok := s.twins[r.page]; ok && t.seq == r.seq {
			s.drop(r.page)
			return
		}
	}
}

// len is the number of twins kept.
func (s *twinStore) len() int { return len(s.twins) }
