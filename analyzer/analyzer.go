package analyzer

import (
	"container/heap"
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
	// MinLockPeriods is the number of holding periods with known locks
	// (Migration.Locks) a truly shared page needs before a lock common to
	// all of them makes it LockProtected.
	MinLockPeriods = 2
)

// maxPatterns bounds the number of distinct write patterns (node and set of
// written ranges) remembered per page. Patterns past the bound are folded
// into one pattern per node; only the per-variable write counts become
// approximate, never the written ranges or the classification. A counter
// written in place has one pattern per writer; 64 leave room for a few
// fields written together in varying combinations.
const maxPatterns = 64

// Default limits of an Analyzer; see Limits.
const (
	DefaultDetailPages   = 4096
	DefaultDetailBytes   = 8 << 20
	DefaultEvents        = 1 << 16
	DefaultEventsPerPage = 512
	DefaultRaces         = 1024
)

// Limits bounds the memory of an Analyzer. A field that is zero or negative
// takes its default.
type Limits struct {
	// DetailPages is the most pages analysed in detail: their written
	// ranges, write patterns and ownership history. Besides, every page
	// that migrated costs 16 bytes for its counts. Default
	// DefaultDetailPages.
	DetailPages int
	// DetailBytes bounds, approximately, the memory of the detailed pages
	// apart from their ownership history: about 400 bytes a page plus its
	// written ranges and write patterns. Default DefaultDetailBytes.
	DetailBytes int
	// Events is the most transfers kept, over all pages, for the ownership
	// history that WriteHeatmap draws (32 bytes each), and EventsPerPage the
	// most per page: the most recent ones. Defaults DefaultEvents and
	// DefaultEventsPerPage.
	Events, EventsPerPage int
	// Races is the most data races kept (about 150 bytes each), counting
	// repeated races on the same bytes of a page between the same two
	// nodes once; see RecordRace. Default DefaultRaces.
	Races int
}

// withDefaults returns l with its unset fields set to the defaults.
func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.DetailPages, DefaultDetailPages)
	def(&l.DetailBytes, DefaultDetailBytes)
	def(&l.Events, DefaultEvents)
	def(&l.EventsPerPage, DefaultEventsPerPage)
	def(&l.Races, DefaultRaces)
	return l
}

// Memory accounting of the detailed state. The figures are estimates of the
// heap a structure takes, with its share of the maps and slices that index
// it; they need only be right to within a small factor.
const (
	pageBytes    = 400 // a pageState with its small slices and index entries
	spanBytes    = 16  // one span of a spanSet
	patternBytes = 48  // a wpattern and the header of its key
	lockBytes    = 24  // a lockMove; the daemon shares the name's bytes
	// maxLockNames bounds the locks followed per page. A lock that first
	// shows up after that many others cannot have moved with the page in
	// most of its holding periods anyway.
	maxLockNames = 16
	// minEvents is the size of the ring a detailed page gets even when
	// Limits.Events is spent, so that every row of the heat map has a few
	// transfers to draw.
	minEvents = 4
	// evictMargin is how many more migrations than the least migrated
	// detailed page a page needs, besides twice as many, to take its
	// place when the detailed pages are at their limit; see the package
	// documentation.
	evictMargin = MinReadMigrations
)

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
type Range struct {
	Off uint32 `json:"off"`
	Len uint32 `json:"len"`
}

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
	// Locks lists the locks granted to From (held by its programs, or kept
	// cached after an unlock) when it took the page for the writes in
	// Written: the locks under which it went on to write. Only From's
	// daemon knows them. nil means unknown; an empty, non-nil slice says
	// From held no lock.
	Locks []string
	// Kept lists the locks of Locks that From still held when it gave the
	// page away. A lock that moves with the page, from node to node, is
	// not: the next node could take the page under that lock only because
	// From gave the lock up first.
	Kept []string
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

// nodeSpans is the union of the ranges one node wrote on a page.
type nodeSpans struct {
	node  uint16
	spans spanSet
}

// wpattern counts the holding periods in which node wrote exactly the set
// of ranges encoded in key (by spanSet.appendKey).
type wpattern struct {
	key  string
	n    int
	node uint16
}

// nodeCount counts the holding periods of a node past maxPatterns.
type nodeCount struct {
	node uint16
	n    int
}

// pageState is the detailed state of one page. Its counts are in the
// analyzer's pageTable (cnt), which covers every transfer of the page; the
// other fields cover the transfers recorded since the page got detail.
type pageState struct {
	page   uint32
	hidx   int        // index in Analyzer.cold
	cnt    *pageCount // the page's entry in Analyzer.table
	before uint32     // migrations recorded before the page got detail
	writes int        // ownership transfers since the page got detail
	bytes  int        // memory accounted to Limits.DetailBytes

	nodes      []uint16 // every node that gave or received the page, sorted
	writeNodes []uint16 // nodes on either end of an ownership transfer, sorted

	written []nodeSpans // union of the ranges each node wrote, by node
	// patterns counts holding periods per node and distinct set of written
	// ranges; npat is the number of entries.
	patterns []wpattern
	npat     int
	overflow []nodeCount // periods past maxPatterns, per node
	unknown  int         // transfers without Written
	unknownN []uint16    // nodes that gave the page without Written, sorted

	// Lock evidence: lockPeriods counts the transfers whose Locks were
	// known and whose giver wrote, and moves how often each lock moved
	// with the page in them
	// (granted to the giver when it took the page, given up when the page
	// left), for at most maxLockNames locks.
	lockPeriods int
	// lockedPeriods counts those in which the giver held some lock
	// (whichever): the writers synchronise through locks.
	lockedPeriods int
	moves         []lockMove

	// events is a ring of the most recent transfers: once it is full and
	// may not grow, head is the oldest and wrapped is set.
	events  []event
	head    int
	wrapped bool
}

// detailed returns the number of transfers recorded since the page got
// detail.
func (st *pageState) detailed() int { return int(st.cnt.migrations - st.before) }

// writtenBy returns the union of the ranges node n wrote on the page.
func (st *pageState) writtenBy(n uint16) spanSet {
	i, ok := slices.BinarySearchFunc(st.written, n, func(w nodeSpans, n uint16) int { return int(w.node) - int(n) })
	if !ok {
		return nil
	}
	return st.written[i].spans
}

// coldHeap is a min-heap of the detailed pages by migrations: its root is
// the page to give up first.
type coldHeap []*pageState

func (h coldHeap) Len() int           { return len(h) }
func (h coldHeap) Less(i, j int) bool { return h[i].cnt.migrations < h[j].cnt.migrations }
func (h coldHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}
func (h *coldHeap) Push(x any) {
	st := x.(*pageState)
	st.hidx = len(*h)
	*h = append(*h, st)
}
func (h *coldHeap) Pop() any {
	old := *h
	st := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return st
}

// Analyzer accumulates migrations and named variables and turns them into
// findings. The zero value is not usable; call New.
type Analyzer struct {
	mu       sync.Mutex
	pageSize uint64
	lim      Limits
	vars     []Var          // sorted by Offset, then Name
	varIdx   map[string]int // Name -> index in vars
	maxEnd   []uint64       // maxEnd[i] = max end of vars[:i+1]

	table  pageTable             // counts of every page that migrated
	npages int                   // pages with a count
	pages  map[uint32]*pageState // the pages analysed in detail
	cold   coldHeap              // the same pages, least migrated first
	bytes  int                   // memory of the detailed state, for lim.DetailBytes
	slots  int                   // event slots allocated, for lim.Events

	// Totals over every transfer recorded, detailed or not.
	migrations, writes, unknown int
	cost                        time.Duration
	nodes                       []uint16 // sorted

	seq     uint64
	scratch spanSet // reused by Record
	keyBuf  []byte  // reused by Record
	invalid int     // written ranges that were empty or crossed the page end
	first   int64   // earliest wall time seen, UnixNano
	last    int64   // latest wall time seen, UnixNano

	// Data races (RecordRace): the records kept, all races recorded, those
	// that found no room, and the recording order.
	races        map[raceKey]*raceRec
	dataRaces    int
	droppedRaces int
	raceSeq      uint64
}

// New returns an Analyzer for a region with the given page size in bytes and
// the default Limits. It panics if pageSize is not positive, which is a
// programming error.
func New(pageSize int) *Analyzer {
	return NewWithLimits(pageSize, Limits{})
}

// NewWithLimits is like New with the given limits on the analyzer's memory.
func NewWithLimits(pageSize int, l Limits) *Analyzer {
	if pageSize <= 0 {
		panic(fmt.Sprintf("analyzer: New(%d): the page size must be positive (use os.Getpagesize())", pageSize))
	}
	return &Analyzer{
		pageSize: uint64(pageSize),
		lim:      l.withDefaults(),
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
// receiving node, or on the page's home). Record keeps no reference to m's
// slices: the caller may reuse them. Written ranges that are empty are
// ignored and ranges that cross the end of the page are cut at it; both are
// counted in Report().Totals.InvalidRanges.
//
// Every page that migrated costs 16 bytes. Only the pages that migrated most
// are analysed in detail, within the analyzer's Limits; see the package
// documentation.
func (a *Analyzer) Record(m Migration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.table.get(m.Page)
	if c.migrations == 0 {
		a.npages++
	}
	c.add(m.Write, m.Cost)
	a.migrations++
	if m.Write {
		a.writes++
	}
	a.cost += m.Cost
	a.nodes = addNode(addNode(a.nodes, m.From), m.To)
	if m.Written == nil {
		a.unknown++
	}
	// Check the ranges of every transfer, detailed or not, so that the
	// count of invalid ones does not depend on the budget.
	set := a.scratch[:0]
	for _, r := range m.Written {
		lo, hi, ok := a.clip(r.Off, r.Len)
		if !ok {
			continue
		}
		set = set.add(lo, hi)
	}
	a.scratch = set
	ev := event{seq: a.seq, from: m.From, to: m.To, write: m.Write}
	a.seq++
	if !m.Wall.IsZero() {
		ev.wall = m.Wall.UnixNano()
		if a.first == 0 || ev.wall < a.first {
			a.first = ev.wall
		}
		a.last = max(a.last, ev.wall)
	}

	st := a.pages[m.Page]
	if st == nil {
		if st = a.admit(m.Page, c); st == nil {
			return
		}
	} else {
		heap.Fix(&a.cold, st.hidx) // its count grew
	}
	if m.Write {
		st.writes++
		st.writeNodes = addNode(addNode(st.writeNodes, m.From), m.To)
	}
	st.nodes = addNode(addNode(st.nodes, m.From), m.To)

	grew := 0
	if m.Locks != nil && (m.Written == nil || len(m.Written) > 0) {
		// A period in which From wrote nothing says nothing about what
		// ordered the writes.
		grew += st.addLocks(m.Locks, m.Kept)
	}
	if m.Written == nil {
		st.unknown++
		st.unknownN = addNode(st.unknownN, m.From)
	} else if len(set) > 0 {
		i, ok := slices.BinarySearchFunc(st.written, m.From, func(w nodeSpans, n uint16) int { return int(w.node) - int(n) })
		if !ok {
			st.written = slices.Insert(st.written, i, nodeSpans{node: m.From})
		}
		w := st.written[i].spans
		old := cap(w)
		for _, x := range set {
			w = w.add(x.lo, x.hi)
		}
		st.written[i].spans = w
		grew += (cap(w) - old) * spanBytes

		a.keyBuf = set.appendKey(a.keyBuf[:0])
		j := slices.IndexFunc(st.patterns, func(p wpattern) bool {
			return p.node == m.From && p.key == string(a.keyBuf) // no allocation
		})
		switch {
		case j >= 0:
			st.patterns[j].n++
		case st.npat < maxPatterns:
			st.patterns = append(st.patterns, wpattern{key: string(a.keyBuf), n: 1, node: m.From})
			st.npat++
			grew += patternBytes + len(a.keyBuf)
		default:
			k := slices.IndexFunc(st.overflow, func(o nodeCount) bool { return o.node == m.From })
			if k < 0 {
				k = len(st.overflow)
				st.overflow = append(st.overflow, nodeCount{node: m.From})
			}
			st.overflow[k].n++
		}
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
	a.addEvent(st, ev)

	if grew > 0 {
		st.bytes += grew
		a.bytes += grew
		// Give up the least migrated pages, which may be this one, until
		// the detailed state fits again.
		for a.bytes > a.lim.DetailBytes && len(a.cold) > 0 {
			a.evict(a.cold[0])
		}
	}
}

// lockMove counts the holding periods of a page in which a lock moved with
// it.
type lockMove struct {
	name string
	n    int
}

// addLocks takes in the locks of one holding period of the page (see
// Migration.Locks and Kept) and returns the bytes the page's state grew by.
func (st *pageState) addLocks(locks, kept []string) int {
	st.lockPeriods++
	if len(locks) > 0 {
		st.lockedPeriods++
	}
	grew := 0
	for i, l := range locks {
		if slices.Contains(kept, l) || slices.Index(locks, l) < i {
			continue
		}
		j := slices.IndexFunc(st.moves, func(m lockMove) bool { return m.name == l })
		switch {
		case j >= 0:
			st.moves[j].n++
		case len(st.moves) < maxLockNames:
			// The name's bytes are the caller's, and strings do not
			// change: keeping the header is enough.
			st.moves = append(st.moves, lockMove{name: l, n: 1})
			grew += lockBytes
		}
	}
	return grew
}

// orderingLocks returns the locks that moved with the page in more than
// half of its holding periods with known locks, sorted, and the fewest
// periods any of them moved in; none before MinLockPeriods such periods.
func (st *pageState) orderingLocks() (locks []string, moved int) {
	if st.lockPeriods < MinLockPeriods {
		return nil, 0
	}
	for _, m := range st.moves {
		if 2*m.n > st.lockPeriods {
			locks = append(locks, m.name)
			if moved == 0 || m.n < moved {
				moved = m.n
			}
		}
	}
	slices.Sort(locks)
	return locks, moved
}

// admit returns a new detailed state for page p, whose counts are c, or nil
// if the detailed pages are at their limit and p has not migrated enough
// more than the least migrated of them to take its place. The caller holds
// a.mu.
func (a *Analyzer) admit(p uint32, c *pageCount) *pageState {
	if len(a.pages) >= a.lim.DetailPages || a.bytes+pageBytes > a.lim.DetailBytes {
		if len(a.cold) == 0 {
			return nil
		}
		least := uint64(a.cold[0].cnt.migrations)
		if n := uint64(c.migrations); n < 2*least || n < least+evictMargin {
			return nil
		}
		a.evict(a.cold[0])
	}
	st := &pageState{page: p, cnt: c, before: c.migrations - 1, bytes: pageBytes}
	a.pages[p] = st
	heap.Push(&a.cold, st)
	a.bytes += st.bytes
	return st
}

// evict drops the detailed state of a page; its counts stay. The caller
// holds a.mu.
func (a *Analyzer) evict(st *pageState) {
	heap.Remove(&a.cold, st.hidx)
	delete(a.pages, st.page)
	a.bytes -= st.bytes
	a.slots -= cap(st.events)
}

// addEvent adds ev to the ring of st, growing the ring while the limits
// allow and overwriting the oldest event once they do not. The caller holds
// a.mu.
func (a *Analyzer) addEvent(st *pageState, ev event) {
	n := len(st.events)
	if n < cap(st.events) {
		st.events = append(st.events, ev)
		return
	}
	// Full: double, within the page's limit and what is left of the
	// total, but always to minEvents.
	want := min(max(2*n, minEvents), a.lim.EventsPerPage)
	want = min(want, n+max(0, a.lim.Events-a.slots))
	want = max(want, min(minEvents, a.lim.EventsPerPage))
	if want > n {
		evs := make([]event, 0, want)
		evs = append(evs, st.events[st.head:]...)
		evs = append(evs, st.events[:st.head]...)
		a.slots += want - cap(st.events)
		st.events, st.head = append(evs, ev), 0
		return
	}
	st.events[st.head] = ev
	st.head = (st.head + 1) % n
	st.wrapped = true
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

// clip returns the bytes [off, off+n) of a page, cut at its end, and counts
// a range that is empty, starts past the end or crosses it as invalid. The
// caller holds a.mu.
func (a *Analyzer) clip(off, n uint32) (lo, hi uint64, ok bool) {
	lo, hi = uint64(off), uint64(off)+uint64(n)
	if n == 0 || lo >= a.pageSize {
		a.invalid++
		return 0, 0, false
	}
	if hi > a.pageSize {
		a.invalid++
		hi = a.pageSize
	}
	return lo, hi, true
}
