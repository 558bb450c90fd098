package dsm

import (
	"errors"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/internal/heaplayout"
)

// fakeRegion is a Region over ordinary memory, for the allocator's own
// logic (which only reads and writes the region): no daemon, no faults.
// The tests that run the heap over real nodes are in heap_test.go.
func fakeRegion(t testing.TB, size uint64, node, nodes int) *Region {
	t.Helper()
	mem := make([]uint64, size/8) // 8-byte aligned, like a mapping
	return &Region{
		mem: unsafe.Slice((*byte)(unsafe.Pointer(&mem[0])), size),
		geo: ctl.Geometry{Node: node, Nodes: nodes, Base: 0x600000000000, Size: size, PageSize: 4096},
	}
}

// share makes r2 see r1's memory, as a second node would.
func share(r1 *Region, node int) *Region {
	geo := r1.geo
	geo.Node = node
	return &Region{mem: r1.mem, geo: geo}
}

func TestHeapGeometry(t *testing.T) {
	cases := []struct {
		size    uint64
		nchunks uint64
		meta    uint64
	}{
		{16 << 20, 255, 16<<20 - 64<<10},
		{64 << 20, 1021, 64<<20 - 192<<10},
		{1 << 30, 16384 - 35, 1<<30 - 35*64<<10},
	}
	for _, tc := range cases {
		g, err := heaplayout.New(tc.size, 4096, 0)
		require.NoError(t, err)
		require.Equal(t, tc.nchunks, g.Chunks, "size %d", tc.size)
		require.Equal(t, tc.meta, g.Meta, "size %d", tc.size)
		require.LessOrEqual(t, g.Chunks*chunkSize, g.Meta, "chunks overlap the metadata")
		require.LessOrEqual(t, g.Table+8*g.Chunks, tc.size, "the chunk table fits")
	}
	_, err := heaplayout.New(64<<10, 4096, 0)
	require.ErrorContains(t, err, "too small")
}

func TestHeapAllocFree(t *testing.T) {
	r := fakeRegion(t, 16<<20, 0, 2)
	type obj struct {
		size, align uint64
		off         uint64
	}
	var objs []obj
	seen := map[uint64]bool{}
	for _, sz := range []uint64{1, 8, 24, 100, 4096, 5000, 16384, 16385, 200 << 10} {
		for _, al := range []uint64{1, 8, 64, 4096, 65536} {
			off, err := r.heapAlloc(sz, al, false)
			require.NoError(t, err, "size %d align %d", sz, al)
			require.Zero(t, off%al, "size %d align %d at %d", sz, al, off)
			require.False(t, seen[off])
			seen[off] = true
			objs = append(objs, obj{sz, al, off})
		}
	}
	// No two objects overlap, and none overlaps the allocator's metadata.
	g := r.hp.geo
	for i, a := range objs {
		require.LessOrEqual(t, a.off+a.size, g.Chunks*chunkSize)
		for _, b := range objs[i+1:] {
			require.True(t, a.off+a.size <= b.off || b.off+b.size <= a.off, "%+v overlaps %+v", a, b)
		}
	}
	// Write into every object, free them; the memory is zero again and
	// the same slots come back.
	for _, o := range objs {
		for i := uint64(0); i < o.size; i++ {
			r.mem[o.off+i] = 0xAB
		}
	}
	for _, o := range objs {
		require.NoError(t, r.heapFree(o.off))
		for i := uint64(0); i < o.size; i++ {
			require.Zero(t, r.mem[o.off+i])
		}
	}
	again, err := r.heapAlloc(24, 8, false)
	require.NoError(t, err)
	require.True(t, seen[again], "freed memory is reused")
}

func TestHeapFreeErrors(t *testing.T) {
	r := fakeRegion(t, 16<<20, 0, 1)
	small, err := r.heapAlloc(24, 8, false)
	require.NoError(t, err)
	large, err := r.heapAlloc(100<<10, 8, false)
	require.NoError(t, err)
	g := r.hp.geo
	cases := []struct {
		name string
		off  uint64
		want string
	}{
		{"inside a small object", small + 8, "not at its start"},
		{"inside a large object", large + 8, "not at its start"},
		{"in a large object's second chunk", large + chunkSize, "not at its start"},
		{"a slot never allocated", small + 32, "not allocated"},
		{"a chunk never claimed", (g.Chunks - 1) * chunkSize, "not allocated"},
		{"the metadata", g.Meta, "not in the heap"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, r.heapFree(tc.off), tc.want)
		})
	}
	require.NoError(t, r.heapFree(small))
	require.ErrorContains(t, r.heapFree(small), "double free")
	require.NoError(t, r.heapFree(large))
	require.ErrorContains(t, r.heapFree(large), "double free")
}

// Two nodes allocate from arenas of their own, and each frees what the
// other allocated.
func TestHeapTwoNodes(t *testing.T) {
	r0 := fakeRegion(t, 16<<20, 0, 2)
	r1 := share(r0, 1)
	var a0, a1 []uint64
	for range 5000 {
		o, err := r0.heapAlloc(32, 8, false)
		require.NoError(t, err)
		a0 = append(a0, o)
		o, err = r1.heapAlloc(32, 8, false)
		require.NoError(t, err)
		a1 = append(a1, o)
	}
	g := r0.hp.geo
	chunks := func(offs []uint64) map[uint64]bool {
		m := map[uint64]bool{}
		for _, o := range offs {
			m[o/chunkSize] = true
		}
		return m
	}
	c0, c1 := chunks(a0), chunks(a1)
	for c := range c0 {
		require.False(t, c1[c], "chunk %d is in both nodes' arenas", c)
		v := *r0.word(g.Table + 8*c)
		require.EqualValues(t, 0, v>>16&0xffff, "owner of chunk %d", c)
	}
	for _, o := range a0 {
		require.NoError(t, r1.heapFree(o))
	}
	for _, o := range a1 {
		require.NoError(t, r0.heapFree(o))
	}
	// A third program on node 0 finds node 0's chunks (now empty) and
	// uses them before claiming any.
	r0b := share(r0, 0)
	o, err := r0b.heapAlloc(32, 8, false)
	require.NoError(t, err)
	require.True(t, c0[o/chunkSize], "a later program reuses its node's arena")
}

func TestHeapConcurrent(t *testing.T) {
	r0 := fakeRegion(t, 16<<20, 0, 2)
	regions := []*Region{r0, share(r0, 1), share(r0, 0)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	live := map[uint64]bool{}
	errs := make(chan error, 8)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := regions[g%len(regions)]
			var mine []uint64
			for i := range 3000 {
				off, err := r.heapAlloc(uint64(8+i%200), 8, false)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if live[off] {
					mu.Unlock()
					errs <- errors.New("an offset handed out twice")
					return
				}
				live[off] = true
				mu.Unlock()
				mine = append(mine, off)
				if i%3 == 0 {
					victim := mine[0]
					mine = mine[1:]
					mu.Lock()
					delete(live, victim)
					mu.Unlock()
					if err := regions[(g+1)%len(regions)].heapFree(victim); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestHeapFull(t *testing.T) {
	r := fakeRegion(t, 1<<20, 0, 1)
	_, err := r.heapAlloc(2<<20, 8, false)
	require.ErrorIs(t, err, ErrFull)
	require.ErrorContains(t, err, "2097152 bytes asked")
	require.ErrorContains(t, err, "-size")
	for {
		if _, err = r.heapAlloc(4096, 4096, false); err != nil {
			break
		}
	}
	require.ErrorIs(t, err, ErrFull)
	require.ErrorContains(t, err, "heap 983040")
}

func TestClassFor(t *testing.T) {
	cases := []struct {
		size, align, want uint64
	}{
		{1, 1, 16}, {16, 8, 16}, {17, 8, 32}, {24, 8, 32}, {24, 64, 64},
		{8, 4096, 4096}, {5000, 8, 8192}, {16384, 8, 16384},
	}
	for _, tc := range cases {
		c := classFor(tc.size, tc.align)
		require.GreaterOrEqual(t, c, 0, "%+v", tc)
		require.Equal(t, tc.want, classes[c], "%+v", tc)
	}
	require.Equal(t, -1, classFor(16385, 8))
	require.Equal(t, -1, classFor(8, 8192))
}

func BenchmarkHeapAllocFree(b *testing.B) {
	r := fakeRegion(b, 64<<20, 0, 1)
	for b.Loop() {
		off, err := r.heapAlloc(48, 8, false)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.heapFree(off); err != nil {
			b.Fatal(err)
		}
	}
}
