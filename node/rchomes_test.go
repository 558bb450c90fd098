package node

import (
	"testing"

	"github.com/dsmrt/dsm/coherence"
)

// Blocks of units split like a band decomposition: node i homes units
// ⌊i·U/N⌋ up to ⌊(i+1)·U/N⌋, every node one contiguous block, in order.
func TestHomeRangeBlocks(t *testing.T) {
	cases := []struct {
		name           string
		lo, hi, unit   coherence.PageID
		nodes          int
		wantBoundaries []coherence.PageID // first page of nodes 1..N-1
	}{
		{"pages, 3 nodes", 0, 2048, 1, 3, []coherence.PageID{682, 1365}},
		{"rows of 2 pages, 3 nodes", 0, 2048, 2, 3, []coherence.PageID{682, 1364}},
		{"rows of 2 pages, offset range", 100, 2148, 2, 3, []coherence.PageID{782, 1464}},
		{"2 nodes", 0, 2048, 1, 2, []coherence.PageID{1024}},
		{"one node", 5, 9, 1, 1, nil},
		{"short last unit", 0, 7, 2, 2, []coherence.PageID{4}},          // units 0-1 | 2-3 (the last unit is page 6 alone)
		{"more nodes than units", 0, 4, 2, 3, []coherence.PageID{0, 2}}, // node 0 homes no unit
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := homeRange{tc.lo, tc.hi, tc.unit}
			var got []coherence.PageID
			prev := coherence.NodeID(0)
			for p := tc.lo; p < tc.hi; p++ {
				h := r.home(p, tc.nodes)
				if h < prev || int(h) >= tc.nodes {
					t.Fatalf("page %d homed at node %d after node %d (of %d)", p, h, prev, tc.nodes)
				}
				for ; prev < h; prev++ {
					got = append(got, p)
				}
				if (p-tc.lo)%tc.unit != 0 && h != r.home(p-1, tc.nodes) {
					t.Fatalf("page %d is homed apart from the rest of its unit", p)
				}
			}
			for len(got) < tc.nodes-1 {
				got = append(got, tc.hi) // nodes with an empty block
			}
			if len(got) != len(tc.wantBoundaries) {
				t.Fatalf("boundaries %v, want %v", got, tc.wantBoundaries)
			}
			for i := range got {
				if got[i] != tc.wantBoundaries[i] {
					t.Fatalf("boundaries %v, want %v", got, tc.wantBoundaries)
				}
			}
		})
	}
}
