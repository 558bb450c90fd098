package analyzer

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Thresholds of the classification; see the package documentation.
const (
	// MinWriteMigrations is the number of ownership (write) transfers below
	// which a page is not considered to ping-pong for writes.
	MinWriteMigrations = 4
	// MinReadMigrations is the number of read-copy transfers a page needs
	// before it is reported as read-mostly rather than quiet.
	MinReadMigrations = 8
)

// maxPatterns bounds the number of distinct write patterns (node and set of
// written ranges) remembered per page. Patterns past the bound are folded
// into one pattern per node; only the per-variable write counts become
// approximate, never the written ranges or the classification.
const maxPatterns = 4096

// Errors returned by the analyzer; test for them with errors.Is.
var (
	// ErrNotStruct is returned by StructVars for anything but a struct or a
	// pointer to a struct.
	ErrNotStruct = errors.New("analyzer: not a struct")
	// ErrNoMigrations is returned when a chart of migrations is asked for
	// before any migration was recorded.
	ErrNoMigrations = errors.New("analyzer: no migrations recorded")
	// ErrNoVars is returned when a chart of named variables is asked for
	// before any variable was added.
	ErrNoVars = errors.New("analyzer: no named variables")
	// ErrBadSize is returned for an image size outside the supported bounds.
	ErrBadSize = errors.New("analyzer: bad image size")
)

// Range is a byte range relative to the start of a page.
type Range struct{ Off, Len uint32 }

// Migration records one transfer of a page from one node to another.
type Migration struct {
	// Page is the index of the page in the region.
	Page uint32
	// From is the node that gave the page; To is the node that received it.
	From, To uint16
	// Write is true for an ownership (write) transfer and false for a read
	// copy.
	Write bool
	// Wall is when the transfer happened.
	Wall time.Time
	// Clock is the vector clock of the transfer, or nil if unknown.
	Clock []uint64
	// Written holds the byte ranges From wrote while it held the page, from
	// a diff against the copy it had received. nil means unknown; an empty,
	// non-nil slice means From wrote nothing.
	Written []Range
	// Cost is how long the faulting thread waited for this migration, from
	// the fault to the installation of the page.
	Cost time.Duration
}

// Var is a named allocation in the region. A name of the form "S.Field", as
// StructVars makes, marks a field of struct S: two fields of one struct are
// separated by padding, anything else by aligning it to a page of its own.
type Var struct {
	Name   string `json:"name"`
	Offset uint64 `json:"offset"` // byte offset in the region
	Size   uint64 `json:"size"`   // size in bytes
}

// event is the part of a Migration the ownership history needs.
type event struct {
	seq      uint64 // order of recording, across all pages
	wall     int64  // UnixNano; 0 if unknown
	clock    uint64 // sum of the vector clock's entries
	hasClock bool
	from, to uint16
	write    bool
}

// pageState accumulates what is known about one page.
type pageState struct {
	migrations int
	writes     int // ownership transfers
	cost       time.Duration
	nodes      []uint16 // every node that gave or received the page, sorted
	writeNodes []uint16 // nodes on either end of an ownership transfer, sorted

	written map[uint16]spanSet // union of the ranges each node wrote
	// patterns counts holding periods per node and distinct set of written
	// ranges (keyed by spanSet.key); npat is the number of entries.
	patterns map[uint16]map[string]int
	npat     int
	overflow map[uint16]int // periods past maxPatterns, per node
	unknown  int            // transfers without Written
	unknownN []uint16       // nodes that gave the page without Written, sorted

	events []event
}

// Analyzer accumulates migrations and named variables and turns them into
// findings. The zero value is not usable; call New.
type Analyzer struct {
	mu       sync.Mutex
	pageSize uint64
	vars     []Var          // sorted by Offset, then Name
	varIdx   map[string]int // Name -> index in vars
	maxEnd   []uint64       // maxEnd[i] = max end of vars[:i+1]
	pages    map[uint32]*pageState
	seq      uint64
	scratch  spanSet // reused by Record
	keyBuf   []byte  // reused by Record
	invalid  int     // written ranges that were empty or crossed the page end
	first    int64   // earliest wall time seen, UnixNano
	last     int64   // latest wall time seen, UnixNano
}

// New returns an Analyzer for a region with the given page size in bytes.
// It panics if pageSize is not positive, which is a programming error.
func New(pageSize int) *Analyzer {
	if pageSize <= 0 {
		panic(fmt.Sprintf("analyzer: New(%d): the page size must be positive (use os.Getpagesize())", pageSize))
	}
	return &Analyzer{
		pageSize: uint64(pageSize),
		varIdx:   make(map[string]int),
		pages:    make(map[uint32]*pageState),
	}
}

// AddVars registers named allocations. A variable with the name of one
// already registered replaces it (the allocation moved). Variables of size
// zero are ignored: they occupy no byte. An empty name is replaced by
// "var@OFFSET".
func (a *Analyzer) AddVars(vs ...Var) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, v := range vs {
		if v.Size == 0 {
			continue
		}
		if v.Name == "" {
			v.Name = fmt.Sprintf("var@%d", v.Offset)
		}
		if i, ok := a.varIdx[v.Name]; ok {
			a.vars[i] = v
		} else {
			a.varIdx[v.Name] = len(a.vars)
			a.vars = append(a.vars, v)
		}
	}
	sort.Slice(a.vars, func(i, j int) bool {
		if a.vars[i].Offset != a.vars[j].Offset {
			return a.vars[i].Offset < a.vars[j].Offset
		}
		return a.vars[i].Name < a.vars[j].Name
	})
	a.maxEnd = a.maxEnd[:0]
	var m uint64
	for i, v := range a.vars {
		a.varIdx[v.Name] = i
		m = max(m, v.Offset+v.Size)
		a.maxEnd = append(a.maxEnd, m)
	}
}

// Record adds one migration. Record each transfer once (for instance on the
// receiving node, or on the page's home). Written ranges that are empty are
// ignored and ranges that cross the end of the page are cut at it; both are
// counted in Report().Totals.InvalidRanges.
//
// Besides per-page aggregates, the analyzer keeps 32 bytes per migration for
// the ownership history of WriteHeatmap, and one entry per distinct write
// pattern (at most 4096 per page).
func (a *Analyzer) Record(m Migration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.pages[m.Page]
	if st == nil {
		st = &pageState{written: make(map[uint16]spanSet), patterns: make(map[uint16]map[string]int)}
		a.pages[m.Page] = st
	}
	st.migrations++
	if m.Write {
		st.writes++
		st.writeNodes = addNode(addNode(st.writeNodes, m.From), m.To)
	}
	st.cost += m.Cost
	st.nodes = addNode(addNode(st.nodes, m.From), m.To)

	if m.Written == nil {
		st.unknown++
		st.unknownN = addNode(st.unknownN, m.From)
	} else {
		set := a.scratch[:0]
		for _, r := range m.Written {
			lo, hi := uint64(r.Off), uint64(r.Off)+uint64(r.Len)
			if r.Len == 0 || lo >= a.pageSize {
				a.invalid++
				continue
			}
			if hi > a.pageSize {
				a.invalid++
				hi = a.pageSize
			}
			set = set.add(lo, hi)
		}
		a.scratch = set
		if len(set) > 0 {
			w := st.written[m.From]
			for _, x := range set {
				w = w.add(x.lo, x.hi)
			}
			st.written[m.From] = w
			a.keyBuf = set.appendKey(a.keyBuf[:0])
			pm := st.patterns[m.From]
			if pm == nil {
				pm = make(map[string]int)
				st.patterns[m.From] = pm
			}
			if n, ok := pm[string(a.keyBuf)]; ok { // no allocation for a known pattern
				pm[string(a.keyBuf)] = n + 1
			} else if st.npat < maxPatterns {
				pm[string(a.keyBuf)] = 1
				st.npat++
			} else {
				if st.overflow == nil {
					st.overflow = make(map[uint16]int)
				}
				st.overflow[m.From]++
			}
		}
	}

	ev := event{seq: a.seq, from: m.From, to: m.To, write: m.Write}
	a.seq++
	if !m.Wall.IsZero() {
		ev.wall = m.Wall.UnixNano()
		if a.first == 0 || ev.wall < a.first {
			a.first = ev.wall
		}
		a.last = max(a.last, ev.wall)
	}
	if m.Clock != nil {
		ev.hasClock = true
		for _, c := range m.Clock {
			if ev.clock+c < ev.clock { // saturate rather than wrap
				ev.clock = ^uint64(0)
				break
			}
			ev.clock += c
		}
	}
	st.events = append(st.events, ev)
}

// addNode inserts n into the sorted set s.
func addNode(s []uint16, n uint16) []uint16 {
	i, ok := slices.BinarySearch(s, n)
	if ok {
		return s
	}
	return slices.Insert(s, i, n)
}

// varsIn returns the indices of the variables that have a byte in
// [lo, hi), in offset order. The caller holds a.mu.
func (a *Analyzer) varsIn(lo, hi uint64) []int {
	// Variables starting before hi; walk back while an earlier one may
	// still reach lo.
	j := sort.Search(len(a.vars), func(i int) bool { return a.vars[i].Offset >= hi })
	var out []int
	for i := j - 1; i >= 0 && a.maxEnd[i] > lo; i-- {
		if v := a.vars[i]; v.Offset+v.Size > lo {
			out = append(out, i)
		}
	}
	slices.Reverse(out)
	return out
}

// ordered returns the events of a page in the order the page moved: by the
// sum of the vector clock when every event has a clock, then by wall time when
// every event has one, then by recording order.
func (st *pageState) ordered() []event {
	evs := slices.Clone(st.events)
	byClock, byWall := true, true
	for _, e := range evs {
		byClock = byClock && e.hasClock
		byWall = byWall && e.wall != 0
	}
	sort.Slice(evs, func(i, j int) bool {
		x, y := evs[i], evs[j]
		if byClock && x.clock != y.clock {
			return x.clock < y.clock
		}
		if byWall && x.wall != y.wall {
			return x.wall < y.wall
		}
		return x.seq < y.seq
	})
	return evs
}
