package analyzer

import (
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Sizes of the memory scenario: a 1 GiB region of 4 KiB pages, every page
// written by each of three nodes in turn, and hot pages that ping-pong.
const (
	memPages    = 262144
	memHot      = 64
	memHotMoves = 5000
)

// memHotPage returns the page of the i-th hot page, spread over the region.
func memHotPage(i int) uint32 { return uint32(i*(memPages/memHot) + 17) }

// recordMemScenario records, into a, three write migrations per page of the
// region (each of nodes 0, 1 and 2 writes the whole page in turn) and, for
// the hot pages, memHotMoves ping-pong migrations between nodes 0 and 1 that
// write disjoint counters. Half of the hot pages ping-pong while the bulk
// phase runs, half after it. It returns the number of migrations recorded.
func recordMemScenario(a *Analyzer) int {
	hot := make(map[uint32]bool)
	for i := range memHot {
		p := memHotPage(i)
		hot[p] = true
		a.AddVars(Var{Name: "a" + itoa(uint64(i)), Offset: uint64(p) * ps, Size: 8},
			Var{Name: "b" + itoa(uint64(i)), Offset: uint64(p)*ps + 8, Size: 8})
	}
	t0 := time.Unix(1000, 0)
	n := 0
	rec := func(m Migration) {
		m.Wall = t0.Add(time.Duration(n) * time.Microsecond)
		m.Cost = 100 * time.Microsecond
		a.Record(m)
		n++
	}
	pingPong := func(p uint32, moves int) {
		for i := range moves {
			from := uint16(i % 2)
			rec(Migration{Page: p, From: from, To: 1 - from, Write: true,
				Clock:   []uint64{uint64(i/2 + 1), uint64((i + 1) / 2)},
				Written: []Range{{Off: uint32(from) * 8, Len: 8}}})
		}
	}
	whole := []Range{{Off: 0, Len: ps}}
	for p := range uint32(memPages) {
		if hot[p] {
			continue
		}
		for from := range uint16(3) {
			rec(Migration{Page: p, From: from, To: (from + 1) % 3, Write: true,
				Clock: []uint64{uint64(p), uint64(p), uint64(p)}, Written: whole})
		}
		// The first half of the hot pages ping-pong during the bulk phase.
		if p%(memPages/memHot*2) == 100 {
			pingPong(memHotPage(int(p/(memPages/memHot))), memHotMoves)
		}
	}
	for i := 1; i < memHot; i += 2 {
		pingPong(memHotPage(i), memHotMoves)
	}
	return n
}

// heapInUse returns the bytes of heap in use after a garbage collection.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestMemoryScenario records a migration history the size of a 1 GiB
// region's and checks that the analyzer's heap stays small while it still
// finds every falsely shared page. Run it with -v for the figures.
func TestMemoryScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("records a million migrations")
	}
	before := heapInUse()
	a := New(ps)
	n := recordMemScenario(a)
	grew := int64(heapInUse()) - int64(before)
	a.mu.Lock()
	t.Logf("%d migrations on %d pages: heap in use grew by %.1f MiB (%d pages in detail, %.1f MiB of ranges and patterns accounted, %d event slots)",
		n, memPages, float64(grew)/(1<<20), len(a.pages), float64(a.bytes)/(1<<20), a.slots)
	a.mu.Unlock()
	// The counts of every page take 4 MiB; the detailed state is bounded
	// by the Limits. Before the limits, this took 450 MiB.
	if grew > 24<<20 {
		t.Errorf("heap in use grew by %d bytes", grew)
	}

	r := a.Report()
	tot := r.Totals
	if tot.Migrations != n || tot.WriteMigrations != n || tot.Pages != memPages || tot.Untracked != 0 {
		t.Errorf("totals = %+v", tot)
	}
	if tot.PagesByClass["quiet"] != memPages-memHot || tot.PagesByClass["false sharing"] != memHot {
		t.Errorf("pages by class = %v", tot.PagesByClass)
	}
	if tot.Cost != time.Duration(n)*100*time.Microsecond {
		t.Errorf("cost = %v", tot.Cost)
	}
	found := make(map[uint32]bool)
	for _, f := range r.Findings {
		i := int(f.Page-17) / (memPages / memHot)
		want := []string{"a" + itoa(uint64(i)), "b" + itoa(uint64(i))}
		if f.Class != FalseSharing || !slices.Equal(varNames(f), want) || f.Migrations != memHotMoves {
			t.Errorf("finding %s", f)
		}
		found[f.Page] = true
	}
	if len(found) != memHot {
		t.Errorf("%d of %d hot pages found", len(found), memHot)
	}
	// Only the first hot page started before the bulk pages took every
	// detailed slot; the others had to take the place of bulk pages, and
	// got detail late.
	if tot.LateDetail != memHot-1 {
		t.Errorf("late detail = %d, want %d", tot.LateDetail, memHot-1)
	}
	runtime.KeepAlive(a)
}

// record adds the migrations to a.
func record(a *Analyzer, ms []Migration) {
	for _, m := range ms {
		a.Record(m)
	}
}

func TestHotPageTakesTheDetailOfAColdOne(t *testing.T) {
	disjoint := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	a := NewWithLimits(ps, Limits{DetailPages: 4})
	a.AddVars(Var{"counter_A", 100 * ps, 8}, Var{"counter_B", 100*ps + 8, 8})
	// Ten pages move twice each in a bulk phase: the first four get
	// detail, the others only counts.
	for p := range uint32(10) {
		record(a, pingPong(p, 2, disjoint))
	}
	if len(a.pages) != 4 {
		t.Fatalf("%d pages in detail, want 4", len(a.pages))
	}
	// A hot page needs twice the migrations of the least migrated
	// detailed page, and evictMargin more, to take its place.
	hot := pingPong(100, 200, disjoint)
	record(a, hot[:2+evictMargin-1])
	if a.pages[100] != nil {
		t.Fatalf("page 100 got detail after %d migrations", 2+evictMargin-1)
	}
	record(a, hot[2+evictMargin-1:2+evictMargin])
	if a.pages[100] == nil || len(a.pages) != 4 {
		t.Fatalf("page 100 has no detail; detailed pages %v", slices.Collect(maps.Keys(a.pages)))
	}
	// One transfer in detail is not enough to judge the page, whatever
	// its counts: no finding yet, and the totals say so.
	if r := a.Report(); len(r.Findings) != 0 || r.Totals.Untracked != 1 || r.Totals.UntrackedMigrations != 2+evictMargin {
		t.Fatalf("just after the page got detail: totals %+v\n%s", r.Totals, dump(r.Findings))
	}
	record(a, hot[2+evictMargin:])
	if a.pages[100] == nil || len(a.pages) != 4 {
		t.Fatalf("page 100 has no detail; detailed pages %v", slices.Collect(maps.Keys(a.pages)))
	}
	r := a.Report()
	if len(r.Findings) != 1 {
		t.Fatalf("findings:\n%s", dump(r.Findings))
	}
	f := r.Findings[0]
	if f.Class != FalseSharing || f.Migrations != 200 || f.Cost != 200*100*time.Microsecond ||
		!slices.Equal(varNames(f), []string{"counter_A", "counter_B"}) {
		t.Errorf("finding %s", f)
	}
	// The counts and cost are whole; the write counts start with the detail.
	if w := f.Vars[0].Writes + f.Vars[1].Writes; w != 200-(2+evictMargin-1) {
		t.Errorf("writes = %d, want %d", w, 200-(2+evictMargin-1))
	}
	tot := r.Totals
	if tot.Pages != 11 || tot.Migrations != 220 || tot.Untracked != 0 || tot.LateDetail != 1 || tot.PagesByClass["quiet"] != 10 {
		t.Errorf("totals = %+v", tot)
	}
	if v := r.Vars[0]; v.Migrations != 200 || v.Class != FalseSharing || !slices.Equal(v.Pages, []uint32{100}) {
		t.Errorf("vars = %+v", r.Vars)
	}
}

func TestUntrackedPagesAreCounted(t *testing.T) {
	disjoint := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	a := NewWithLimits(ps, Limits{DetailPages: 2})
	// Three pages ping-pong alike; there is room for two.
	for i := range 30 {
		for p := range uint32(3) {
			record(a, pingPong(p, 30, disjoint)[i:i+1])
		}
	}
	r := a.Report()
	tot := r.Totals
	if len(r.Findings) != 2 || tot.Untracked != 1 || tot.UntrackedMigrations != 30 || tot.Pages != 3 || tot.Migrations != 90 {
		t.Errorf("totals = %+v\n%s", tot, r.Text())
	}
	sum := tot.Untracked
	for _, n := range tot.PagesByClass {
		sum += n
	}
	if sum != tot.Pages {
		t.Errorf("pages by class %v and %d untracked do not add up to %d pages", tot.PagesByClass, tot.Untracked, tot.Pages)
	}
	if !strings.Contains(r.Text(), "1 pages with 30 migrations were not analysed") {
		t.Errorf("text does not mention the untracked pages:\n%s", r.Text())
	}
}

func TestEventLimits(t *testing.T) {
	ping := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	a := NewWithLimits(ps, Limits{Events: 20, EventsPerPage: 8})
	for p := range uint32(5) {
		record(a, pingPong(p, 100, ping))
	}
	slots := 0
	for p, st := range a.pages {
		if len(st.events) > 8 || !st.wrapped {
			t.Errorf("page %d keeps %d events, wrapped %v", p, len(st.events), st.wrapped)
		}
		slots += cap(st.events)
		// The ring keeps the most recent transfers.
		evs := st.ordered()
		if last := evs[len(evs)-1]; last.to != 0 || last.from != 1 {
			t.Errorf("page %d: last event %+v", p, last)
		}
	}
	// Every page gets minEvents; the rest comes out of Limits.Events.
	if slots != a.slots || slots > 20+5*minEvents {
		t.Errorf("%d event slots (accounted %d)", slots, a.slots)
	}
	path := filepath.Join(t.TempDir(), "heat.png")
	if err := a.WriteHeatmap(path, 800, 300); err != nil {
		t.Fatal(err)
	}
	if fs := a.Findings(); len(fs) != 5 {
		t.Errorf("findings:\n%s", dump(fs))
	}
}

func TestDetailBytesLimit(t *testing.T) {
	// Node 0 writes every other word of the page, node 1 the words
	// between: 256 spans each, more than the limit allows for all pages.
	const limit = 64 << 10
	a := NewWithLimits(ps, Limits{DetailBytes: limit})
	for p := range uint32(40) {
		record(a, pingPong(p, 10+int(p), func(from uint16) []Range {
			var rs []Range
			for off := uint32(from) * 8; off < ps; off += 16 {
				rs = append(rs, Range{Off: off, Len: 8})
			}
			return rs
		}))
		if a.bytes > limit {
			t.Fatalf("page %d: %d bytes of detail, limit %d", p, a.bytes, limit)
		}
	}
	r := a.Report()
	if len(a.pages) == 0 || len(a.pages) == 40 || r.Totals.Untracked != 40-len(a.pages) {
		t.Errorf("%d pages in detail; totals %+v", len(a.pages), r.Totals)
	}
	for _, f := range r.Findings {
		if f.Class != FalseSharing {
			t.Errorf("finding %s", f)
		}
	}
}
