package analyzer

import (
	"slices"
	"time"
)

// pageCount is what the analyzer keeps about every page that migrated,
// whether or not the page is analysed in detail: 16 bytes a page.
type pageCount struct {
	migrations uint32 // every transfer, saturating
	writes     uint32 // ownership transfers, saturating
	cost       time.Duration
}

// add counts one transfer.
func (c *pageCount) add(write bool, cost time.Duration) {
	if c.migrations < ^uint32(0) {
		c.migrations++
	}
	if write && c.writes < ^uint32(0) {
		c.writes++
	}
	c.cost += cost
}

// quiet reports whether a page with these counts is Quiet whatever its
// written ranges: too few ownership transfers to ping-pong for writes and
// too few read copies to be read-mostly.
func (c *pageCount) quiet() bool {
	reads := c.migrations - c.writes
	return c.writes < MinWriteMigrations && !(reads >= MinReadMigrations && reads > c.writes)
}

// chunkShift sets the pages per chunk of a pageTable: 1,024 pages, 16 KiB.
const chunkShift = 10

type chunk [1 << chunkShift]pageCount

// pageTable holds a pageCount per page. Chunks are allocated when a page of
// theirs first migrates, so the table grows with the part of the region that
// moved (16 bytes a page, 4 MiB for a GiB of 4 KiB pages) and a stray page
// number costs one chunk, not an array up to it. Chunks never move, so a
// *pageCount stays valid.
type pageTable struct {
	chunks map[uint32]*chunk
	ids    []uint32 // keys of chunks, sorted
	lastID uint32   // the chunk of the previous get: records of one
	last   *chunk   // page, or of neighbouring pages, tend to follow each other
}

// get returns the counts of page p, allocating its chunk if needed.
func (t *pageTable) get(p uint32) *pageCount {
	id := p >> chunkShift
	if t.last == nil || t.lastID != id {
		c := t.chunks[id]
		if c == nil {
			if t.chunks == nil {
				t.chunks = make(map[uint32]*chunk)
			}
			c = new(chunk)
			t.chunks[id] = c
			i, _ := slices.BinarySearch(t.ids, id)
			t.ids = slices.Insert(t.ids, i, id)
		}
		t.lastID, t.last = id, c
	}
	return &t.last[p&(1<<chunkShift-1)]
}

// each calls fn for every page in [lo, hi) that migrated, in page order.
func (t *pageTable) each(lo, hi uint64, fn func(p uint32, c *pageCount)) {
	hi = min(hi, 1<<32)
	if lo >= hi {
		return
	}
	i, _ := slices.BinarySearch(t.ids, uint32(lo>>chunkShift))
	for ; i < len(t.ids); i++ {
		id := t.ids[i]
		base := uint64(id) << chunkShift
		if base >= hi {
			return
		}
		c := t.chunks[id]
		for j := range c {
			p := base + uint64(j)
			if p >= lo && p < hi && c[j].migrations > 0 {
				fn(uint32(p), &c[j])
			}
		}
	}
}
