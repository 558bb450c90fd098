// Package clocks provides the logical clocks the DSM runtime uses to order
// events without a shared physical clock.
//
// The runtime needs two kinds of order. A Lamport clock gives every event a
// number such that if event a happened before event b then L(a) < L(b); it is
// one word, cheap to carry on every message, and breaks ties when a total
// order is needed (for example, to sequence lock requests). The converse does
// not hold: L(a) < L(b) says nothing about causality.
//
// A Vector clock keeps one counter per node and captures causality exactly:
// a happened before b if and only if VC(a) < VC(b) (every entry <=, at least
// one <). Two versions of a page whose clocks compare Concurrent were written
// without either writer having seen the other's write, which is how the
// coherence engine detects conflicting writes. The price is a vector of N
// entries, so vectors travel in a compact varint encoding (AppendBinary,
// DecodeVector).
package clocks

import (
	"strconv"
	"sync/atomic"
)

// Lamport is a Lamport logical clock. The zero value is a clock that has seen
// no event. Its methods are safe for concurrent use: they update the counter
// atomically, so one clock may be shared by the goroutines of a node.
//
// The counter would wrap after 2^64 events, which no run of the runtime can
// reach.
type Lamport uint64

// Tick records a local event (including sending a message) and returns the
// event's timestamp: the clock is incremented and its new value returned.
func (l *Lamport) Tick() uint64 {
	return atomic.AddUint64((*uint64)(l), 1)
}

// Observe records the receipt of a message stamped with remote and returns
// the receive event's timestamp: the clock becomes max(l, remote)+1.
func (l *Lamport) Observe(remote uint64) uint64 {
	p := (*uint64)(l)
	for {
		cur := atomic.LoadUint64(p)
		next := max(cur, remote) + 1
		if atomic.CompareAndSwapUint64(p, cur, next) {
			return next
		}
	}
}

// Now returns the clock's current value without recording an event.
func (l *Lamport) Now() uint64 {
	return atomic.LoadUint64((*uint64)(l))
}

// Order is the result of comparing two vector clocks.
type Order int

// The possible orders of two vector clocks a and b (as a.Compare(b)).
const (
	// Before: a happened before b (a <= b entrywise, a != b).
	Before Order = iota + 1
	// After: b happened before a.
	After
	// Equal: a and b are the same clock (missing entries count as 0).
	Equal
	// Concurrent: neither happened before the other.
	Concurrent
)

// String returns "before", "after", "equal" or "concurrent".
func (o Order) String() string {
	switch o {
	case Before:
		return "before"
	case After:
		return "after"
	case Equal:
		return "equal"
	case Concurrent:
		return "concurrent"
	}
	return "Order(" + strconv.Itoa(int(o)) + ")"
}

// Inverse returns the order of b relative to a given the order of a relative
// to b: Before and After swap, Equal and Concurrent stay.
func (o Order) Inverse() Order {
	switch o {
	case Before:
		return After
	case After:
		return Before
	}
	return o
}

// Vector is a vector clock: entry i counts the events of node i that the
// holder has seen. Entries beyond the end of a Vector count as 0, so clocks
// of different lengths compare and merge as if padded with zeros.
//
// A Vector is a slice: methods that modify it (Tick, Merge) modify the
// backing array in place, and copies share it. Use Clone to take a snapshot,
// for example before attaching a clock to a message.
type Vector []uint64

// NewVector returns a zero clock for n nodes. It panics if n is negative.
func NewVector(n int) Vector {
	if n < 0 {
		panic("clocks: NewVector with negative length " + strconv.Itoa(n))
	}
	return make(Vector, n)
}

// Tick records a local event of node id: v[id]++. It panics if id is not in
// [0, len(v)); size the vector for the cluster with NewVector.
func (v Vector) Tick(id int) {
	if id < 0 || id >= len(v) {
		panic("clocks: Vector.Tick: node id " + strconv.Itoa(id) +
			" out of range for a vector of " + strconv.Itoa(len(v)) + " nodes")
	}
	v[id]++
}

// Merge sets v to the entrywise maximum of v and o, in place.
//
// A method cannot grow its receiver, so o may be longer than v only if the
// extra entries are zero (they would be lost otherwise); Merge panics if o has
// a non-zero entry at an index >= len(v). When lengths may differ (for
// example, clocks received from the network), use the function Merge, which
// returns a new Vector long enough for both.
func (v Vector) Merge(o Vector) {
	for i, x := range o {
		if i >= len(v) {
			if x != 0 {
				panic("clocks: Vector.Merge: other clock has a non-zero entry at index " +
					strconv.Itoa(i) + " beyond this clock's length " + strconv.Itoa(len(v)) +
					"; use clocks.Merge(a, b) for clocks of different lengths")
			}
			continue
		}
		if x > v[i] {
			v[i] = x
		}
	}
}

// Merge returns a new Vector, max(len(a), len(b)) long, holding the entrywise
// maximum of a and b. It never modifies or aliases a or b.
func Merge(a, b Vector) Vector {
	if len(a) < len(b) {
		a, b = b, a
	}
	m := make(Vector, len(a))
	copy(m, a)
	for i, x := range b {
		if x > m[i] {
			m[i] = x
		}
	}
	return m
}

// Compare returns the causal order of v relative to o: Before if v happened
// before o, After if o happened before v, Equal if they are the same clock,
// Concurrent otherwise. Missing entries count as 0.
func (v Vector) Compare(o Vector) Order {
	var less, greater bool
	n := max(len(v), len(o))
	for i := 0; i < n; i++ {
		var a, b uint64
		if i < len(v) {
			a = v[i]
		}
		if i < len(o) {
			b = o[i]
		}
		switch {
		case a < b:
			less = true
		case a > b:
			greater = true
		}
		if less && greater {
			return Concurrent
		}
	}
	switch {
	case less:
		return Before
	case greater:
		return After
	}
	return Equal
}

// Clone returns a copy of v that shares no memory with it. Clone(nil) is nil.
func (v Vector) Clone() Vector {
	if v == nil {
		return nil
	}
	c := make(Vector, len(v))
	copy(c, v)
	return c
}

// Less reports whether v happened before o (v.Compare(o) == Before).
func (v Vector) Less(o Vector) bool {
	return v.Compare(o) == Before
}

// String formats v as its entries in brackets, for example "[3 0 7]".
func (v Vector) String() string {
	b := make([]byte, 0, 2+4*len(v))
	b = append(b, '[')
	for i, x := range v {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendUint(b, x, 10)
	}
	b = append(b, ']')
	return string(b)
}
