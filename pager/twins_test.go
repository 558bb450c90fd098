package pager

import (
	"bytes"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/coherence"
)

func TestTwinStoreForgetsTheOldest(t *testing.T) {
	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, 16) }
	s := newTwinStore(3, 16)
	for p := coherence.PageID(1); p <= 3; p++ {
		s.put(p, page(byte(p)))
	}
	s.put(1, page(11)) // made again: now the newest
	s.put(4, page(4))  // full: 2 is the oldest
	require.Equal(t, 3, s.len())
	_, ok := s.get(2)
	require.False(t, ok, "the oldest twin stays")
	for p, want := range map[coherence.PageID]byte{1: 11, 3: 3, 4: 4} {
		got, ok := s.get(p)
		require.True(t, ok, "page %d", p)
		require.Equal(t, page(want), got, "page %d", p)
	}
	s.drop(3)
	require.False(t, s.has(3))
	s.put(5, page(5)) // room again: nothing forgotten
	require.True(t, s.has(1) && s.has(4) && s.has(5))
	s.put(6, page(6)) // full: 1, made again before 4 and 5, is now the oldest
	require.False(t, s.has(1))
	require.True(t, s.has(4) && s.has(5) && s.has(6))
}

// The store's memory stays at its budget however many pages pass through
// it, and its queue of ages does not grow without bound.
func TestTwinStoreStaysWithinBudget(t *testing.T) {
	s := newTwinStore(64, 4096)
	buf := make([]byte, 4096)
	for p := coherence.PageID(0); p < 100000; p++ {
		s.put(p%5000, buf)
		if p%7 == 0 {
			s.drop(p % 5000)
		}
	}
	require.LessOrEqual(t, s.len(), 64)
	require.Less(t, cap(s.fifo), 8*1024, "the queue of ages is reclaimed")
	require.LessOrEqual(t, len(s.free)+s.len(), 64, "no more buffers than the budget")
}

// The twins' buffers live outside the Go heap, where the collector's
// headroom does not double them: a full store adds little to the heap.
func TestTwinStoreBuffersAreOffTheHeap(t *testing.T) {
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	const n, size = 1024, 4096
	before := heap()
	s := newTwinStore(n, size)
	for p := coherence.PageID(0); p < n; p++ {
		s.put(p, bytes.Repeat([]byte{byte(p)}, size))
	}
	grew := int64(heap()) - int64(before)
	require.Less(t, grew, int64(n*size/8), "the heap grew by %d bytes for %d twins of %d bytes", grew, n, size)
	for p := coherence.PageID(0); p < n; p++ {
		got, ok := s.get(p)
		require.True(t, ok)
		require.Equal(t, bytes.Repeat([]byte{byte(p)}, size), got, "page %d", p)
	}
	runtime.KeepAlive(s)
}
