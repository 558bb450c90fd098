package analyzer

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// VarUse describes a variable, or a run of unnamed bytes, written on a page.
type VarUse struct {
	// Name is the variable's name, or "unnamed bytes [off,off+len)" with
	// region byte offsets for written bytes that lie in no named variable.
	Name string `json:"name"`
	// Offset and Size are the variable's place in the region (the whole
	// variable, even when it spans more than this page).
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
	// WrittenBy lists the nodes that wrote at least one byte of it on this
	// page, in increasing order; in a DataRace finding, the two nodes.
	WrittenBy []uint16 `json:"written_by"`
	// Writes is the number of transfers whose written ranges touched it;
	// in a DataRace finding, the number of races that touched it.
	Writes int `json:"writes"`
}

// Finding is the analyzer's verdict on one page, or, when its Class is
// DataRace, on the racing writes of two nodes to one variable (or run of
// unnamed bytes) of a page.
type Finding struct {
	Page  uint32 `json:"page"`
	Class Class  `json:"class"`
	// Vars are the named variables whose bytes were written on this page,
	// and runs of written unnamed bytes, in offset order.
	Vars []VarUse `json:"vars"`
	// Migrations counts every transfer of the page, WriteMigrations the
	// ownership transfers among them.
	Migrations      int `json:"migrations"`
	WriteMigrations int `json:"write_migrations"`
	// Cost is the total time faulting threads waited for the page.
	Cost time.Duration `json:"cost_ns"`
	// Nodes are the nodes that gave or received the page.
	Nodes []uint16 `json:"nodes"`
	// Locks are, for a LockProtected finding, the locks that moved with
	// the page from writer to writer, sorted.
	Locks []string `json:"locks,omitempty"`
	// Race holds the races of a DataRace finding, whose migration counts
	// and cost are zero; nil for every other class.
	Race *RaceDetail `json:"race,omitempty"`
	// Fix is the concrete change to make. Only FalseSharing findings carry
	// a layout change; DataRace, LockProtected, TrueSharing and Contended
	// findings give advice; ReadMostly and Quiet findings leave it empty.
	Fix string `json:"fix,omitempty"`
	// Summary is a one-line description.
	Summary string `json:"summary"`
}

// String returns a multi-line description: the summary, the written
// variables with their writers, the transfer counts and the fix.
func (f Finding) String() string {
	if f.Race != nil {
		return f.raceString()
	}
	var b strings.Builder
	b.WriteString(f.Summary)
	fmt.Fprintf(&b, "\n  class: %s", f.Class)
	w := 0
	for _, v := range f.Vars {
		w = max(w, len(v.Name))
	}
	for _, v := range f.Vars {
		fmt.Fprintf(&b, "\n  %-*s  bytes [%d,%d)  written by %s in %s transfers",
			w, v.Name, v.Offset, v.Offset+v.Size, nodesWord(v.WrittenBy), commas(v.Writes))
	}
	fmt.Fprintf(&b, "\n  %s migrations (%s for ownership) between %s",
		commas(f.Migrations), commas(f.WriteMigrations), nodesWord(f.Nodes))
	if f.Cost > 0 {
		fmt.Fprintf(&b, "; faulting threads waited %s", fmtDur(f.Cost))
	}
	if f.Fix != "" {
		fmt.Fprintf(&b, "\n  fix: %s", f.Fix)
	}
	return b.String()
}

// Findings returns a finding for every page that is not Quiet, and the
// DataRace findings. Data races come first, the most often repeated first:
// they are bugs, whatever they cost. The other findings follow the most
// expensive first (by Cost, then severity, then migrations, then page).
func (a *Analyzer) Findings() []Finding {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Finding
	for _, v := range a.analyzeAll() {
		if v.f.Class != Quiet {
			out = append(out, v.f)
		}
	}
	races, _ := a.raceFindings()
	out = append(out, races...)
	sortFindings(out)
	return out
}

func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		x, y := fs[i], fs[j]
		if xr, yr := x.Race != nil, y.Race != nil; xr || yr {
			switch {
			case xr != yr:
				return xr
			case x.Race.Count != y.Race.Count:
				return x.Race.Count > y.Race.Count
			case x.Page != y.Page:
				return x.Page < y.Page
			}
			return raceLess(x.Race, y.Race)
		}
		switch {
		case x.Cost != y.Cost:
			return x.Cost > y.Cost
		case x.Class != y.Class:
			return x.Class > y.Class
		case x.Migrations != y.Migrations:
			return x.Migrations > y.Migrations
		}
		return x.Page < y.Page
	})
}

// pageView is the analysis of one page.
type pageView struct {
	page     uint32
	st       *pageState
	f        Finding
	resident []int // indices of the variables with a byte on the page
	perVar   map[int]int
}

// item is a written variable (or run of unnamed bytes) with what the fix
// generator needs to know about it.
type item struct {
	VarUse
	varPath
	named bool
	parts map[uint16]spanSet // page-relative bytes each writer wrote in it
}

// varPath is what a variable's name says about its place in a type, for
// names as StructVars makes them: "Stats.Hits", "Stats[1].Hits",
// "Bank.Shards[2].Sum".
type varPath struct {
	// top is the allocation: the name up to its first '.' or '['.
	top string
	// root is the struct whose fields are padded apart: the array element
	// the variable is a field of ("Stats[1]"), or else top when the name
	// has a field ("Stats" for "Stats.Hits"); "" for a plain variable.
	root string
	// elem is the array element the variable is a field of ("Stats[1]",
	// "Grid[0][1]"), or ""; arr is its array without the element's
	// indices ("Stats", "Grid"), and arrKey that array with every index
	// left out ("Bank.Shards" for "Bank[0].Shards[1].Sum"), which names
	// the element type: every element of it, in any enclosing array.
	elem, arr, arrKey string
}

// parsePath splits a variable name; see varPath.
func parsePath(name string) varPath {
	var p varPath
	i := strings.IndexAny(name, ".[")
	if i <= 0 {
		return varPath{top: name}
	}
	p.top = name[:i]
	// The innermost element with a field after it: "…[i][j]." .
	for j := len(name) - 1; j > 0; j-- {
		if name[j] != '.' || name[j-1] != ']' {
			continue
		}
		k := j // the start of the trailing index groups
		for k > 0 && name[k-1] == ']' {
			open := strings.LastIndexByte(name[:k-1], '[')
			if open < 0 || !allDigits(name[open+1:k-1]) {
				break
			}
			k = open
		}
		if k < j && k > 0 {
			p.elem, p.arr = name[:j], name[:k]
			p.arrKey = stripIndices(p.arr)
		}
		break
	}
	switch {
	case p.elem != "":
		p.root = p.elem
	case strings.Contains(name, "."):
		p.root = p.top
	}
	return p
}

func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// stripIndices removes every "[digits]" from s.
func stripIndices(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '[' {
			if j := strings.IndexByte(s[i:], ']'); j > 0 && allDigits(s[i+1:i+j]) {
				i += j
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// pattern is a decoded write pattern.
type pattern struct {
	node  uint16
	spans spanSet
	n     int
}

// analyzeAll analyzes every page, in page order. The caller holds a.mu.
func (a *Analyzer) analyzeAll() []pageView {
	ids := make([]uint32, 0, len(a.pages))
	for p := range a.pages {
		ids = append(ids, p)
	}
	slices.Sort(ids)
	out := make([]pageView, 0, len(ids))
	for _, p := range ids {
		out = append(out, a.analyzePage(p, a.pages[p]))
	}
	return out
}

// analyzePage classifies one page and builds its finding. The caller holds
// a.mu.
func (a *Analyzer) analyzePage(p uint32, st *pageState) pageView {
	ps := a.pageSize
	base := uint64(p) * ps
	end := base + ps
	view := pageView{page: p, st: st, resident: a.varsIn(base, end), perVar: make(map[int]int)}

	var writers []uint16 // st.written is sorted by node
	for _, w := range st.written {
		if len(w.spans) > 0 {
			writers = append(writers, w.node)
		}
	}

	pats := make([]pattern, 0, st.npat+len(st.overflow))
	for _, pt := range st.patterns {
		pats = append(pats, pattern{pt.node, decodeSpans(pt.key), pt.n})
	}
	for _, o := range st.overflow {
		// Approximation past maxPatterns: assume each such period wrote
		// everything the node ever wrote on the page.
		pats = append(pats, pattern{o.node, st.writtenBy(o.node), o.n})
	}
	writesIn := func(lo, hi uint64, nodes []uint16) int {
		total := 0
		for _, pt := range pats {
			if nodes != nil && !slices.Contains(nodes, pt.node) {
				continue
			}
			if pt.spans.intersects(lo, hi) {
				total += pt.n
			}
		}
		return total
	}

	var items []item
	var named spanSet
	for _, vi := range view.resident {
		v := a.vars[vi]
		lo, hi := max(v.Offset, base)-base, min(v.Offset+v.Size, end)-base
		named = named.add(lo, hi)
		it := item{VarUse: VarUse{Name: v.Name, Offset: v.Offset, Size: v.Size}, varPath: parsePath(v.Name), named: true, parts: make(map[uint16]spanSet)}
		for _, n := range writers {
			if part := st.writtenBy(n).clip(lo, hi); len(part) > 0 {
				it.WrittenBy = append(it.WrittenBy, n)
				it.parts[n] = part
			}
		}
		it.Writes = writesIn(lo, hi, nil)
		view.perVar[vi] = it.Writes
		if len(it.WrittenBy) > 0 {
			items = append(items, it)
		}
	}
	items = append(items, unnamedItems(st, writers, named, base, writesIn)...)
	sort.SliceStable(items, func(i, j int) bool {
		if items[i].Offset != items[j].Offset {
			return items[i].Offset < items[j].Offset
		}
		return items[i].Name < items[j].Name
	})

	overlap := false
	for i := range writers {
		for j := i + 1; j < len(writers); j++ {
			if st.writtenBy(writers[i]).overlaps(st.writtenBy(writers[j])) {
				overlap = true
			}
		}
	}
	// The finding shows the counts of every transfer of the page, but the
	// class rests on the transfers since the page got detail, which the
	// written ranges and nodes describe: a page that got detail late is
	// not judged on a handful of transfers against thousands of counts.
	migrations, writes, cost := int(st.cnt.migrations), int(st.cnt.writes), st.cnt.cost
	reads := migrations - writes
	dwrites := st.writes
	dreads := st.detailed() - dwrites
	class := Quiet
	switch {
	case dwrites >= MinWriteMigrations && len(writers) >= 2:
		class = FalseSharing
		if overlap {
			class = TrueSharing
			if locks, _ := st.orderingLocks(); len(locks) > 0 {
				class = LockProtected
			}
		}
	case dreads >= MinReadMigrations && dreads > dwrites && (len(writers) <= 1 || dwrites < MinWriteMigrations):
		class = ReadMostly
	case dwrites >= MinWriteMigrations && len(st.writeNodes) >= 2:
		class = Contended
	}

	f := Finding{
		Page:            p,
		Class:           class,
		Migrations:      migrations,
		WriteMigrations: writes,
		Cost:            cost,
		Nodes:           slices.Clone(st.nodes),
	}
	f.Vars = make([]VarUse, 0, len(items))
	for _, it := range items {
		f.Vars = append(f.Vars, it.VarUse)
	}
	stats := commas(migrations) + " migrations"
	if cost > 0 {
		stats += ", " + fmtDur(cost)
	}
	switch class {
	case FalseSharing:
		f.Summary = fmt.Sprintf("page %d: %s share a page: %s", p, itemList(items), stats)
		f.Fix = a.falseSharingFix(items, base)
		if st.lockPeriods >= MinLockPeriods && 2*st.lockedPeriods > st.lockPeriods {
			// The writers already order their writes through locks:
			// release consistency lets them write the page at once.
			f.Fix += fmt.Sprintf("; or, since the writers hold locks when they write here (in %s of %s periods), keep the layout and allocate these variables release-consistent (dsm.ReleaseConsistent): several nodes then write the page at once, and each node's writes reach the next holder of its lock at Unlock",
				commas(st.lockedPeriods), commas(st.lockPeriods))
		}
	case LockProtected:
		locks, moved := st.orderingLocks()
		f.Locks = locks
		shared := sharedItems(items)
		verb := "is"
		if len(shared) > 1 {
			verb = "are"
		}
		f.Summary = fmt.Sprintf("page %d: %s %s written by more than one node under %s (lock-protected sharing): %s",
			p, itemList(shared), verb, lockWord(locks), stats)
		f.Fix = fmt.Sprintf("nothing to fix: %s already orders the writes, and the page moves with it from node to node "+
			"(it moved with the page in %s of the %s holding periods recorded with their locks; %s ownership transfers among %s). "+
			"If that costs too much, take the lock less often: do more work per acquisition (batch the updates), or let each node work on data of its own so that the lock stays where it is; "+
			"and if the page also holds data that other locks protect, give each lock's data page(s) of its own, so that handing one lock over does not move another lock's data",
			lockWord(locks), commas(moved), commas(st.lockPeriods), commas(writes), nodesWord(st.writeNodes))
	case TrueSharing:
		shared := sharedItems(items)
		verb := "is"
		if len(shared) > 1 {
			verb = "are"
		}
		f.Summary = fmt.Sprintf("page %d: %s %s written by more than one node: %s", p, itemList(shared), verb, stats)
		f.Fix = fmt.Sprintf("synchronise through a lock or partition the data: %s %s written at the same bytes by %s (e.g. give each node its own copy on its own page and combine the copies when reading)",
			itemNames(shared), verb, nodesWord(overlappingWriters(shared)))
	case ReadMostly:
		who := "never written"
		if len(writers) > 0 {
			who = "written by " + nodesWord(writers)
		}
		verb := "is"
		if len(view.resident) > 1 {
			verb = "are"
		}
		f.Summary = fmt.Sprintf("page %d: %s %s read-mostly (%s; %s read copies, %s ownership transfers): nothing to change",
			p, a.residentNames(view.resident, p), verb, who, commas(reads), commas(writes))
	case Contended:
		f.Summary = fmt.Sprintf("page %d: %s: ownership moved %s times among %s for writes, but the written bytes do not show two writers: %s",
			p, a.residentNames(view.resident, p), commas(writes), nodesWord(st.writeNodes), stats)
		if st.unknown > 0 {
			f.Fix = fmt.Sprintf("record the written ranges of every transfer (a diff against the received copy) so that false and true sharing can be told apart: %s of %s transfers carried none",
				commas(st.unknown), commas(st.detailed()))
		} else {
			idle := slices.DeleteFunc(slices.Clone(st.writeNodes), func(n uint16) bool { return slices.Contains(writers, n) })
			f.Fix = fmt.Sprintf("%s took write ownership without changing a byte: look for atomic operations that store an unchanged value (a failing CompareAndSwap, a Swap or Store of the same value) and load first to skip them",
				nodesWord(idle))
		}
	default:
		f.Summary = fmt.Sprintf("page %d: quiet: %s", p, stats)
	}
	view.f = f
	return view
}

// unnamedItems splits the written bytes that lie in no named variable into
// runs with a constant set of writers.
func unnamedItems(st *pageState, writers []uint16, named spanSet, base uint64, writesIn func(lo, hi uint64, nodes []uint16) int) []item {
	rest := make(map[uint16]spanSet)
	var cuts []uint64
	for _, n := range writers {
		s := st.writtenBy(n).minus(named)
		if len(s) == 0 {
			continue
		}
		rest[n] = s
		for _, x := range s {
			cuts = append(cuts, x.lo, x.hi)
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	var out []item
	for i := 0; i+1 < len(cuts); i++ {
		lo, hi := cuts[i], cuts[i+1]
		var by []uint16
		for _, n := range writers {
			if rest[n].intersects(lo, hi) {
				by = append(by, n)
			}
		}
		if len(by) == 0 {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Size == base+lo && slices.Equal(out[k].WrittenBy, by) {
			out[k].Size += hi - lo
			continue
		}
		out = append(out, item{VarUse: VarUse{Offset: base + lo, Size: hi - lo, WrittenBy: by}, parts: make(map[uint16]spanSet)})
	}
	for i := range out {
		it := &out[i]
		it.Name = fmt.Sprintf("unnamed bytes [%d,%d)", it.Offset, it.Offset+it.Size)
		lo, hi := it.Offset-base, it.Offset-base+it.Size
		for _, n := range it.WrittenBy {
			it.parts[n] = rest[n].clip(lo, hi)
		}
		it.Writes = writesIn(lo, hi, it.WrittenBy)
	}
	return out
}

// falseSharingFix returns the layout change that gives every writer of the
// page its own page. items are the written variables in offset order.
//
// The first item stays. When two elements of one array of structs on the
// page are written by different nodes, the element type is padded to a page
// (naming an element would not help: it cannot be allocated apart from its
// array). A later struct field whose writers differ from those of the
// previous written field of the same struct (or array element) gets padding
// in front of it; any other item whose writers differ from those of the
// first item is aligned to a page of its own (its whole allocation when it
// is a field or an element). An item written in disjoint parts by several
// nodes is split.
func (a *Analyzer) falseSharingFix(items []item, base uint64) string {
	ps := a.pageSize
	var fixes []string
	stay := items[0].WrittenBy
	prevField := make(map[string]item)
	shift := make(map[string]uint64)
	moved := make(map[string]bool)
	padArr := splitArrays(items)
	padded := make(map[string]bool)
	cursor := base + ps // where the next variable moved off the page goes
	for i, it := range items {
		if len(it.WrittenBy) > 1 {
			fixes = append(fixes, splitFix(it, base, ps))
			if it.root != "" {
				prevField[it.root] = it
			}
			continue
		}
		if padArr[it.arrKey] && !padded[it.arrKey] {
			padded[it.arrKey] = true
			fixes = append(fixes, a.elementFix(it))
		}
		if it.root != "" {
			prev, ok := prevField[it.root]
			prevField[it.root] = it
			if ok {
				if !slices.Equal(prev.WrittenBy, it.WrittenBy) {
					cur := it.Offset + shift[it.root]
					if pad := (ps - cur%ps) % ps; pad > 0 {
						fixes = append(fixes, fmt.Sprintf("insert %d bytes of padding between %s and %s (e.g. _ [%d]byte)", pad, prev.Name, it.Name, pad))
						shift[it.root] += pad
					}
				}
				continue
			}
		}
		if i == 0 || slices.Equal(it.WrittenBy, stay) || padArr[it.arrKey] {
			continue
		}
		where := "a page of its own"
		if cursor == base+ps {
			where = "the next page"
		}
		switch {
		case !it.named:
			fixes = append(fixes, fmt.Sprintf("find the variable at %s (written by %s) and align it to %s (offset %d); register it with AddVars to have it named",
				it.Name, nodesWord(it.WrittenBy), where, cursor))
			cursor += roundUp(it.Size, ps)
		case it.root != "":
			if moved[it.top] {
				continue
			}
			moved[it.top] = true
			_, size := a.rootExtent(it.top)
			fixes = append(fixes, fmt.Sprintf("align %s to %s (offset %d): r.Alloc(%q, %d, %d)", it.top, where, cursor, it.top, size, ps))
			cursor += roundUp(size, ps)
		default:
			fixes = append(fixes, fmt.Sprintf("align %s to %s (offset %d): r.Alloc(%q, %d, %d)", it.Name, where, cursor, it.Name, it.Size, ps))
			cursor += roundUp(it.Size, ps)
		}
	}
	return strings.Join(fixes, "; ")
}

// splitArrays returns the arrays (by varPath.arrKey) of which two elements
// among items are written by different nodes.
func splitArrays(items []item) map[string]bool {
	out := make(map[string]bool)
	for i, x := range items {
		for _, y := range items[i+1:] {
			if x.arrKey != "" && x.arrKey == y.arrKey && x.elem != y.elem && !slices.Equal(x.WrittenBy, y.WrittenBy) {
				out[x.arrKey] = true
			}
		}
	}
	return out
}

// elementFix says how to pad the element type of it's array so that every
// element has pages of its own. The caller holds a.mu.
func (a *Analyzer) elementFix(it item) string {
	ps := a.pageSize
	stride, start := a.arrayGeometry(it)
	want := roundUp(stride, ps)
	var msg string
	if pad := want - stride; pad > 0 {
		msg = fmt.Sprintf("pad each element of %s to a page of its own: add _ [%d]byte as the last field of the element type (%d → %d bytes per element)",
			it.arr, pad, stride, want)
		if start%ps != 0 {
			msg += fmt.Sprintf(", and start %s on a page boundary (it starts at offset %d)", it.arr, start)
		}
		return msg
	}
	// The elements are whole pages already: they straddle page boundaries.
	return fmt.Sprintf("start %s on a page boundary: its %d-byte elements start at offset %d, so neighbours share a page (align it to %d)",
		it.arr, stride, start, ps)
}

// arrayGeometry returns the size of an element of the array it is an
// element of, and the offset of its first named byte, from the registered
// variables of that array: the smallest distance between the same field of
// two elements, or, with a single element known, the extent of its
// fields. The caller holds a.mu.
func (a *Analyzer) arrayGeometry(it item) (stride, start uint64) {
	start = ^uint64(0)
	first := make(map[string]uint64) // field suffix -> an offset of it
	lo, hi := ^uint64(0), uint64(0)  // the extent of it's own element
	for _, v := range a.vars {
		p := parsePath(v.Name)
		if p.arrKey != it.arrKey {
			continue
		}
		start = min(start, v.Offset)
		if p.elem == it.elem {
			lo, hi = min(lo, v.Offset), max(hi, v.Offset+v.Size)
		}
		suffix := v.Name[len(p.elem):]
		if o, ok := first[suffix]; ok {
			d := max(o, v.Offset) - min(o, v.Offset)
			if d > 0 && (stride == 0 || d < stride) {
				stride = d
			}
		} else {
			first[suffix] = v.Offset
		}
	}
	if stride == 0 && hi > lo {
		stride = roundUp(hi-lo, 8)
	}
	if start == ^uint64(0) {
		start = it.Offset
	}
	return max(stride, 1), start
}

// splitFix describes how to separate the parts of one variable that
// different nodes write. base is the region offset of the page.
func splitFix(it item, base, ps uint64) string {
	var parts []string
	var starts []uint64
	for _, n := range it.WrittenBy {
		s := it.parts[n]
		rel := make([]string, len(s))
		for i, x := range s {
			// Offsets relative to the start of the variable.
			rel[i] = fmt.Sprintf("[%d,%d)", base+x.lo-it.Offset, base+x.hi-it.Offset)
		}
		parts = append(parts, fmt.Sprintf("node %d writes bytes %s", n, strings.Join(rel, " ")))
		starts = append(starts, s[0].lo)
	}
	slices.Sort(starts)
	stride := uint64(0)
	for i := 1; i < len(starts); i++ {
		if d := starts[i] - starts[i-1]; d > 0 && (stride == 0 || d < stride) {
			stride = d
		}
	}
	msg := fmt.Sprintf("split %s so that each node's part is on a page of its own (%s of it)", it.Name, strings.Join(parts, ", "))
	if stride > 0 && stride < ps {
		msg += fmt.Sprintf(": the parts start %d bytes apart; pad each to %d bytes (e.g. _ [%d]byte after each %d-byte element)", stride, ps, ps-stride, stride)
	}
	return msg
}

// rootExtent returns the offset and size spanned by the variables named
// "root.…" or "root[…". The caller holds a.mu.
func (a *Analyzer) rootExtent(root string) (off, size uint64) {
	lo, hi := ^uint64(0), uint64(0)
	for _, v := range a.vars {
		if rest, ok := strings.CutPrefix(v.Name, root); ok && (strings.HasPrefix(rest, ".") || strings.HasPrefix(rest, "[")) {
			lo = min(lo, v.Offset)
			hi = max(hi, v.Offset+v.Size)
		}
	}
	if hi == 0 {
		return 0, 0
	}
	return lo, hi - lo
}

// sharedItems returns the items whose bytes two writers both wrote.
func sharedItems(items []item) []item {
	var out []item
	for _, it := range items {
		if len(overlappingWriters([]item{it})) > 0 {
			out = append(out, it)
		}
	}
	if len(out) == 0 {
		return items
	}
	return out
}

// overlappingWriters returns the nodes that wrote a byte some other node also
// wrote, within the given items.
func overlappingWriters(items []item) []uint16 {
	var out []uint16
	for _, it := range items {
		for i, a := range it.WrittenBy {
			for _, b := range it.WrittenBy[i+1:] {
				if it.parts[a].overlaps(it.parts[b]) {
					out = addNode(addNode(out, a), b)
				}
			}
		}
	}
	return out
}

// itemList renders "a (node 0) and b (node 1)", at most six names.
func itemList(items []item) string {
	vs := make([]VarUse, len(items))
	for i, it := range items {
		vs[i] = it.VarUse
	}
	return varList(vs)
}

// varList renders "a (node 0) and b (node 1)", at most six names.
func varList(vs []VarUse) string {
	const maxNames = 6
	var names []string
	for i, v := range vs {
		if i == maxNames {
			names = append(names, fmt.Sprintf("%d more", len(vs)-maxNames))
			break
		}
		names = append(names, fmt.Sprintf("%s (%s)", v.Name, nodesWord(v.WrittenBy)))
	}
	if len(names) == 0 {
		return "unknown bytes"
	}
	return andList(names)
}

// itemNames renders "a and b".
func itemNames(items []item) string {
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = it.Name
	}
	return andList(names)
}

// residentNames names the variables on a page, or the page itself.
func (a *Analyzer) residentNames(resident []int, p uint32) string {
	const maxNames = 3
	var names []string
	for i, vi := range resident {
		if i == maxNames {
			names = append(names, fmt.Sprintf("%d more", len(resident)-maxNames))
			break
		}
		names = append(names, a.vars[vi].Name)
	}
	if len(names) == 0 {
		return fmt.Sprintf("bytes [%d,%d)", uint64(p)*a.pageSize, uint64(p+1)*a.pageSize)
	}
	return andList(names)
}

// lockWord renders `lock "a"` or `locks "a" and "b"`.
func lockWord(locks []string) string {
	q := make([]string, len(locks))
	for i, l := range locks {
		q[i] = strconv.Quote(l)
	}
	if len(q) == 1 {
		return "lock " + q[0]
	}
	return "locks " + andList(q)
}

// andList joins ["a","b","c"] as "a, b and c".
func andList(s []string) string {
	switch len(s) {
	case 0:
		return ""
	case 1:
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

// nodesWord renders "node 3" or "nodes 0, 1 and 2".
func nodesWord(ns []uint16) string {
	if len(ns) == 0 {
		return "no node"
	}
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(int(n))
	}
	if len(ns) == 1 {
		return "node " + s[0]
	}
	return "nodes " + andList(s)
}

// commas renders 9876 as "9,876".
func commas(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// fmtDur renders a duration with about two significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	case d >= time.Microsecond:
		return d.Round(100 * time.Nanosecond).String()
	}
	return d.String()
}

func roundUp(n, to uint64) uint64 {
	if n == 0 {
		return to
	}
	return (n + to - 1) / to * to
}
