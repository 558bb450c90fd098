package dht

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand"
	"slices"
	"sync"
	"testing"
)

// pageKeys returns the keys of pages 0..n-1.
func pageKeys(n int) []uint64 {
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = PageKey(uint32(i))
	}
	return keys
}

func homes(r *Ring, keys []uint64) []NodeID {
	h := make([]NodeID, len(keys))
	for i, k := range keys {
		h[i] = r.Home(k)
	}
	return h
}

func TestMix64Avalanche(t *testing.T) {
	// Flipping any one input bit flips close to half of the output bits on
	// average; an identity or a weak hash fails this.
	r := rand.New(rand.NewSource(1))
	for bit := 0; bit < 64; bit++ {
		total := 0
		const trials = 2000
		for i := 0; i < trials; i++ {
			x := r.Uint64()
			total += bits.OnesCount64(mix64(x) ^ mix64(x^1<<bit))
		}
		if mean := float64(total) / trials; mean < 30 || mean > 34 {
			t.Errorf("flipping input bit %d flips %.1f output bits on average, want about 32", bit, mean)
		}
	}
}

func TestKeysDistinct(t *testing.T) {
	if PageKey(7) == LockKey(7) {
		t.Error("PageKey(7) == LockKey(7)")
	}
	if PageKey(1) == PageKey(2) || LockKey(1) == LockKey(2) {
		t.Error("distinct ids give equal keys")
	}
	again := "lock/" + string('0'+rune(len("x"))) // "lock/1", built at run time
	if StringKey("a") == StringKey("b") || StringKey("lock/1") != StringKey(again) {
		t.Error("StringKey is not a deterministic hash")
	}
}

func TestHomeIsMember(t *testing.T) {
	tests := []struct {
		name   string
		vnodes int
		nodes  []NodeID
	}{
		{"one node", 1, []NodeID{5}},
		{"two nodes", 16, []NodeID{0, 1}},
		{"sparse ids", 64, []NodeID{3, 17, 250, 65535}},
		{"default vnodes", 0, []NodeID{0, 1, 2, 3, 4, 5, 6, 7}},
	}
	r := rand.New(rand.NewSource(2))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ring := NewRing(tt.vnodes, tt.nodes...)
			keys := pageKeys(20000)
			for i := 0; i < 20000; i++ {
				keys = append(keys, r.Uint64())
			}
			seen := map[NodeID]bool{}
			for _, k := range keys {
				h := ring.Home(k)
				if !slices.Contains(tt.nodes, h) {
					t.Fatalf("Home(%#x) = %d, not a member of %v", k, h, tt.nodes)
				}
				seen[h] = true
			}
			if len(seen) != len(tt.nodes) {
				t.Errorf("only %d of %d nodes are home to any of %d keys", len(seen), len(tt.nodes), len(keys))
			}
			name := fmt.Sprintf("lock/%d", r.Intn(1000))
			if h := ring.HomeOfString(name); !slices.Contains(tt.nodes, h) {
				t.Errorf("HomeOfString(%q) = %d, not a member", name, h)
			}
		})
	}
}

func TestHomeDeterministic(t *testing.T) {
	keys := pageKeys(50000)
	a := NewRing(64, 1, 2, 3, 4, 5)
	b := NewRing(64, 5, 3, 1, 4, 2, 3) // other order, one duplicate
	c := NewRing(64, 1, 2, 3, 4, 5, 9)
	c.Remove(9) // a join and leave leaves no trace
	c.Remove(42)
	want := homes(a, keys)
	for name, r := range map[string]*Ring{"reordered": b, "join+leave": c, "same": a} {
		if got := homes(r, keys); !slices.Equal(got, want) {
			t.Errorf("%s ring gives different homes", name)
		}
	}
	if got := b.Nodes(); !slices.Equal(got, []NodeID{1, 2, 3, 4, 5}) {
		t.Errorf("Nodes() = %v, want [1 2 3 4 5]", got)
	}
	n := a.Nodes()
	n[0] = 99
	if a.Has(99) || !a.Has(1) || a.Len() != 5 {
		t.Error("Nodes() result aliases the ring")
	}
	if a.HomeOfString("barrier/main") != b.HomeOfString("barrier/main") {
		t.Error("HomeOfString differs between equal rings")
	}
}

func TestLoadBalance(t *testing.T) {
	const nkeys = 100000
	keys := pageKeys(nkeys)
	tests := []struct {
		vnodes, nodes int
		maxRatio      float64
	}{
		{64, 8, 1.5},
		{128, 8, 1.5},
		{256, 8, 1.5},
		{128, 32, 1.5},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("vnodes=%d/nodes=%d", tt.vnodes, tt.nodes), func(t *testing.T) {
			r := NewRing(tt.vnodes)
			for n := 0; n < tt.nodes; n++ {
				r.Add(NodeID(n))
			}
			count := make([]int, tt.nodes)
			for _, k := range keys {
				count[r.Home(k)]++
			}
			mean := float64(nkeys) / float64(tt.nodes)
			ratio := float64(slices.Max(count)) / mean
			t.Logf("max/mean %.3f, min/mean %.3f", ratio, float64(slices.Min(count))/mean)
			if ratio >= tt.maxRatio {
				t.Errorf("busiest node holds %.3f x the mean share, want < %.2f (counts %v)", ratio, tt.maxRatio, count)
			}
		})
	}
}

func TestJoinMovesAboutOneNth(t *testing.T) {
	const nkeys = 100000
	keys := pageKeys(nkeys)
	for _, n := range []int{2, 3, 4, 8, 16, 32} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			r := NewRing(128)
			for i := 0; i < n-1; i++ {
				r.Add(NodeID(10 * i))
			}
			before := homes(r, keys)
			joiner := NodeID(7)
			r.Add(joiner)
			after := homes(r, keys)
			moved := 0
			for i := range keys {
				if before[i] == after[i] {
					continue
				}
				moved++
				if after[i] != joiner {
					t.Fatalf("key %d moved from %d to %d, not to the joining node %d", i, before[i], after[i], joiner)
				}
			}
			frac, want := float64(moved)/nkeys, 1/float64(n)
			t.Logf("moved %.4f of keys, 1/N = %.4f", frac, want)
			if frac < 0.5*want || frac > 1.6*want {
				t.Errorf("join to %d nodes moved %.4f of keys, want within [%.4f, %.4f]", n, frac, 0.5*want, 1.6*want)
			}
		})
	}
}

func TestLeaveMovesOnlyItsKeys(t *testing.T) {
	const nkeys = 100000
	keys := pageKeys(nkeys)
	for _, n := range []int{2, 5, 16} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			r := NewRing(128)
			for i := 0; i < n; i++ {
				r.Add(NodeID(i))
			}
			before := homes(r, keys)
			leaver := NodeID(n / 2)
			r.Remove(leaver)
			if r.Has(leaver) || r.Len() != n-1 {
				t.Fatalf("node %d still a member after Remove", leaver)
			}
			held := 0
			for i, k := range keys {
				h := r.Home(k)
				if before[i] == leaver {
					held++
					if h == leaver {
						t.Fatalf("key %d still homed at removed node %d", i, leaver)
					}
				} else if h != before[i] {
					t.Fatalf("key %d moved from %d to %d though node %d left", i, before[i], h, leaver)
				}
			}
			if held == 0 {
				t.Error("the leaving node held no keys; the check was not exercised")
			}
		})
	}
}

func TestEmptyRing(t *testing.T) {
	var zero Ring
	r := NewRing(4, 1)
	r.Remove(1)
	for name, ring := range map[string]*Ring{"zero": &zero, "emptied": r} {
		if _, ok := ring.Lookup(1); ok {
			t.Errorf("%s ring: Lookup succeeded", name)
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s ring: Home did not panic", name)
				}
			}()
			ring.Home(1)
		}()
	}
	// The zero Ring becomes usable after Add, with the default vnode count.
	zero.Add(3)
	if h := zero.Home(12345); h != 3 {
		t.Errorf("zero Ring after Add(3): Home = %d", h)
	}
	if got := len(zero.load().points); got != DefaultVnodes {
		t.Errorf("zero Ring has %d points, want %d", got, DefaultVnodes)
	}
}

func TestNewRingRejectsBadVnodes(t *testing.T) {
	for _, v := range []int{-1, MaxVnodes + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewRing(%d) did not panic", v)
				}
			}()
			NewRing(v)
		}()
	}
}

func TestHomeDoesNotAllocate(t *testing.T) {
	r := NewRing(128, 0, 1, 2, 3, 4, 5, 6, 7)
	var k uint64
	allocs := testing.AllocsPerRun(1000, func() {
		k++
		_ = r.Home(PageKey(uint32(k)))
		_ = r.HomeOfString("lock/main")
	})
	if allocs != 0 {
		t.Errorf("Home allocates %.1f times per call, want 0", allocs)
	}
}

func TestRingConcurrentUse(t *testing.T) {
	r := NewRing(32, 0, 1, 2)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := uint32(0); ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				if h := r.Home(PageKey(k)); h > 5 {
					t.Errorf("Home = %d, never a member", h)
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		n := NodeID(3 + i%3)
		r.Add(n)
		r.Remove(n)
	}
	close(stop)
	wg.Wait()
}

func BenchmarkRingHome(b *testing.B) {
	for _, n := range []int{8, 64, 1024} {
		b.Run(fmt.Sprintf("nodes=%d/vnodes=%d", n, DefaultVnodes), func(b *testing.B) {
			r := NewRing(0)
			for i := 0; i < n; i++ {
				r.Add(NodeID(i))
			}
			b.ReportAllocs()
			var sink NodeID
			for i := 0; b.Loop(); i++ {
				sink ^= r.Home(PageKey(uint32(i)))
			}
			_ = sink
		})
	}
}

func BenchmarkRingHomeOfString(b *testing.B) {
	r := NewRing(0, 0, 1, 2, 3, 4, 5, 6, 7)
	b.ReportAllocs()
	for b.Loop() {
		_ = r.HomeOfString("lock/work-queue")
	}
}

func TestSuccessor(t *testing.T) {
	pts := []uint64{10, 20, 30}
	tests := []struct {
		h    uint64
		want int
	}{
		{0, 0}, {10, 0}, {11, 1}, {20, 1}, {29, 2}, {30, 2}, {31, 0}, {math.MaxUint64, 0},
	}
	for _, tt := range tests {
		if got := successor(pts, tt.h); got != tt.want {
			t.Errorf("successor(%v, %d) = %d, want %d", pts, tt.h, got, tt.want)
		}
	}
	// Against a linear scan, on every length up to 70 and at, before and
	// after every point.
	r := rand.New(rand.NewSource(3))
	for n := 1; n <= 70; n++ {
		p := make([]uint64, n)
		for i := range p {
			p[i] = r.Uint64() >> 1
		}
		slices.Sort(p)
		p = slices.Compact(p)
		probes := []uint64{0, math.MaxUint64, r.Uint64()}
		for _, x := range p {
			probes = append(probes, x-1, x, x+1)
		}
		for _, h := range probes {
			want := 0
			for want < len(p) && p[want] < h {
				want++
			}
			if want == len(p) {
				want = 0
			}
			if got := successor(p, h); got != want {
				t.Fatalf("successor(%d points, %d) = %d, linear scan says %d", len(p), h, got, want)
			}
		}
	}
}

func TestHomeMatchesReference(t *testing.T) {
	// The home is the owner of the virtual node at the smallest clockwise
	// distance from the key's position, computed here by a linear scan
	// over freshly computed points.
	nodes := []NodeID{2, 9, 40, 41, 1000}
	const vnodes = 16
	r := NewRing(vnodes, nodes...)
	type vn struct {
		p uint64
		n NodeID
	}
	var all []vn
	for _, n := range nodes {
		for i := 0; i < vnodes; i++ {
			all = append(all, vn{vnodePoint(n, i), n})
		}
	}
	rng := rand.New(rand.NewSource(4))
	for i := 0; i < 5000; i++ {
		key := rng.Uint64()
		if i%2 == 0 {
			key = PageKey(uint32(i))
		}
		h := keyPoint(key)
		best := all[0]
		for _, v := range all[1:] {
			if v.p-h < best.p-h { // clockwise distance, mod 2^64
				best = v
			}
		}
		if got := r.Home(key); got != best.n {
			t.Fatalf("Home(%#x) = %d, reference says %d", key, got, best.n)
		}
	}
}
