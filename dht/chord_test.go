package dht

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// chordIDs returns n distinct m-bit identifiers derived from node numbers.
func chordIDs(n int, m uint) []uint64 {
	mask := ^uint64(0) >> (64 - m)
	seen := map[uint64]bool{}
	var ids []uint64
	for i := uint64(0); len(ids) < n; i++ {
		id := mix64(i) & mask
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids
}

// bruteOwner is the full-view successor of key computed by a linear scan:
// the node at the smallest clockwise distance from key.
func bruteOwner(ids []uint64, key, mask uint64) int {
	best, bestDist := -1, uint64(0)
	for i, id := range ids {
		if d := (id - key) & mask; best < 0 || d < bestDist {
			best, bestDist = i, d
		}
	}
	return best
}

func TestChordSmall(t *testing.T) {
	// 4-bit ring, nodes 1, 4, 9, 14 (given out of order).
	ids := []uint64{9, 1, 14, 4}
	c := NewChord(ids, 4)
	tests := []struct {
		key       uint64
		wantOwner uint64 // identifier of the owner
	}{
		{0, 1}, {1, 1}, {2, 4}, {4, 4}, {5, 9}, {9, 9}, {10, 14}, {14, 14}, {15, 1},
		{16 + 5, 9}, // keys are taken modulo 2^m
	}
	for _, tt := range tests {
		for from := range ids {
			owner, hops := c.Lookup(from, tt.key)
			if c.ID(owner) != tt.wantOwner {
				t.Errorf("Lookup(from %d, key %d) = node %d (id %d), want id %d", ids[from], tt.key, owner, c.ID(owner), tt.wantOwner)
			}
			if (hops == 0) != (ids[from] == tt.wantOwner) {
				t.Errorf("Lookup(from %d, key %d) took %d hops", ids[from], tt.key, hops)
			}
		}
		if got := c.ID(c.Owner(tt.key)); got != tt.wantOwner {
			t.Errorf("Owner(%d) = id %d, want %d", tt.key, got, tt.wantOwner)
		}
	}
	// Finger k of node 1 is the successor of 1+2^k: 2->4, 3->4, 5->9, 9->9.
	want := []uint64{4, 4, 9, 9}
	for k, f := range c.finger[1] {
		if c.ID(int(f)) != want[k] {
			t.Errorf("finger %d of node 1 is %d, want %d", k, c.ID(int(f)), want[k])
		}
	}
}

func TestChordSingleNode(t *testing.T) {
	c := NewChord([]uint64{42}, 8)
	for _, key := range []uint64{0, 41, 42, 43, 255} {
		if owner, hops := c.Lookup(0, key); owner != 0 || hops != 0 {
			t.Errorf("Lookup(0, %d) = (%d, %d), want (0, 0)", key, owner, hops)
		}
	}
}

func TestChordMatchesFullView(t *testing.T) {
	const n, m = 1024, 32
	ids := chordIDs(n, m)
	mask := ^uint64(0) >> (64 - m)
	c := NewChord(ids, m)
	r := rand.New(rand.NewSource(5))
	var keys []uint64
	for _, id := range ids[:64] { // boundaries: at, just before and just after nodes
		keys = append(keys, id, (id-1)&mask, (id+1)&mask)
	}
	keys = append(keys, 0, mask)
	for i := 0; i < 3000; i++ {
		keys = append(keys, r.Uint64())
	}
	for i, key := range keys {
		from := i % n
		if i%7 == 0 {
			from = r.Intn(n)
		}
		want := bruteOwner(ids, key&mask, mask)
		owner, hops := c.Lookup(from, key)
		if owner != want {
			t.Fatalf("Lookup(from %d, key %#x) = node %d, full view says %d", from, key, owner, want)
		}
		if c.Owner(key) != want {
			t.Fatalf("Owner(%#x) = %d, full view says %d", key, c.Owner(key), want)
		}
		if hops > m {
			t.Fatalf("Lookup(from %d, key %#x) took %d hops, more than m=%d", from, key, hops, m)
		}
	}
}

func TestChordHopsGrowLogarithmically(t *testing.T) {
	const m, lookups = 32, 4000
	r := rand.New(rand.NewSource(6))
	prev := 0.0
	t.Logf("%6s %8s %10s %8s", "N", "log2 N", "mean hops", "max hops")
	for _, n := range []int{16, 64, 256, 1024} {
		c := NewChord(chordIDs(n, m), m)
		total, maxHops := 0, 0
		for i := 0; i < lookups; i++ {
			_, hops := c.Lookup(r.Intn(n), r.Uint64())
			total += hops
			maxHops = max(maxHops, hops)
		}
		mean, lg := float64(total)/lookups, math.Log2(float64(n))
		t.Logf("%6d %8.0f %10.2f %8d", n, lg, mean, maxHops)
		if mean > lg {
			t.Errorf("N=%d: mean hops %.2f exceeds log2 N = %.0f", n, mean, lg)
		}
		if mean <= prev {
			t.Errorf("N=%d: mean hops %.2f did not grow from %.2f", n, mean, prev)
		}
		prev = mean
	}
}

func TestNewChordRejectsBadInput(t *testing.T) {
	tests := []struct {
		name string
		ids  []uint64
		m    uint
	}{
		{"m zero", []uint64{1}, 0},
		{"m too big", []uint64{1}, 65},
		{"no nodes", nil, 8},
		{"id too wide", []uint64{1, 256}, 8},
		{"duplicate", []uint64{3, 7, 3}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("NewChord(%v, %d) did not panic", tt.ids, tt.m)
				}
			}()
			NewChord(tt.ids, tt.m)
		})
	}
	c := NewChord([]uint64{1, 2}, 64)
	defer func() {
		if recover() == nil {
			t.Error("Lookup from node 2 of 2 did not panic")
		}
	}()
	c.Lookup(2, 0)
}

func BenchmarkChordLookup(b *testing.B) {
	for _, n := range []int{64, 1024} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			c := NewChord(chordIDs(n, 32), 32)
			r := rand.New(rand.NewSource(7))
			hops := 0
			for b.Loop() {
				_, h := c.Lookup(r.Intn(n), r.Uint64())
				hops += h
			}
			b.ReportMetric(float64(hops)/float64(b.N), "hops/op")
		})
	}
}
