package analyzer

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Race is a data race found by the home of a page in the release-consistent
// mode: two writes by different nodes, whose vector clocks are concurrent,
// changed the same bytes. It mirrors what the protocol's homes report
// without importing the protocol, so that the analyzer stays free of
// protocol packages; the daemon converts.
type Race struct {
	// Page is the page; Off and Len are the raced bytes, relative to the
	// start of the page.
	Page     uint32
	Off, Len uint32
	// A and B are the two writes; A is the one whose diff reached the home
	// first. Which one that was does not matter to the analyzer: the home
	// keeps the same bytes whatever the order.
	A, B RaceWrite
}

// RaceWrite is one of the two writes of a race.
type RaceWrite struct {
	Node uint16
	// Interval is the writer's interval (the time between two of its
	// synchronisation operations) in which it wrote.
	Interval uint64
	// Clock is the writer's vector clock for the write, with Interval in
	// its own entry. Only its sum is kept: it decides, with the node id,
	// which write the bytes kept. nil means unknown.
	Clock []uint64
}

// RaceDetail is what a DataRace finding says beyond the fields every
// finding has.
type RaceDetail struct {
	// Nodes are the two nodes whose writes raced, the lower id first.
	Nodes [2]uint16 `json:"nodes"`
	// Bytes are the raced bytes, relative to the start of the page,
	// sorted and disjoint.
	Bytes []Range `json:"bytes"`
	// Names names the raced bytes in offset order: a variable by its name
	// when every byte of it raced, else with the raced bytes relative to
	// its start ("Stats.Hits bytes [0,4)"); bytes in no variable by their
	// page offsets ("bytes [16,24) of page 3").
	Names []string `json:"names"`
	// Count is the number of races the page's home reported on these
	// bytes between the two nodes: a race repeated in every interval of
	// a loop is one finding.
	Count int `json:"count"`
	// First and Last are the first and the last of them to be recorded;
	// the same race when Count is 1.
	First RaceWrites `json:"first"`
	Last  RaceWrites `json:"last"`
	// KeptTimes[i] is the number of the races in which the bytes kept the
	// write of Nodes[i]. Races recorded without clocks count in neither.
	KeptTimes [2]int `json:"kept_times"`
}

// RaceWrites are the two writes of one race.
type RaceWrites struct {
	// Intervals[i] is the interval of the write of RaceDetail.Nodes[i].
	Intervals [2]uint64 `json:"intervals"`
	// Kept is the node whose write the bytes kept, or -1 when unknown (a
	// clock was missing).
	Kept int `json:"kept"`
}

// interval returns the interval of node n's write.
func (w RaceWrites) interval(d *RaceDetail, n int) uint64 {
	if n == int(d.Nodes[0]) {
		return w.Intervals[0]
	}
	return w.Intervals[1]
}

// raceKey identifies the races that are merged into one record: the same
// bytes of the same page between the same two nodes (n0 < n1), whichever
// intervals they came from.
type raceKey struct {
	page, off, len uint32
	n0, n1         uint16
}

// raceRec is a race as the analyzer keeps it: its repetitions are counted,
// and of their writes only the first and the last are kept, so that a race
// repeated in every interval of a long loop costs one record.
type raceRec struct {
	raceKey
	count             int
	first, last       RaceWrites
	firstSeq, lastSeq uint64 // recording order, to pick the first and last of a finding
	kept              [2]int // times n0's, n1's write was kept
}

// RecordRace adds a data race that the home of a page found. Repeated races
// on the same bytes of a page between the same two nodes are counted in one
// record. The analyzer keeps at most Limits.Races such records; races that
// would need a new record past that are counted (Totals.DroppedRaces) but
// in no finding: the first races found are kept, since each is a bug to
// fix and later ones are often the same bug elsewhere.
//
// A race whose range is empty is ignored and one that crosses the end of
// the page is cut at it; both are counted in Totals.InvalidRanges. A race
// of a node with itself is ignored: a node's own writes are ordered, and
// a home never reports one. RecordRace keeps no reference to r's clocks.
func (a *Analyzer) RecordRace(r Race) {
	if r.A.Node == r.B.Node {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	lo, hi, ok := a.clip(r.Off, r.Len)
	if !ok {
		return
	}
	a.dataRaces++
	k := raceKey{page: r.Page, off: uint32(lo), len: uint32(hi - lo), n0: r.A.Node, n1: r.B.Node}
	x, y := r.A, r.B
	if k.n0 > k.n1 {
		k.n0, k.n1 = k.n1, k.n0
		x, y = y, x
	}
	w := RaceWrites{Intervals: [2]uint64{x.Interval, y.Interval}, Kept: keptNode(x, y)}
	rec := a.races[k]
	if rec == nil {
		if len(a.races) >= a.lim.Races {
			a.droppedRaces++
			return
		}
		if a.races == nil {
			a.races = make(map[raceKey]*raceRec)
		}
		rec = &raceRec{raceKey: k, first: w, firstSeq: a.raceSeq}
		a.races[k] = rec
	}
	rec.count++
	rec.last, rec.lastSeq = w, a.raceSeq
	a.raceSeq++
	switch w.Kept {
	case int(k.n0):
		rec.kept[0]++
	case int(k.n1):
		rec.kept[1]++
	}
}

// keptNode returns the node whose write the raced bytes kept, or -1 when a
// clock is missing. The home keeps the write of higher priority: the larger
// sum of its clock, then the higher node id. The sum is computed as the
// home computes it (wrapping on overflow, which no real clock reaches), so
// that the two agree on every input.
func keptNode(x, y RaceWrite) int {
	if len(x.Clock) == 0 || len(y.Clock) == 0 {
		return -1
	}
	var sx, sy uint64
	for _, c := range x.Clock {
		sx += c
	}
	for _, c := range y.Clock {
		sy += c
	}
	switch {
	case sx > sy:
		return int(x.Node)
	case sy > sx:
		return int(y.Node)
	}
	return int(max(x.Node, y.Node))
}

// raceFindings returns one DataRace finding per page, pair of nodes and
// variable (or run of bytes in no variable) that raced, and the indices of
// the variables they name. The caller holds a.mu.
//
// The records of one page and pair of nodes are grouped by what they
// touch: a record's extent is its bytes together with the page's part of
// every variable they overlap, and records whose extents overlap make one
// finding. So two races on different bytes of one variable make one finding
// about that variable, races on two neighbouring fields make two, and a
// race over a whole array of structs makes one finding that names its
// fields, not one per field.
func (a *Analyzer) raceFindings() ([]Finding, map[int]bool) {
	recs := make([]*raceRec, 0, len(a.races))
	for _, r := range a.races {
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(x, y *raceRec) int {
		return cmp.Or(cmp.Compare(x.page, y.page), cmp.Compare(x.n0, y.n0), cmp.Compare(x.n1, y.n1),
			cmp.Compare(x.off, y.off), cmp.Compare(x.len, y.len))
	})
	type extent struct {
		lo, hi uint64 // relative to the page
		r      *raceRec
	}
	var out []Finding
	named := make(map[int]bool)
	for len(recs) > 0 {
		n := 1
		for n < len(recs) && recs[n].page == recs[0].page && recs[n].n0 == recs[0].n0 && recs[n].n1 == recs[0].n1 {
			n++
		}
		group := recs[:n]
		recs = recs[n:]
		base := uint64(group[0].page) * a.pageSize
		exts := make([]extent, len(group))
		for i, r := range group {
			lo, hi := uint64(r.off), uint64(r.off)+uint64(r.len)
			for _, vi := range a.varsIn(base+lo, base+hi) {
				v := a.vars[vi]
				lo = min(lo, max(v.Offset, base)-base)
				hi = max(hi, min(v.Offset+v.Size, base+a.pageSize)-base)
			}
			exts[i] = extent{lo, hi, r}
		}
		slices.SortStableFunc(exts, func(x, y extent) int { return cmp.Compare(x.lo, y.lo) })
		for len(exts) > 0 {
			n, end := 1, exts[0].hi
			for n < len(exts) && exts[n].lo < end {
				end = max(end, exts[n].hi)
				n++
			}
			cluster := make([]*raceRec, n)
			for i, e := range exts[:n] {
				cluster[i] = e.r
			}
			exts = exts[n:]
			out = append(out, a.raceFinding(cluster, named))
		}
	}
	return out, named
}

// raceFinding builds the finding about races of one page between one pair
// of nodes, and adds the indices of the variables it names to named. The
// caller holds a.mu.
func (a *Analyzer) raceFinding(recs []*raceRec, named map[int]bool) Finding {
	r0 := recs[0]
	p, base := r0.page, uint64(r0.page)*a.pageSize
	d := &RaceDetail{Nodes: [2]uint16{r0.n0, r0.n1}, First: r0.first, Last: r0.last}
	var raced spanSet
	firstSeq, lastSeq := r0.firstSeq, r0.lastSeq
	for _, r := range recs {
		raced = raced.add(uint64(r.off), uint64(r.off)+uint64(r.len))
		d.Count += r.count
		d.KeptTimes[0] += r.kept[0]
		d.KeptTimes[1] += r.kept[1]
		if r.firstSeq < firstSeq {
			firstSeq, d.First = r.firstSeq, r.first
		}
		if r.lastSeq > lastSeq {
			lastSeq, d.Last = r.lastSeq, r.last
		}
	}
	for _, x := range raced {
		d.Bytes = append(d.Bytes, Range{Off: uint32(x.lo), Len: uint32(x.hi - x.lo)})
	}
	// races counts the races whose bytes touch [lo, hi) of the page.
	races := func(lo, hi uint64) int {
		n := 0
		for _, r := range recs {
			if uint64(r.off) < hi && lo < uint64(r.off)+uint64(r.len) {
				n += r.count
			}
		}
		return n
	}
	writers := []uint16{r0.n0, r0.n1}
	type use struct {
		VarUse
		name string // as RaceDetail.Names says it
	}
	var uses []use
	var inVars spanSet
	lo, hi := raced[0].lo, raced[len(raced)-1].hi
	for _, vi := range a.varsIn(base+lo, base+hi) {
		v := a.vars[vi]
		vlo, vhi := max(v.Offset, base)-base, min(v.Offset+v.Size, base+a.pageSize)-base
		part := raced.clip(vlo, vhi)
		if len(part) == 0 {
			continue
		}
		named[vi] = true
		inVars = inVars.add(vlo, vhi)
		name := v.Name
		if len(part) > 1 || base+part[0].lo > v.Offset || base+part[0].hi < v.Offset+v.Size {
			// Partial: say which bytes, relative to the variable, as a
			// program indexes it.
			rel := make([]string, len(part))
			for i, x := range part {
				rel[i] = fmt.Sprintf("[%d,%d)", base+x.lo-v.Offset, base+x.hi-v.Offset)
			}
			name += " bytes " + strings.Join(rel, " ")
		}
		uses = append(uses, use{VarUse{Name: v.Name, Offset: v.Offset, Size: v.Size, Writes: races(vlo, vhi)}, name})
	}
	for _, x := range raced.minus(inVars) {
		uses = append(uses, use{
			VarUse{Name: fmt.Sprintf("unnamed bytes [%d,%d)", base+x.lo, base+x.hi), Offset: base + x.lo, Size: x.hi - x.lo,
				Writes: races(x.lo, x.hi)},
			fmt.Sprintf("bytes [%d,%d) of page %d", x.lo, x.hi, p),
		})
	}
	slices.SortStableFunc(uses, func(x, y use) int { return cmp.Compare(x.Offset, y.Offset) })
	f := Finding{Page: p, Class: DataRace, Nodes: slices.Clone(writers), Race: d, Vars: make([]VarUse, len(uses))}
	for i, u := range uses {
		f.Vars[i] = u.VarUse
		f.Vars[i].WrittenBy = slices.Clone(writers)
		d.Names = append(d.Names, u.name)
	}
	f.Summary = raceSummary(p, d)
	f.Fix = raceFix(d)
	return f
}

// raceSummary is the one-line description of a data race finding.
func raceSummary(p uint32, d *RaceDetail) string {
	on := raceNames(d.Names)
	n0, n1 := d.Nodes[0], d.Nodes[1]
	if d.Count == 1 {
		return fmt.Sprintf("page %d: data race on %s: node %d's write in interval %d and node %d's write in interval %d were concurrent",
			p, on, n0, d.First.Intervals[0], n1, d.First.Intervals[1])
	}
	return fmt.Sprintf("page %d: data race on %s: nodes %d and %d wrote it concurrently %s times, first in node %d's interval %d and node %d's interval %d, last in intervals %d and %d",
		p, on, n0, n1, commas(d.Count), n0, d.First.Intervals[0], n1, d.First.Intervals[1], d.Last.Intervals[0], d.Last.Intervals[1])
}

// raceNames renders "a, b and c", at most six names, so that a race over a
// whole array stays one line.
func raceNames(names []string) string {
	const maxNames = 6
	if len(names) > maxNames {
		return andList(append(slices.Clone(names[:maxNames]), fmt.Sprintf("%d more", len(names)-maxNames)))
	}
	if len(names) == 0 {
		return "unknown bytes"
	}
	return andList(names)
}

// raceFix says what to do about a data race, and what the memory holds
// meanwhile: a program that reads the bytes finds one of the two writes,
// not a mix of both, and may be surprised which.
func raceFix(d *RaceDetail) string {
	n0, n1 := d.Nodes[0], d.Nodes[1]
	var b strings.Builder
	fmt.Fprintf(&b, "synchronise the writes of nodes %d and %d: put them under one lock, or order them with a barrier, so that one happens before the other; "+
		"if each node was meant to write data of its own, move the data apart so that the nodes no longer write the same bytes (e.g. a slot per node)", n0, n1)
	other := func(n int) int {
		if n == int(n0) {
			return int(n1)
		}
		return int(n0)
	}
	last := d.Last
	switch {
	case last.Kept < 0:
		b.WriteString(". Which write the bytes kept is unknown: the race was recorded without vector clocks")
	case d.Count == 1:
		fmt.Fprintf(&b, ". Meanwhile each byte keeps one of the writes, not both: node %d's write (interval %d) was kept, node %d's (interval %d) lost",
			last.Kept, last.interval(d, last.Kept), other(last.Kept), last.interval(d, other(last.Kept)))
	default:
		fmt.Fprintf(&b, ". Meanwhile each byte keeps one of the writes, not both: in the last race node %d's write (interval %d) was kept, node %d's (interval %d) lost; "+
			"of the %s races, node %d's write was kept in %s and node %d's in %s",
			last.Kept, last.interval(d, last.Kept), other(last.Kept), last.interval(d, other(last.Kept)),
			commas(d.Count), n0, commas(d.KeptTimes[0]), n1, commas(d.KeptTimes[1]))
		if u := d.Count - d.KeptTimes[0] - d.KeptTimes[1]; u > 0 {
			fmt.Fprintf(&b, " (%s recorded without clocks)", commas(u))
		}
	}
	return b.String()
}

// raceString is Finding.String for a data race finding.
func (f Finding) raceString() string {
	d := f.Race
	var b strings.Builder
	b.WriteString(f.Summary)
	fmt.Fprintf(&b, "\n  class: %s", f.Class)
	bytes := make([]string, len(d.Bytes))
	for i, r := range d.Bytes {
		bytes[i] = fmt.Sprintf("[%d,%d)", r.Off, r.Off+r.Len)
	}
	fmt.Fprintf(&b, "\n  raced bytes of page %d: %s", f.Page, strings.Join(bytes, " "))
	if len(d.Names) > 6 {
		// The summary left some out.
		fmt.Fprintf(&b, "\n  in %s", strings.Join(d.Names, ", "))
	}
	fmt.Fprintf(&b, "\n  fix: %s", f.Fix)
	return b.String()
}

// raceLess orders the race findings of one page with equal counts: by
// their first byte, then by their nodes.
func raceLess(x, y *RaceDetail) bool {
	var xo, yo uint32
	if len(x.Bytes) > 0 {
		xo = x.Bytes[0].Off
	}
	if len(y.Bytes) > 0 {
		yo = y.Bytes[0].Off
	}
	if xo != yo {
		return xo < yo
	}
	if x.Nodes[0] != y.Nodes[0] {
		return x.Nodes[0] < y.Nodes[0]
	}
	return x.Nodes[1] < y.Nodes[1]
}

// raceID identifies a data race finding across reports, for Merge.
func raceID(f Finding) string {
	d := f.Race
	return fmt.Sprintf("%d %d %d %v", f.Page, d.Nodes[0], d.Nodes[1], d.Bytes)
}

// mergeRaces joins the data race findings of several reports. Only a page's
// home records its races, so the parts do not overlap; a finding found in
// two parts (the same report merged twice, or a page whose home changed
// and saw the same race) is kept once, with its larger count.
func mergeRaces(fs []Finding) []Finding {
	byID := make(map[string]int, len(fs))
	var out []Finding
	for _, f := range fs {
		id := raceID(f)
		i, ok := byID[id]
		switch {
		case !ok:
			byID[id] = len(out)
			out = append(out, f)
		case f.Race.Count > out[i].Race.Count:
			out[i] = f
		}
	}
	return out
}

// raceNote is the line of Report.Text about data races: they are the
// findings to read first.
func (r Report) raceNote() string {
	t := r.Totals
	n := 0
	for _, f := range r.Findings {
		if f.Race != nil {
			n++
		}
	}
	s := fmt.Sprintf("%s recorded by the pages' homes, in %s below (races on the same bytes between the same two nodes are one finding)",
		plural(t.DataRaces, "data race"), plural(n, "finding"))
	if t.DroppedRaces > 0 {
		s += fmt.Sprintf("; %s of them are in no finding: they came after the analyzer had kept its limit of distinct races", commas(t.DroppedRaces))
	}
	return s + "\n"
}

// plural renders "1 race" or "2,048 races".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return commas(n) + " " + what + "s"
}
