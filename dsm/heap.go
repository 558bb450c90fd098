package dsm

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/dsmrt/dsm/internal/heaplayout"
)

// The allocator keeps all of its state in the shared region itself, so
// that every node sees the same heap through the same coherence protocol
// that keeps the program's data: no daemon holds a table a program must ask
// for, a node that allocates in its own arena touches only pages it
// already owns, and the state survives the program that made it (a region
// lives as long as its cluster, like a POSIX shared memory object).
//
// The region is laid out in chunks of chunkSize bytes, with the allocator's
// metadata at its end (for a 64 MiB region with 4 KiB pages: 1,021 chunks
// and 192 KiB of metadata):
//
//	[0, nchunks*chunkSize)   chunks: runs of named allocations, per-node
//	                         arenas of small objects, large objects
//	header page              magic word (with the geometry), the cursor and
//	                         end of the current run of named allocations
//	name table               slots of slotBytes bytes: state, hash, offset,
//	                         size, alignment, name
//	chunk table              one word per chunk: free, named, small (class
//	                         and owner node), large head (length) or
//	                         continuation
//
// The end of the region was chosen because programs written before the heap
// existed use the first bytes of the region directly.
//
// A small-object chunk belongs to one node (its arena): its first page is a
// bitmap of the chunk's slots, all of one size class, and the slots fill the
// rest. Allocation sets a bit with compare-and-swap, so a free by another
// node (which clears one) needs no lock. Free memory is always zero: Free
// clears an object before it clears its bit, and a chunk fresh from the
// table was never used or was cleared when its large object was freed; so
// New never writes to memory it hands out, and a large allocation does not
// fault in every one of its pages.
//
// Named allocations are placed one after the other in runs of chunks, under
// a cluster-wide lock (allocLock). Whatever node allocates a name first
// fixes its offset; the placement follows the cluster-wide order of first
// allocations, so names a program allocates one after the other share a
// page as they would in a struct (the false-sharing demo relies on it).
const (
	chunkSize  = heaplayout.ChunkSize
	slotBytes  = heaplayout.SlotBytes
	maxNameLen = slotBytes - sfName
	allocLock  = "dsm/alloc"

	// Offsets of the fields of a name slot.
	sfState   = 0
	sfHash    = 8
	sfOff     = 16
	sfSize    = 24
	sfAlign   = 32
	sfNameLen = 40
	sfName    = 48

	// Offsets in the header page.
	hdrMagic    = 0
	hdrCursor   = 8 // named allocations, sequentially consistent
	hdrEnd      = 16
	hdrRCCursor = 24 // named allocations, release-consistent
	hdrRCEnd    = 32

	// Kinds of chunk table entries (the low byte).
	chunkFree    = 0
	chunkNamed   = 1
	chunkSmall   = 2 // bits 8-15 size class, 16-31 owner node
	chunkLarge   = 3 // bits 16-31 owner node, 32-63 length in chunks
	chunkCont    = 4 // bits 32-63 the head's index
	chunkFreeing = 5 // a large object being freed
	chunkRC      = 6 // release-consistent objects of one node: bits 16-31 owner node, 32-63 length in chunks

	// largest size served from a small-object chunk
	maxSmall = 16 << 10
)

// classes are the slot sizes of small-object chunks. A class serves an
// alignment a when its size is a multiple of a (slots start on a page), so
// the list has multiples of 64 (cache lines) and of 4096 (pages).
var classes = [...]uint64{
	16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512,
	640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
	8192, 12288, 16384,
}

// heapGeo is where the allocator's structures lie in a region.
type heapGeo = heaplayout.Layout

// heapState is this program's view of the heap: the geometry, and the
// chunks of this node's arena by class.
type heapState struct {
	once  sync.Once
	err   error
	geo   heapGeo
	names *Mutex

	mu sync.Mutex
	// This program's run of release-consistent chunks: the next free byte
	// and the run's end.
	rcCursor, rcEnd uint64
	found           bool                   // the chunk table was searched for this node's chunks
	mine            [len(classes)][]uint32 // this node's chunks, by class
	cur             [len(classes)]int      // where the last allocation of a class succeeded
}

// word is the shared word at offset off of the region.
func (r *Region) word(off uint64) *uint64 {
	return (*uint64)(unsafe.Pointer(&r.mem[off]))
}

// heap checks, once, that the region's allocator state is ours (or
// untouched, and then claims it) and returns the geometry.
func (r *Region) heap() (*heapState, error) {
	h := &r.hp
	h.once.Do(func() {
		h.geo, h.err = heaplayout.New(uint64(len(r.mem)), uint64(r.geo.PageSize), r.geo.RCSize)
		if h.err != nil {
			return
		}
		h.names = r.Mutex(allocLock)
		p := r.word(h.geo.Meta + hdrMagic)
		if atomic.CompareAndSwapUint64(p, 0, h.geo.Magic) {
			return // an untouched region is an empty heap: all zeros
		}
		if v := atomic.LoadUint64(p); v != h.geo.Magic {
			h.err = fmt.Errorf("the allocator's header at offset %d holds %#x, not this version's %#x: a program wrote there directly (the last %d bytes of the region are the allocator's), or the region was used by another version; restart the cluster",
				h.geo.Meta, v, h.geo.Magic, uint64(len(r.mem))-h.geo.Meta)
		}
	})
	if h.err != nil {
		return nil, h.err
	}
	r.mu.Lock()
	err := r.usable()
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return h, nil
}

func (r *Region) entry(g *heapGeo, i uint64) *uint64 { return r.word(g.Table + 8*i) }

// claimRun claims k consecutive free chunks of [lo, hi), searching from
// chunk from onwards and then from lo, and returns the first. The head entry
// gets value head; the others cont(head index). It claims entry by entry
// with compare-and-swap and gives back what it took when another node took
// a chunk of the run first.
func (r *Region) claimRun(g *heapGeo, lo, hi, k, from uint64, head uint64, cont func(first uint64) uint64) (uint64, bool) {
	if k == 0 || k > hi-lo {
		return 0, false
	}
	try := func(lo, hi uint64) (uint64, bool) {
	next:
		for s := lo; s+k <= hi; s++ {
			for j := s; j < s+k; j++ {
				if atomic.LoadUint64(r.entry(g, j)) != chunkFree {
					s = j // the loop's s++ moves past it
					continue next
				}
			}
			for j := s; j < s+k; j++ {
				v := head
				if j > s {
					v = cont(s)
				}
				if !atomic.CompareAndSwapUint64(r.entry(g, j), chunkFree, v) {
					for u := s; u < j; u++ {
						atomic.StoreUint64(r.entry(g, u), chunkFree)
					}
					s = j
					continue next
				}
			}
			return s, true
		}
		return 0, false
	}
	from = min(max(from, lo), hi)
	if s, ok := try(from, hi); ok {
		return s, true
	}
	return try(lo, min(from+k-1, hi))
}

// classFor is the smallest class that holds size bytes at alignment align,
// or -1 when the object is large.
func classFor(size, align uint64) int {
	if size > maxSmall || align > 4096 {
		return -1
	}
	for i, c := range classes {
		if c >= size && c%align == 0 {
			return i
		}
	}
	return -1
}

func slotsIn(g *heapGeo, c int) uint64 { return (chunkSize - g.PageSize) / classes[c] }

// heapAlloc returns the offset of size zeroed bytes aligned to align (a
// power of two, at most chunkSize) from this node's arena, or a run of
// chunks when large.
func (r *Region) heapAlloc(size, align uint64, rc bool) (uint64, error) {
	h, err := r.heap()
	if err != nil {
		return 0, err
	}
	g := &h.geo
	me := uint64(r.geo.Node)
	if rc {
		return r.rcAlloc(h, size, align)
	}
	lo, hi := uint64(0), g.RCFirst
	from := me * hi / uint64(max(r.geo.Nodes, 1))
	c := classFor(size, align)
	if c < 0 {
		k := (size + chunkSize - 1) / chunkSize
		first, ok := r.claimRun(g, lo, hi, k, from, chunkLarge|me<<16|k<<32, func(s uint64) uint64 { return chunkCont | s<<32 })
		if !ok {
			return 0, r.fullError(g, size, false)
		}
		return first * chunkSize, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.found {
		// Chunks this node's earlier programs claimed are still its arena.
		for i := uint64(0); i < g.Chunks; i++ {
			v := atomic.LoadUint64(r.entry(g, i))
			if i < g.RCFirst && v&0xff == chunkSmall && v>>16&0xffff == me {
				cls := int(v >> 8 & 0xff)
				if cls < len(classes) {
					h.mine[cls] = append(h.mine[cls], uint32(i))
				}
			}
		}
		h.found = true
	}
	list := h.mine[c]
	for i := range list {
		j := (h.cur[c] + i) % len(list)
		if off, ok := r.takeSlot(g, uint64(list[j]), c); ok {
			h.cur[c] = j
			return off, nil
		}
	}
	idx, ok := r.claimRun(g, lo, hi, 1, from, chunkSmall|uint64(c)<<8|me<<16, nil)
	if !ok {
		return 0, r.fullError(g, size, false)
	}
	h.mine[c] = append(list, uint32(idx))
	h.cur[c] = len(h.mine[c]) - 1
	off, ok := r.takeSlot(g, idx, c)
	if !ok {
		return 0, fmt.Errorf("chunk %d was free but its slot map is not empty: a program wrote into the heap directly", idx)
	}
	return off, nil
}

// takeSlot sets the first clear bit of chunk idx's slot map and returns the
// slot's offset.
func (r *Region) takeSlot(g *heapGeo, idx uint64, c int) (uint64, bool) {
	n := slotsIn(g, c)
	base := idx * chunkSize
	for w := uint64(0); w*64 < n; w++ {
		p := r.word(base + 8*w)
		for v := atomic.LoadUint64(p); v != ^uint64(0); v = atomic.LoadUint64(p) {
			b := uint64(bits.TrailingZeros64(^v))
			if w*64+b >= n {
				break
			}
			if atomic.CompareAndSwapUint64(p, v, v|1<<b) {
				return base + g.PageSize + (w*64+b)*classes[c], true
			}
		}
	}
	return 0, false
}

// rcAlloc places size bytes in this program's run of release-consistent
// chunks, one after the other. The allocator's own state must stay
// sequentially consistent, so release-consistent objects carry none: they
// are not freed (Free refuses them), and a program's unused tail of its
// last run stays unused.
func (r *Region) rcAlloc(h *heapState, size, align uint64) (uint64, error) {
	g := &h.geo
	if g.RCFirst == g.Chunks {
		return 0, errors.New("the cluster keeps no release-consistent area; start it with one (dsmnode run --rc-size BYTES, dsmnode serve --rc-size BYTES, rc_size in the config)")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	off := roundUp(h.rcCursor, align)
	if h.rcEnd == 0 || off+size > h.rcEnd {
		me := uint64(r.geo.Node)
		k := (size + chunkSize - 1) / chunkSize
		from := g.RCFirst + me*(g.Chunks-g.RCFirst)/uint64(max(r.geo.Nodes, 1))
		first, ok := r.claimRun(g, g.RCFirst, g.Chunks, k, from, chunkRC|me<<16|k<<32, func(s uint64) uint64 { return chunkCont | s<<32 })
		if !ok {
			return 0, r.fullError(g, size, true)
		}
		off, h.rcEnd = first*chunkSize, (first+k)*chunkSize
	}
	h.rcCursor = off + size
	return off, nil
}

// heapFree frees the object at offset off.
func (r *Region) heapFree(off uint64) error {
	h, err := r.heap()
	if err != nil {
		return err
	}
	g := &h.geo
	if off >= g.Chunks*chunkSize {
		return fmt.Errorf("offset %d is not in the heap (it ends at %d)", off, g.Chunks*chunkSize)
	}
	idx := off / chunkSize
	e := r.entry(g, idx)
	v := atomic.LoadUint64(e)
	switch v & 0xff {
	case chunkSmall:
		c := int(v >> 8 & 0xff)
		if c >= len(classes) {
			return fmt.Errorf("chunk %d has a bad entry %#x", idx, v)
		}
		rel := off - idx*chunkSize
		if rel < g.PageSize || (rel-g.PageSize)%classes[c] != 0 {
			return fmt.Errorf("offset %d is inside an object of %d bytes, not at its start", off, classes[c])
		}
		slot := (rel - g.PageSize) / classes[c]
		p := r.word(idx*chunkSize + 8*(slot/64))
		bit := uint64(1) << (slot % 64)
		if atomic.LoadUint64(p)&bit == 0 {
			return fmt.Errorf("offset %d is not allocated (a double free?)", off)
		}
		// Free memory is zero: clear the object before the slot can be
		// taken again.
		clear(r.mem[off : off+classes[c]])
		for {
			old := atomic.LoadUint64(p)
			if old&bit == 0 {
				return fmt.Errorf("offset %d was freed twice at once", off)
			}
			if atomic.CompareAndSwapUint64(p, old, old&^bit) {
				return nil
			}
		}
	case chunkLarge:
		if off != idx*chunkSize {
			return fmt.Errorf("offset %d is inside an object, not at its start", off)
		}
		if !atomic.CompareAndSwapUint64(e, v, chunkFreeing) {
			return fmt.Errorf("offset %d was freed twice at once", off)
		}
		k := v >> 32
		clear(r.mem[off : off+k*chunkSize])
		for j := idx + k - 1; j > idx; j-- {
			atomic.StoreUint64(r.entry(g, j), chunkFree)
		}
		atomic.StoreUint64(e, chunkFree)
		return nil
	case chunkCont:
		return fmt.Errorf("offset %d is inside an object, not at its start", off)
	case chunkNamed:
		return fmt.Errorf("offset %d is a named allocation (Region.Alloc); named allocations live as long as the cluster", off)
	case chunkRC:
		return fmt.Errorf("offset %d is release-consistent memory, which cannot be freed yet: it lives as long as the cluster", off)
	default:
		return fmt.Errorf("offset %d is not allocated (a double free?)", off)
	}
}

// fullError says how much of the region is used and how to grow it.
func (r *Region) fullError(g *heapGeo, asked uint64, rc bool) error {
	var named, heap, free, run, longest uint64
	lo, hi, area, flag := uint64(0), g.RCFirst, "sequentially consistent part of the region", "-size"
	if rc {
		lo, hi, area, flag = g.RCFirst, g.Chunks, "release-consistent area", "--rc-size"
	}
	for i := lo; i < hi; i++ {
		switch atomic.LoadUint64(r.entry(g, i)) & 0xff {
		case chunkFree:
			free++
			run++
			longest = max(longest, run)
			continue
		case chunkNamed:
			named++
		default:
			heap++
		}
		run = 0
	}
	return fmt.Errorf("%w: %d bytes asked; of the %s's %d bytes, %d are in use (named allocations %d, heap %d; allocator metadata %d more) and the largest free run is %d bytes; start the cluster with a larger one (dsmnode run %s BYTES, dsmnode serve %s BYTES)",
		ErrFull, asked, area, (hi-lo)*chunkSize, (named+heap)*chunkSize, named*chunkSize, heap*chunkSize, uint64(len(r.mem))-g.Meta, longest*chunkSize, flag, flag)
}

// ErrFull reports that the region has no room for an allocation.
var ErrFull = fmt.Errorf("dsm: the region is full")

// allocNamed returns the offset of the named allocation, placing it if no
// node did yet. It runs under the cluster-wide allocation lock.
func (r *Region) allocNamed(ctx context.Context, name string, size, align uint64, rc, blocks bool) (uint64, error) {
	if len(name) > maxNameLen {
		return 0, fmt.Errorf("the name is %d bytes long; names have at most %d", len(name), maxNameLen)
	}
	if align > chunkSize {
		return 0, fmt.Errorf("alignment %d is larger than the allocator's %d", align, chunkSize)
	}
	h, err := r.heap()
	if err != nil {
		return 0, err
	}
	g := &h.geo
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	if err := h.names.Lock(ctx); err != nil {
		return 0, fmt.Errorf("take the cluster's allocation lock: %w", err)
	}
	defer h.names.Unlock()
	hf := fnv.New64a()
	hf.Write([]byte(name))
	sum := hf.Sum64()
	var slot uint64
	found := false
	for i := uint64(0); i < g.Slots; i++ {
		s := g.Names + ((sum+i)&(g.Slots-1))*slotBytes
		if *r.word(s + sfState) == 0 {
			slot, found = s, true
			break
		}
		if *r.word(s + sfHash) == sum {
			n := *r.word(s + sfNameLen)
			if n == uint64(len(name)) && string(r.mem[s+sfName:s+sfName+n]) == name {
				off, sz, al := *r.word(s + sfOff), *r.word(s + sfSize), *r.word(s + sfAlign)
				if sz != size || al != align {
					return 0, fmt.Errorf("asked for %d bytes aligned to %d, but the cluster has it as %d bytes aligned to %d at offset %d (the first node to allocate a name fixes it)", size, align, sz, al, off)
				}
				if st := *r.word(s + sfState); st != modeState(rc, blocks) {
					return 0, fmt.Errorf("asked for it %s, but the cluster has it %s at offset %d (the first node to allocate a name fixes it)", modeName(modeState(rc, blocks)), modeName(st), off)
				}
				return off, nil
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("the name table is full (%d names)", g.Slots)
	}
	cursor, end := r.word(g.Meta+hdrCursor), r.word(g.Meta+hdrEnd)
	lo, hi := uint64(0), g.RCFirst
	if rc {
		if g.RCFirst == g.Chunks {
			return 0, errors.New("the cluster keeps no release-consistent area; start it with one (dsmnode run --rc-size BYTES, dsmnode serve --rc-size BYTES, rc_size in the config)")
		}
		cursor, end = r.word(g.Meta+hdrRCCursor), r.word(g.Meta+hdrRCEnd)
		lo, hi = g.RCFirst, g.Chunks
	}
	off := roundUp(*cursor, align)
	if *end == 0 || off+size > *end {
		k := (size + chunkSize - 1) / chunkSize
		first, ok := r.claimRun(g, lo, hi, k, lo, chunkNamed, func(uint64) uint64 { return chunkNamed })
		if !ok {
			return 0, r.fullError(g, size, rc)
		}
		off = first * chunkSize
		*end = off + k*chunkSize
	}
	*cursor = off + size
	*r.word(slot + sfHash) = sum
	*r.word(slot + sfOff) = off
	*r.word(slot + sfSize) = size
	*r.word(slot + sfAlign) = align
	*r.word(slot + sfNameLen) = uint64(len(name))
	copy(r.mem[slot+sfName:], name)
	atomic.StoreUint64(r.word(slot+sfState), modeState(rc, blocks))
	return off, nil
}

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// The states of a used name slot: the allocation's consistency, and for
// release-consistent memory, whether its pages are homed in blocks.
func modeState(rc, blocks bool) uint64 {
	switch {
	case rc && blocks:
		return 3
	case rc:
		return 2
	}
	return 1
}

func modeName(st uint64) string {
	switch st {
	case 3:
		return "release-consistent with pages homed in blocks (BlockHomes)"
	case 2:
		return "release-consistent"
	}
	return "sequentially consistent"
}
