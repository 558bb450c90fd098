package dht

import (
	"slices"
	"strconv"
)

// Chord is a simulated Chord network: N nodes with distinct m-bit
// identifiers on a ring of 2^m points. Node i, with identifier ID(i), owns
// the keys in (predecessor's identifier, ID(i)]. Each node knows only its
// predecessor, its successor and its finger table, where finger k is the
// successor of ID(i) + 2^k; Lookup routes with that partial view alone, in
// O(log N) hops.
//
// Nodes are named by their index in the identifier slice given to NewChord.
// A Chord is immutable after NewChord and safe for concurrent use.
type Chord struct {
	m      uint
	mask   uint64
	ids    []uint64  // ids[i] is node i's identifier
	order  []int     // node indices in ascending identifier order
	sorted []uint64  // identifiers in ascending order
	pred   []int     // pred[i] is node i's predecessor
	succ   []int     // succ[i] is node i's successor
	finger [][]int32 // finger[i][k] is the successor of ids[i] + 2^k
}

// NewChord builds a Chord network over the nodes with the given identifiers
// on a ring of 2^m points and fills in every node's finger table. It panics,
// with a message saying what is wrong, if m is not in 1..64, if ids is empty,
// or if an identifier is repeated or does not fit in m bits.
func NewChord(ids []uint64, m uint) *Chord {
	if m < 1 || m > 64 {
		panic("dht: NewChord: m is " + strconv.FormatUint(uint64(m), 10) + "; identifiers need 1..64 bits")
	}
	if len(ids) == 0 {
		panic("dht: NewChord: no nodes; pass at least one identifier")
	}
	mask := ^uint64(0) >> (64 - m)
	c := &Chord{
		m:      m,
		mask:   mask,
		ids:    slices.Clone(ids),
		order:  make([]int, len(ids)),
		sorted: make([]uint64, len(ids)),
		pred:   make([]int, len(ids)),
		succ:   make([]int, len(ids)),
		finger: make([][]int32, len(ids)),
	}
	for i, id := range ids {
		if id > mask {
			panic("dht: NewChord: identifier " + strconv.FormatUint(id, 10) + " of node " +
				strconv.Itoa(i) + " does not fit in " + strconv.FormatUint(uint64(m), 10) +
				" bits; reduce identifiers modulo 2^m")
		}
		c.order[i] = i
	}
	slices.SortFunc(c.order, func(a, b int) int {
		switch {
		case ids[a] < ids[b]:
			return -1
		case ids[a] > ids[b]:
			return 1
		}
		return 0
	})
	for p, i := range c.order {
		c.sorted[p] = ids[i]
		if p > 0 && c.sorted[p] == c.sorted[p-1] {
			panic("dht: NewChord: nodes " + strconv.Itoa(c.order[p-1]) + " and " + strconv.Itoa(i) +
				" share identifier " + strconv.FormatUint(ids[i], 10) + "; identifiers must be distinct")
		}
	}
	n := len(ids)
	for p, i := range c.order {
		c.pred[i] = c.order[(p+n-1)%n]
		c.succ[i] = c.order[(p+1)%n]
		f := make([]int32, m)
		for k := uint(0); k < m; k++ {
			f[k] = int32(c.Owner(ids[i] + uint64(1)<<k))
		}
		c.finger[i] = f
	}
	return c
}

// Len returns the number of nodes.
func (c *Chord) Len() int { return len(c.ids) }

// ID returns the identifier of node i.
func (c *Chord) ID(i int) uint64 { return c.ids[i] }

// Owner returns the node that owns key (taken modulo 2^m), computed with the
// full view: the successor of key, the first node whose identifier is at or
// after it, wrapping around.
func (c *Chord) Owner(key uint64) int {
	key &= c.mask
	p, _ := slices.BinarySearch(c.sorted, key)
	if p == len(c.sorted) {
		p = 0
	}
	return c.order[p]
}

// dist is the clockwise distance from a to b on the ring.
func (c *Chord) dist(a, b uint64) uint64 { return (b - a) & c.mask }

// owns reports whether node n owns key: key is in (pred(n), n]. A lone node
// owns everything.
func (c *Chord) owns(n int, key uint64) bool {
	p := c.ids[c.pred[n]]
	span := c.dist(p, c.ids[n])
	if span == 0 {
		return true
	}
	d := c.dist(p, key)
	return d != 0 && d <= span
}

// Lookup routes a query for key (taken modulo 2^m) from node from, using
// only the state each visited node holds, and returns the owning node and
// the number of hops (messages from node to node) the query took; 0 when
// from owns the key. At each node the query goes to the successor if the key
// lies between the node and its successor, and otherwise to the closest
// finger preceding the key, which at least halves the remaining distance.
// It panics if from is not a node index.
func (c *Chord) Lookup(from int, key uint64) (owner int, hops int) {
	if from < 0 || from >= len(c.ids) {
		panic("dht: Chord.Lookup: node " + strconv.Itoa(from) + " out of range 0.." +
			strconv.Itoa(len(c.ids)-1))
	}
	key &= c.mask
	n := from
	for {
		if c.owns(n, key) {
			return n, hops
		}
		s := c.succ[n]
		toKey := c.dist(c.ids[n], key)
		if c.dist(c.ids[n], c.ids[s]) >= toKey {
			return s, hops + 1 // key is in (n, succ(n)]
		}
		next := s
		for k := len(c.finger[n]) - 1; k >= 0; k-- {
			f := int(c.finger[n][k])
			if d := c.dist(c.ids[n], c.ids[f]); d != 0 && d < toKey {
				next = f // closest preceding finger
				break
			}
		}
		n = next
		hops++
		if hops > len(c.ids) {
			panic("dht: Chord.Lookup: routing loop (internal error)")
		}
	}
}
