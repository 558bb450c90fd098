package dsm

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/internal/layout"
)

// An AllocOption changes how New and MakeSlice place an object.
type AllocOption interface{ applyAlloc(*allocConfig) }

type allocConfig struct {
	align  uint64
	name   string
	rc     bool
	blocks bool
	unit   uint64 // BlockHomesOf's unit in bytes; 0: one page
}

type consistency bool

func (c consistency) applyAlloc(cfg *allocConfig) { cfg.rc = bool(c) }

// ReleaseConsistent places an allocation (Region.Alloc, Region.AllocStruct,
// New, MakeSlice) in the region's release-consistent area, where several
// nodes may write one page at once: a node's writes reach another node when
// the writer has released (Mutex.Unlock, Barrier, Region.Release) and the
// reader has acquired (Mutex.Lock of a lock released after the writes,
// Barrier, Region.Acquire). Programs free of data races read what they
// would under sequential consistency; a data race (two nodes writing the
// same bytes without an order between them) is found by the bytes' home and
// reported by the analyzer as class "data race".
//
// sync/atomic operations on such memory are atomic on the node only: they
// do not order anything across nodes, and two nodes' atomic adds to one
// word are a data race. Keep words that atomics share between nodes in
// sequentially consistent memory (allocations without this option).
//
// The cluster must keep a release-consistent area (dsmnode run --rc-size,
// serve --rc-size); release-consistent memory cannot be freed yet.
const ReleaseConsistent consistency = true

type blockHomes struct{ unit uint64 }

func (b blockHomes) applyAlloc(cfg *allocConfig) { cfg.blocks, cfg.unit = true, b.unit }

// BlockHomes homes a release-consistent allocation's pages in contiguous
// blocks, one per node in node order, instead of spreading them over the
// nodes by hash: of an allocation of P pages on N nodes, node i is the
// home of pages ⌊i·P/N⌋ up to ⌊(i+1)·P/N⌋. A program that splits an array
// into bands the same way, one per node, then finds each band's pages at
// home on the node that writes them: the home writes them in place, and
// its releases cost nothing for them until another node reads one. It
// applies with ReleaseConsistent only; every daemon of the cluster learns
// the distribution before the allocation returns.
//
// BlockHomesOf splits in units of several pages instead, for bands that
// are whole numbers of larger units (rows of a grid, say).
var BlockHomes AllocOption = blockHomes{}

// BlockHomesOf is BlockHomes with blocks made of whole units of unit bytes,
// a multiple of the page size: of an allocation of U units on N nodes,
// node i is the home of units ⌊i·U/N⌋ up to ⌊(i+1)·U/N⌋ (the last unit
// may be short). A band decomposition that gives node i rows ⌊i·R/N⌋ up to
// ⌊(i+1)·R/N⌋ of R rows, each of whole pages, matches BlockHomesOf(row
// bytes).
func BlockHomesOf(unit int) AllocOption { return blockHomes{unit: uint64(max(unit, 0))} }

// Align places the object at a multiple of the given number of bytes (a
// power of two up to 64 KiB). Align(r.PageSize()) gives the object pages of
// its own: nothing another node writes shares a page with it, which is how a
// program keeps per-node data from false sharing. CacheLine keeps it on
// cache lines of its own.
type Align int

func (a Align) applyAlloc(c *allocConfig) { c.align = max(c.align, uint64(a)) }

// CacheLine is the alignment that keeps an object on cache lines of its own.
const CacheLine Align = 64

// Name gives the object a name in the layout analyzer's reports: the object
// at offset off is reported as "name@0xOFF" (and its fields, for a struct
// type, as "name@0xOFF.Field"). Naming costs a message to the daemon per
// allocation; unnamed objects cost none.
type Name string

func (n Name) applyAlloc(c *allocConfig) { c.name = string(n) }

// New allocates a zeroed T in the region's shared heap and returns a
// pointer to it, valid on every node at the same address. The allocation is
// served from this node's arena (no message when the arena has room) and
// aligned to T's alignment or to an Align option.
//
// T must not hold Go strings, maps, channels, functions or interfaces: the
// memory they point to lives in one program's heap, which other nodes
// cannot see and Go's garbage collector does not know is referenced from
// the region. Pointers and slices are fine when they point into the region.
func New[T any](r *Region, opts ...AllocOption) (*T, error) {
	var t T
	p, err := r.newObject(reflect.TypeOf(&t).Elem(), 1, opts)
	if err != nil {
		return nil, err
	}
	return (*T)(p), nil
}

// MakeSlice allocates n zeroed elements of type T in the region's shared
// heap, as New does, and returns them as a slice (length and capacity n).
func MakeSlice[T any](r *Region, n int, opts ...AllocOption) ([]T, error) {
	if n <= 0 {
		return nil, fmt.Errorf("dsm: MakeSlice of %d elements: n must be > 0", n)
	}
	var t T
	p, err := r.newObject(reflect.TypeOf(&t).Elem(), n, opts)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*T)(p), n), nil
}

// Free returns to the heap what New or MakeSlice returned (p is that
// pointer or slice). Any node may free any object. Freeing something else
// (a pointer into an object, a named allocation, memory outside the heap)
// is an error, and so is freeing an object twice, unless it was allocated
// again in between (then the second Free frees the new object, as with
// any allocator). The object's memory is zeroed.
func Free(r *Region, p any) error {
	v := reflect.ValueOf(p)
	if !v.IsValid() || (v.Kind() != reflect.Pointer && v.Kind() != reflect.Slice) {
		return fmt.Errorf("dsm: Free of a %T: give the pointer or slice that New or MakeSlice returned", p)
	}
	if v.IsNil() {
		return errors.New("dsm: Free of nil")
	}
	addr := v.Pointer()
	base := uintptr(r.geo.Base)
	if addr < base || addr >= base+uintptr(len(r.mem)) {
		return fmt.Errorf("dsm: Free of %#x: not in the region [%#x, %#x)", addr, base, base+uintptr(len(r.mem)))
	}
	if err := r.heapFree(uint64(addr - base)); err != nil {
		return fmt.Errorf("dsm: Free of %#x: %w", addr, err)
	}
	return nil
}

// newObject allocates n values of type t.
func (r *Region) newObject(t reflect.Type, n int, opts []AllocOption) (unsafe.Pointer, error) {
	if err := checkShareable(t); err != nil {
		return nil, fmt.Errorf("dsm: allocate %v: %w", t, err)
	}
	cfg := allocConfig{align: uint64(t.Align())}
	for _, o := range opts {
		o.applyAlloc(&cfg)
	}
	if cfg.align == 0 || cfg.align&(cfg.align-1) != 0 || cfg.align > chunkSize {
		return nil, fmt.Errorf("dsm: allocate %v: alignment %d must be a power of two up to %d", t, cfg.align, chunkSize)
	}
	size := uint64(max(t.Size(), 1))
	if uint64(n) > uint64(len(r.mem))/size {
		return nil, fmt.Errorf("dsm: allocate %d × %v: %w: %d bytes asked, the region has %d; start the cluster with a larger region (dsmnode run -size BYTES, dsmnode serve --size BYTES)", n, t, ErrFull, uint64(n)*size, len(r.mem))
	}
	size *= uint64(n)
	if cfg.blocks && !cfg.rc {
		return nil, fmt.Errorf("dsm: allocate %v: BlockHomes applies to release-consistent memory only (add dsm.ReleaseConsistent)", t)
	}
	if ps := uint64(r.PageSize()); cfg.unit%ps != 0 {
		return nil, fmt.Errorf("dsm: allocate %v: BlockHomesOf(%d): the unit must be a multiple of the page size (%d)", t, cfg.unit, ps)
	}
	off, err := r.heapAlloc(size, cfg.align, cfg.rc)
	if err != nil {
		return nil, fmt.Errorf("dsm: allocate %v: %w", t, err)
	}
	if cfg.blocks {
		if err := r.homeBlocks(context.Background(), off, size, cfg.unit); err != nil {
			return nil, fmt.Errorf("dsm: allocate %v: %w", t, err)
		}
	}
	if cfg.name != "" {
		name := fmt.Sprintf("%s@%#x", cfg.name, off)
		var fields []ctl.Field
		if n == 1 && (t.Kind() == reflect.Struct || t.Kind() == reflect.Array) {
			vars, err := layout.Vars(name, 0, reflect.Zero(t).Interface())
			if err == nil {
				for _, v := range vars {
					fields = append(fields, ctl.Field{Name: v.Name, Offset: v.Offset, Size: v.Size})
				}
			}
		}
		if err := r.register(context.Background(), name, off, size, fields); err != nil {
			r.heapFree(off)
			return nil, fmt.Errorf("dsm: allocate %v named %q: %w", t, cfg.name, err)
		}
	}
	return unsafe.Pointer(&r.mem[off]), nil
}

var shareable sync.Map // reflect.Type -> error (nil when fine)

// checkShareable refuses types whose values point into one program's Go
// heap.
func checkShareable(t reflect.Type) error {
	if v, ok := shareable.Load(t); ok {
		err, _ := v.(error)
		return err
	}
	err := shareableErr(t, t.String(), 0)
	shareable.Store(t, err)
	return err
}

func shareableErr(t reflect.Type, path string, depth int) error {
	if depth > 32 {
		return nil // a recursive type through pointers: checked above
	}
	switch t.Kind() {
	case reflect.String, reflect.Map, reflect.Chan, reflect.Func, reflect.Interface, reflect.UnsafePointer:
		return fmt.Errorf("%s is a %v, whose memory lives in one program's Go heap, out of other nodes' reach; use fixed-size arrays, or pointers and slices into the region", path, t.Kind())
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			if err := shareableErr(f.Type, path+"."+f.Name, depth+1); err != nil {
				return err
			}
		}
	case reflect.Array:
		return shareableErr(t.Elem(), path+"[i]", depth+1)
	case reflect.Pointer, reflect.Slice:
		// Allowed: they must point into the region, which cannot be
		// checked here. Their element types must be shareable too.
		if t.Elem().Kind() == reflect.Struct && depth > 0 {
			return nil // a linked structure; its type is checked where it is allocated
		}
		return shareableErr(t.Elem(), path+"[*]", depth+1)
	}
	return nil
}

// homeBlocks asks the daemon to home [off, off+size) in blocks, and
// returns once every daemon of the cluster knows.
func (r *Region) homeBlocks(ctx context.Context, off, size, unit uint64) error {
	if ps := uint64(r.PageSize()); unit%ps != 0 {
		return fmt.Errorf("home the pages in blocks: a unit of %d bytes is not a multiple of the page size (%d)", unit, ps)
	}
	if err := r.call(ctx, ctl.Request{Op: ctl.OpHomeBlocks, Offset: off, Size: size, Unit: unit}, nil); err != nil {
		return fmt.Errorf("home the pages in blocks: %w", err)
	}
	return nil
}
