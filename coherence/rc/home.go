package rc

import (
	"fmt"
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// master is the home's copy of a page it is the home of.
type master struct {
	data     []byte
	applied  clocks.Vector // per node, the last interval applied
	lastSeq  []uint64      // per node, the last diff applied (duplicates are acknowledged again)
	lastLost []bool        // per node, whether bytes of that diff lost to a racing write
	segs     []seg         // which write put each written byte, sorted, disjoint
}

// seg says that bytes [lo, hi) were last put by w.
type seg struct {
	lo, hi uint32
	w      *writeRec
}

type writeRec struct {
	Write
	sum uint64 // the sum of the clock: the priority, with the node
}

// before reports whether a has lower priority than b.
func (a *writeRec) before(b *writeRec) bool {
	if a.sum != b.sum {
		return a.sum < b.sum
	}
	return a.Node < b.Node
}

func (e *Engine) master(p PageID) *master {
	m := e.homed[p]
	if m == nil {
		m = &master{
			data:     make([]byte, e.cfg.PageSize),
			applied:  clocks.NewVector(e.cfg.Nodes),
			lastSeq:  make([]uint64, e.cfg.Nodes),
			lastLost: make([]bool, e.cfg.Nodes),
		}
		e.homed[p] = m
	}
	return m
}

// Master returns a copy of the home's master copy of page p, for checks:
// nil if p is not homed here or is written in place and still private
// (Private: the program's memory is its master then).
func (e *Engine) Master(p PageID) []byte {
	if e.cfg.Home(p) != e.me() || e.Private(p) {
		return nil
	}
	return slices.Clone(e.master(p).data)
}

// applyDiff applies a writer's diff to the master copy, once, and reports
// whether bytes of it lost to a racing write of higher priority (then the
// writer's copy differs from the master: it refreshes it at its next
// acquire).
func (e *Engine) applyDiff(d *Message) (lost bool, err error) {
	m := e.master(d.Page)
	if d.Seq <= m.lastSeq[d.From] {
		e.stats.Duplicates++
		return d.Seq == m.lastSeq[d.From] && m.lastLost[d.From], nil
	}
	if len(d.Clock) != e.cfg.Nodes || d.Clock[d.From] != d.Interval {
		return false, fmt.Errorf("rc: diff of page %d from %d: clock %v does not carry interval %d", d.Page, d.From, d.Clock, d.Interval)
	}
	m.lastSeq[d.From] = d.Seq
	m.applied[d.From] = max(m.applied[d.From], d.Interval)
	w := &writeRec{Write: Write{Node: d.From, Interval: d.Interval, Clock: d.Clock.Clone()}}
	for _, x := range d.Clock {
		w.sum += x
	}
	prev := uint32(0)
	for i, r := range d.Runs {
		lo, hi := r.Off, r.Off+uint32(len(r.Data))
		if hi > uint32(len(m.data)) || hi < lo || (i > 0 && lo < prev) {
			return lost, fmt.Errorf("rc: diff of page %d from %d: bytes [%d, %d) outside a page of %d or out of order", d.Page, d.From, lo, hi, len(m.data))
		}
		prev = hi
	}
	lost = e.applyRuns(d.Page, m, w, d.Runs)
	m.lastLost[d.From] = lost
	return lost, nil
}

// applyRuns writes the runs (sorted, disjoint) into the master, except
// the bytes put by a write of higher priority, reports the races they
// overlap, and reports whether bytes were kept from such a write. One pass
// over the page's segments serves all the runs.
func (e *Engine) applyRuns(p PageID, m *master, w *writeRec, runs []Run) (lost bool) {
	// The new segments are built in the engine's scratch and copied back
	// into the master's own array: a page written at every release (a
	// float array changes in hundreds of runs) would otherwise leave a
	// slice of segments to the collector at every diff.
	out := e.segScratch[:0]
	segs := m.segs
	i := 0
	var back seg // a remainder of a segment put back for the next run
	have := false
	next := func() (seg, bool) {
		if have {
			have = false
			return back, true
		}
		if i < len(segs) {
			i++
			return segs[i-1], true
		}
		return seg{}, false
	}
	for _, r := range runs {
		lo, hi := r.Off, r.Off+uint32(len(r.Data))
		put := func(a, b uint32) { copy(m.data[a:b], r.Data[a-lo:b-lo]) }
		at := lo // bytes of [lo, hi) before at are decided
		for {
			s, ok := next()
			if !ok {
				break
			}
			if s.hi <= lo {
				out = append(out, s)
				continue
			}
			if s.lo >= hi {
				back, have = s, true
				break
			}
			if s.lo < lo {
				out = append(out, seg{s.lo, lo, s.w})
			}
			a, b := max(s.lo, lo), min(s.hi, hi)
			if at < a { // a gap nobody wrote before
				put(at, a)
				out = append(out, seg{at, a, w})
			}
			if s.w.Node != w.Node && s.w.Clock.Compare(w.Clock) == clocks.Concurrent && !e.cfg.bugs.noRaces {
				e.race(p, a, b, s.w, w)
			}
			if s.w.before(w) || e.cfg.bugs.arrival {
				put(a, b)
				out = append(out, seg{a, b, w})
			} else {
				out = append(out, seg{a, b, s.w})
				lost = true
			}
			at = b
			if s.hi > hi {
				back, have = seg{hi, s.hi, s.w}, true
				break
			}
		}
		if at < hi {
			put(at, hi)
			out = append(out, seg{at, hi, w})
		}
	}
	for {
		s, ok := next()
		if !ok {
			break
		}
		out = append(out, s)
	}
	// Coalesce neighbours put by the same write.
	m.segs = m.segs[:0]
	for _, s := range out {
		if n := len(m.segs); n > 0 && m.segs[n-1].w == s.w && m.segs[n-1].hi == s.lo {
			m.segs[n-1].hi = s.hi
			continue
		}
		m.segs = append(m.segs, s)
	}
	clear(out) // drop the scratch's references to writes
	e.segScratch = out[:0]
	return lost
}

// race reports a race on [a, b) of page p, merged with the last report
// when it continues it.
func (e *Engine) race(p PageID, a, b uint32, first, second *writeRec) {
	if n := len(e.rd.Races); n > 0 {
		r := &e.rd.Races[n-1]
		if r.Page == p && r.Off+r.Len == a && sameWrite(r.A, first.Write) && sameWrite(r.B, second.Write) {
			r.Len += b - a
			return
		}
	}
	e.stats.Races++
	e.rd.Races = append(e.rd.Races, Race{Page: p, Off: a, Len: b - a, A: first.Write, B: second.Write})
}

func sameWrite(a, b Write) bool { return a.Node == b.Node && a.Interval == b.Interval }
