package analyzer

import (
	"time"
)

// op is one access of a simulated program: node writes (or reads) len bytes
// at a region offset.
type op struct {
	node  uint16
	off   uint64
	len   uint32
	write bool
}

// simPage is the coherence state of one page in the simulator.
type simPage struct {
	owner  uint16
	copies map[uint16]bool // read copies
	dirty  spanSet         // bytes the owner wrote since it received the page
}

// simulate runs ops through a single-writer, write-invalidate protocol with
// the given page size and returns the migrations the daemon would record:
// a write by a node that does not own the page moves ownership, a read by a
// node without a copy fetches a read copy, and every transfer carries the
// bytes the giving node wrote since it received the page. Every page starts
// owned by node first. Clocks are vector clocks merged on every transfer.
func simulate(ps uint64, first uint16, ops []op) []Migration {
	start := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	pages := make(map[uint32]*simPage)
	clocks := make(map[uint16][]uint64)
	tick := func(n uint16) {
		c := clocks[n]
		for len(c) <= int(n) {
			c = append(c, 0)
		}
		c[n]++
		clocks[n] = c
	}
	merge := func(to, from uint16) {
		c := clocks[to]
		for i, v := range clocks[from] {
			for len(c) <= i {
				c = append(c, 0)
			}
			c[i] = max(c[i], v)
		}
		clocks[to] = c
	}
	var out []Migration
	transfer := func(p uint32, sp *simPage, to uint16, write bool) {
		written := make([]Range, 0, len(sp.dirty))
		for _, s := range sp.dirty {
			written = append(written, Range{Off: uint32(s.lo), Len: uint32(s.hi - s.lo)})
		}
		merge(to, sp.owner)
		tick(to)
		out = append(out, Migration{
			Page:    p,
			From:    sp.owner,
			To:      to,
			Write:   write,
			Wall:    start.Add(time.Duration(len(out)) * 10 * time.Microsecond),
			Clock:   append([]uint64(nil), clocks[to]...),
			Written: written,
			Cost:    40*time.Microsecond + time.Duration(len(out)%7)*time.Microsecond,
		})
		sp.dirty = nil
	}
	for _, o := range ops {
		tick(o.node)
		p := uint32(o.off / ps)
		sp := pages[p]
		if sp == nil {
			sp = &simPage{owner: first, copies: map[uint16]bool{}}
			pages[p] = sp
		}
		switch {
		case o.write && sp.owner != o.node:
			transfer(p, sp, o.node, true)
			sp.owner = o.node
			clear(sp.copies)
		case o.write:
			clear(sp.copies) // upgrade: invalidate the readers, no data moves
		case sp.owner != o.node && !sp.copies[o.node]:
			transfer(p, sp, o.node, false)
			sp.copies[o.node] = true
		}
		if o.write {
			lo := o.off % ps
			sp.dirty = sp.dirty.add(lo, lo+uint64(o.len))
		}
	}
	return out
}

// incr returns n rounds in which every node in turn writes its counter. A
// counter increment changes its low byte, and now and then the next one too,
// the way a diff sees it.
func incr(n int, counters map[uint16]uint64) []op {
	nodes := make([]uint16, 0, len(counters))
	for k := range counters {
		nodes = append(nodes, k)
	}
	sortNodes(nodes)
	var ops []op
	for i := range n {
		for _, nd := range nodes {
			l := uint32(1)
			if i%256 == 255 {
				l = 2
			}
			ops = append(ops, op{node: nd, off: counters[nd], len: l, write: true})
		}
	}
	return ops
}

func sortNodes(s []uint16) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
