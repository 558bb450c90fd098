// Package heaplayout says where the shared heap's structures lie in a
// region. It has a package of its own because two parties compute it: the
// program side (package dsm), which runs the allocator, and the daemon
// (package node), which must know which pages are release-consistent
// without asking the programs.
//
// The region is cut into chunks of ChunkSize bytes; the allocator's
// metadata (a header page, the name table and the chunk table) takes the
// last chunks. The release-consistent chunks, when the cluster keeps any
// (RCSize), are the chunks just below the metadata.
package heaplayout

import (
	"fmt"
	"math/bits"
)

// ChunkSize is the unit in which the heap hands out the region.
const ChunkSize = 64 << 10

// SlotBytes is the size of a name table slot.
const SlotBytes = 128

// Layout is where everything lies in one region.
type Layout struct {
	PageSize uint64
	Chunks   uint64 // chunks [0, Chunks) hold data
	RCFirst  uint64 // chunks [RCFirst, Chunks) are release-consistent
	Slots    uint64 // name table slots, a power of two
	Meta     uint64 // offset of the header page
	Names    uint64 // offset of the name table
	Table    uint64 // offset of the chunk table: one word per chunk
	Magic    uint64 // identifies this layout in the header
}

const magic = 0x4453_4d48_4541_5002 // "DSMHEAP" and a version

// New returns the layout of a region of size bytes with pages of pageSize
// bytes, rcSize of which (a multiple of ChunkSize) are release-consistent.
func New(size, pageSize, rcSize uint64) (Layout, error) {
	if pageSize == 0 || ChunkSize%pageSize != 0 {
		return Layout{}, fmt.Errorf("a page size of %d bytes does not divide the heap's chunks of %d", pageSize, ChunkSize)
	}
	if rcSize%ChunkSize != 0 {
		return Layout{}, fmt.Errorf("the release-consistent area of %d bytes is not a multiple of %d (64 KiB)", rcSize, ChunkSize)
	}
	n0 := size / ChunkSize
	slots := uint64(1) << bits.Len64(max(n0, 1)-1)
	slots = min(max(slots, 256), 16384)
	meta := roundUp(pageSize+slots*SlotBytes+roundUp(8*n0, pageSize), ChunkSize)
	if size < meta+ChunkSize+rcSize {
		return Layout{}, fmt.Errorf("a region of %d bytes is too small for %d release-consistent bytes and the allocator (it needs at least %d bytes)", size, rcSize, meta+ChunkSize+rcSize)
	}
	l := Layout{PageSize: pageSize, Chunks: (size - meta) / ChunkSize, Slots: slots}
	l.RCFirst = l.Chunks - rcSize/ChunkSize
	l.Meta = size - meta
	l.Names = l.Meta + pageSize
	l.Table = l.Names + slots*SlotBytes
	l.Magic = magic ^ l.Chunks<<20 ^ slots<<48 ^ pageSize ^ l.RCFirst<<34
	return l, nil
}

// RCPages returns the release-consistent pages: [lo, hi).
func (l Layout) RCPages() (lo, hi uint64) {
	return l.RCFirst * ChunkSize / l.PageSize, l.Chunks * ChunkSize / l.PageSize
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }
