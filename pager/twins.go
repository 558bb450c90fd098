package pager

import "github.com/dsmrt/dsm/coherence"

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

// twinStore holds at most max twins and forgets the oldest first.
type twinStore struct {
	max   int
	twins map[coherence.PageID]twin
	fifo  []twinRef // in the order twins were made; stale entries are skipped
	head  int       // fifo[head] is the oldest entry
	seq   uint64
	free  [][]byte // buffers of forgotten twins, for reuse
	size  int      // page size
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
			t.buf = make([]byte, s.size)
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
