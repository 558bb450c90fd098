package analyzer

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const ps = 4096

// Stats is a struct with two hot counters packed next to each other.
type Stats struct {
	Hits   uint64
	Misses uint64
}

// CacheStats pads its counters to separate cache lines, which is not enough
// for a DSM page.
type CacheStats struct {
	Hits   atomic.Uint64
	_      [56]byte
	Misses atomic.Uint64
}

// Slot is the element of an array of which each node writes an element.
type Slot struct{ Hits, Misses, Ratio uint64 }

// Bank holds an array of structs after a counter.
type Bank struct {
	Total  uint64
	Shards [2]Slot
}

// PageSlot is a page-sized element.
type PageSlot struct {
	A uint64
	_ [4080]byte
	B uint64
}

func mustStructVars(t *testing.T, name string, off uint64, v any) []Var {
	t.Helper()
	vs, err := StructVars(name, off, v)
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// tableReaders: node 0 keeps a 4 KiB table up to date now and then while
// nodes 1..3 read it, beside a counter elsewhere that nodes 0 and 1 bump.
func tableReaders(counters map[uint16]uint64) []op {
	var ops []op
	bumps := incr(300, counters)
	for i, b := range bumps {
		ops = append(ops, b)
		if i%40 == 0 {
			ops = append(ops, op{node: 0, off: uint64(i%512) * 8, len: 8, write: true})
		}
		if i%10 == 0 {
			for r := uint16(1); r <= 3; r++ {
				ops = append(ops, op{node: r, off: uint64(r) * 64, len: 8})
			}
		}
	}
	return ops
}

func TestFindingsFromLayouts(t *testing.T) {
	tests := []struct {
		name string
		vars func(t *testing.T) []Var
		ops  []op
		// want is the class of every page that has a finding.
		want map[uint32]Class
		// wantVars are the names in each finding's Vars, in order.
		wantVars map[uint32][]string
		// wantFix is the exact Fix, wantFixHas a part of it.
		wantFix    map[uint32]string
		wantFixHas map[uint32]string
		wantSum    map[uint32]string // part of the summary
	}{
		{
			name:     "packed counters",
			vars:     func(*testing.T) []Var { return []Var{{"counter_A", 0, 8}, {"counter_B", 8, 8}} },
			ops:      incr(500, map[uint16]uint64{0: 0, 1: 8}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"counter_A", "counter_B"}},
			wantFix:  map[uint32]string{0: `align counter_B to the next page (offset 4096): r.Alloc("counter_B", 8, 4096)`},
			wantSum:  map[uint32]string{0: "page 0: counter_A (node 0) and counter_B (node 1) share a page: 999 migrations"},
		},
		{
			name: "padded counters",
			vars: func(*testing.T) []Var { return []Var{{"counter_A", 0, 8}, {"counter_B", 4096, 8}} },
			ops:  incr(500, map[uint16]uint64{0: 0, 1: 4096}),
			want: map[uint32]Class{},
		},
		{
			name:       "one counter shared by two nodes",
			vars:       func(*testing.T) []Var { return []Var{{"counter", 0, 8}} },
			ops:        append(incr(250, map[uint16]uint64{0: 0}), interleave(incr(250, map[uint16]uint64{0: 0}), incr(250, map[uint16]uint64{1: 0}))...),
			want:       map[uint32]Class{0: TrueSharing},
			wantVars:   map[uint32][]string{0: {"counter"}},
			wantFixHas: map[uint32]string{0: "synchronise through a lock or partition the data: counter is written at the same bytes by nodes 0 and 1"},
			wantSum:    map[uint32]string{0: "page 0: counter (nodes 0 and 1) is written by more than one node"},
		},
		{
			name:     "struct fields written by different nodes",
			vars:     func(t *testing.T) []Var { return mustStructVars(t, "Stats", 8192, (*Stats)(nil)) },
			ops:      incr(300, map[uint16]uint64{0: 8192, 1: 8200}),
			want:     map[uint32]Class{2: FalseSharing},
			wantVars: map[uint32][]string{2: {"Stats.Hits", "Stats.Misses"}},
			wantFix:  map[uint32]string{2: "insert 4088 bytes of padding between Stats.Hits and Stats.Misses (e.g. _ [4088]byte)"},
			wantSum:  map[uint32]string{2: "page 2: Stats.Hits (node 0) and Stats.Misses (node 1) share a page"},
		},
		{
			name:     "cache-line padding is not page padding",
			vars:     func(t *testing.T) []Var { return mustStructVars(t, "", 0, CacheStats{}) },
			ops:      incr(300, map[uint16]uint64{1: 0, 0: 64}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"CacheStats.Hits", "CacheStats.Misses"}},
			wantFix:  map[uint32]string{0: "insert 4032 bytes of padding between CacheStats.Hits and CacheStats.Misses (e.g. _ [4032]byte)"},
		},
		{
			name: "read-mostly table beside a shared counter",
			vars: func(*testing.T) []Var { return []Var{{"table", 0, 4096}, {"counter", 4096, 8}} },
			ops:  tableReaders(map[uint16]uint64{0: 4096, 1: 4096}),
			want: map[uint32]Class{0: ReadMostly, 1: TrueSharing},
			wantSum: map[uint32]string{
				0: "page 0: table is read-mostly (written by node 0;",
				1: "page 1: counter (nodes 0 and 1) is written by more than one node",
			},
		},
		{
			name: "read-mostly table beside packed counters",
			vars: func(*testing.T) []Var {
				return []Var{{"table", 0, 4096}, {"counter_A", 4096, 8}, {"counter_B", 4104, 8}}
			},
			ops:      tableReaders(map[uint16]uint64{0: 4096, 1: 4104}),
			want:     map[uint32]Class{0: ReadMostly, 1: FalseSharing},
			wantVars: map[uint32][]string{1: {"counter_A", "counter_B"}},
			wantFix:  map[uint32]string{1: `align counter_B to the next page (offset 8192): r.Alloc("counter_B", 8, 4096)`},
		},
		{
			name: "three counters, two writers",
			vars: func(*testing.T) []Var {
				return []Var{{"counter_A", 0, 8}, {"counter_B", 8, 8}, {"counter_C", 16, 8}}
			},
			ops:      interleave(incr(200, map[uint16]uint64{0: 0, 1: 8}), incr(200, map[uint16]uint64{0: 16})),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"counter_A", "counter_B", "counter_C"}},
			wantFix:  map[uint32]string{0: `align counter_B to the next page (offset 4096): r.Alloc("counter_B", 8, 4096)`},
		},
		{
			name: "three counters, three writers",
			vars: func(*testing.T) []Var {
				return []Var{{"counter_A", 0, 8}, {"counter_B", 8, 8}, {"counter_C", 16, 8}}
			},
			ops:  incr(200, map[uint16]uint64{0: 0, 1: 8, 2: 16}),
			want: map[uint32]Class{0: FalseSharing},
			wantFix: map[uint32]string{0: `align counter_B to the next page (offset 4096): r.Alloc("counter_B", 8, 4096); ` +
				`align counter_C to a page of its own (offset 8192): r.Alloc("counter_C", 8, 4096)`},
			wantSum: map[uint32]string{0: "counter_A (node 0), counter_B (node 1) and counter_C (node 2) share a page"},
		},
		{
			name: "struct beside a counter",
			vars: func(t *testing.T) []Var {
				return append([]Var{{"counter", 0, 8}}, mustStructVars(t, "Stats", 8, Stats{})...)
			},
			ops:      interleave(incr(200, map[uint16]uint64{0: 0, 1: 8}), incr(200, map[uint16]uint64{1: 16})),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"counter", "Stats.Hits", "Stats.Misses"}},
			wantFix:  map[uint32]string{0: `align Stats to the next page (offset 4096): r.Alloc("Stats", 16, 4096)`},
		},
		{
			name:     "unnamed bytes",
			vars:     func(*testing.T) []Var { return []Var{{"other", 1024, 64}} },
			ops:      incr(100, map[uint16]uint64{0: 4096, 1: 4104}),
			want:     map[uint32]Class{1: FalseSharing},
			wantVars: map[uint32][]string{1: {"unnamed bytes [4096,4097)", "unnamed bytes [4104,4105)"}},
			wantFix: map[uint32]string{1: "find the variable at unnamed bytes [4104,4105) (written by node 1) and align it to the next page " +
				"(offset 8192); register it with AddVars to have it named"},
		},
		{
			name:     "elements of an array of structs",
			vars:     func(t *testing.T) []Var { return mustStructVars(t, "Stats", 0, (*[4]Slot)(nil)) },
			ops:      incr(300, map[uint16]uint64{0: 0, 1: 24}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"Stats[0].Hits", "Stats[1].Hits"}},
			wantFix:  map[uint32]string{0: "pad each element of Stats to a page of its own: add _ [4072]byte as the last field of the element type (24 → 4096 bytes per element)"},
			wantSum:  map[uint32]string{0: "page 0: Stats[0].Hits (node 0) and Stats[1].Hits (node 1) share a page"},
		},
		{
			name:     "elements of an array of structs in a struct, off a page boundary",
			vars:     func(t *testing.T) []Var { return mustStructVars(t, "Bank", 0, (*Bank)(nil)) },
			ops:      incr(300, map[uint16]uint64{0: 8, 1: 32, 2: 56}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"Bank.Shards[0].Hits", "Bank.Shards[1].Hits", "unnamed bytes [56,58)"}},
			wantFix: map[uint32]string{0: "pad each element of Bank.Shards to a page of its own: add _ [4072]byte as the last field of the element type (24 → 4096 bytes per element), " +
				"and start Bank.Shards on a page boundary (it starts at offset 8); " +
				"find the variable at unnamed bytes [56,58) (written by node 2) and align it to the next page (offset 4096); register it with AddVars to have it named"},
		},
		{
			name: "page-sized elements off a page boundary",
			vars: func(t *testing.T) []Var { return mustStructVars(t, "Pages", 8, (*[2]PageSlot)(nil)) },
			// Pages[0].B and Pages[1].A share page 1.
			ops:      incr(300, map[uint16]uint64{0: 8 + 4088, 1: 8 + 4096}),
			want:     map[uint32]Class{1: FalseSharing},
			wantVars: map[uint32][]string{1: {"Pages[0].B", "Pages[1].A"}},
			wantFix:  map[uint32]string{1: "start Pages on a page boundary: its 4096-byte elements start at offset 8, so neighbours share a page (align it to 4096)"},
		},
		{
			name: "one element beside a counter",
			vars: func(t *testing.T) []Var {
				return append([]Var{{"counter", 0, 8}}, mustStructVars(t, "Stats", 8, (*[4]Slot)(nil))...)
			},
			ops:      incr(300, map[uint16]uint64{0: 0, 1: 8}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"counter", "Stats[0].Hits"}},
			wantFix:  map[uint32]string{0: `align Stats to the next page (offset 4096): r.Alloc("Stats", 96, 4096)`},
		},
		{
			name:     "two fields of one element",
			vars:     func(t *testing.T) []Var { return mustStructVars(t, "Stats", 0, (*[4]Slot)(nil)) },
			ops:      incr(300, map[uint16]uint64{0: 0, 1: 8}),
			want:     map[uint32]Class{0: FalseSharing},
			wantVars: map[uint32][]string{0: {"Stats[0].Hits", "Stats[0].Misses"}},
			wantFix:  map[uint32]string{0: "insert 4088 bytes of padding between Stats[0].Hits and Stats[0].Misses (e.g. _ [4088]byte)"},
		},
		{
			name:       "per-node slots of one array",
			vars:       func(*testing.T) []Var { return []Var{{"slots", 0, 256}} },
			ops:        incr(100, map[uint16]uint64{0: 0, 1: 64, 2: 128, 3: 192}),
			want:       map[uint32]Class{0: FalseSharing},
			wantVars:   map[uint32][]string{0: {"slots"}},
			wantFixHas: map[uint32]string{0: "split slots so that each node's part is on a page of its own (node 0 writes bytes [0,1), node 1 writes bytes [64,65), node 2 writes bytes [128,129), node 3 writes bytes [192,193) of it): the parts start 64 bytes apart; pad each to 4096 bytes (e.g. _ [4032]byte after each 64-byte element)"},
			wantSum:    map[uint32]string{0: "page 0: slots (nodes 0, 1, 2 and 3) share a page"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(ps)
			a.AddVars(tt.vars(t)...)
			for _, m := range simulate(ps, 0, tt.ops) {
				a.Record(m)
			}
			fs := a.Findings()
			got := make(map[uint32]Class)
			for _, f := range fs {
				got[f.Page] = f.Class
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("classes = %v, want %v\n%s", got, tt.want, dump(fs))
			}
			for _, f := range fs {
				if want, ok := tt.wantVars[f.Page]; ok {
					if names := varNames(f); !slices.Equal(names, want) {
						t.Errorf("page %d vars = %q, want %q", f.Page, names, want)
					}
				}
				if want, ok := tt.wantFix[f.Page]; ok && f.Fix != want {
					t.Errorf("page %d fix = %q\nwant %q", f.Page, f.Fix, want)
				}
				if want, ok := tt.wantFixHas[f.Page]; ok && !strings.Contains(f.Fix, want) {
					t.Errorf("page %d fix = %q\nwant it to contain %q", f.Page, f.Fix, want)
				}
				if want, ok := tt.wantSum[f.Page]; ok && !strings.Contains(f.Summary, want) {
					t.Errorf("page %d summary = %q\nwant it to contain %q", f.Page, f.Summary, want)
				}
				if f.Class != FalseSharing && strings.Contains(f.Fix, "align") {
					t.Errorf("page %d (%v) carries a layout fix: %q", f.Page, f.Class, f.Fix)
				}
				if m := allocOfElement.FindString(f.Fix); m != "" {
					t.Errorf("page %d fix allocates an element apart from its array: %q", f.Page, m)
				}
				if f.Class == ReadMostly && f.Fix != "" {
					t.Errorf("page %d is read-mostly but has fix %q", f.Page, f.Fix)
				}
				if strings.Contains(f.Summary, "\n") {
					t.Errorf("summary has several lines: %q", f.Summary)
				}
			}
		})
	}
}

// allocOfElement matches a fix that would allocate an element of an array
// by itself, which no program can do.
var allocOfElement = regexp.MustCompile(`r\.Alloc\("[^"]*\[`)

// interleave merges two op streams one op at a time.
func interleave(x, y []op) []op {
	var out []op
	for i := 0; i < len(x) || i < len(y); i++ {
		if i < len(x) {
			out = append(out, x[i])
		}
		if i < len(y) {
			out = append(out, y[i])
		}
	}
	return out
}

func varNames(f Finding) []string {
	var s []string
	for _, v := range f.Vars {
		s = append(s, v.Name)
	}
	return s
}

func dump(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// pingPong returns n write migrations of a page alternating between nodes
// 0 and 1, each carrying the given ranges of the giving node.
func pingPong(page uint32, n int, written func(from uint16) []Range) []Migration {
	t0 := time.Unix(1000, 0)
	var ms []Migration
	for i := range n {
		from := uint16(i % 2)
		ms = append(ms, Migration{
			Page: page, From: from, To: 1 - from, Write: true,
			Wall:    t0.Add(time.Duration(i) * time.Millisecond),
			Clock:   []uint64{uint64(i/2 + 1), uint64((i + 1) / 2)},
			Written: written(from),
			Cost:    100 * time.Microsecond,
		})
	}
	return ms
}

func TestClassifyFromRecords(t *testing.T) {
	disjoint := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	tests := []struct {
		name    string
		ms      []Migration
		want    Class // Quiet means no finding
		fixHas  string
		sumHas  string
		nVars   int
		invalid int
	}{
		{
			name: "disjoint writers",
			ms:   pingPong(0, 20, disjoint), want: FalseSharing, nVars: 2,
			fixHas: "find the variable at unnamed bytes [8,16)",
		},
		{
			name: "written ranges unknown",
			ms:   pingPong(0, 20, func(uint16) []Range { return nil }), want: Contended,
			fixHas: "record the written ranges of every transfer", sumHas: "ownership moved 20 times among nodes 0 and 1",
		},
		{
			name: "one node takes ownership and writes nothing",
			ms: pingPong(0, 20, func(from uint16) []Range {
				if from == 0 {
					return []Range{{0, 8}}
				}
				return []Range{}
			}),
			want: Contended, fixHas: "node 1 took write ownership without changing a byte", nVars: 1,
		},
		{
			name: "too few write migrations",
			ms:   pingPong(0, MinWriteMigrations-1, disjoint), want: Quiet,
		},
		{
			name: "just enough write migrations",
			ms:   pingPong(0, MinWriteMigrations, disjoint), want: FalseSharing, nVars: 2,
		},
		{
			name: "writes that overlap in one byte",
			ms: pingPong(0, 10, func(from uint16) []Range {
				return []Range{{Off: uint32(from) * 7, Len: 8}} // [0,8) and [7,15)
			}),
			want: TrueSharing, fixHas: "synchronise through a lock or partition the data",
		},
		{
			name: "adjacent writes do not overlap",
			ms: pingPong(0, 10, func(from uint16) []Range {
				return []Range{{Off: uint32(from) * 8, Len: 8}, {Off: 100 + uint32(from)*4, Len: 4}}
			}),
			want: FalseSharing, nVars: 4,
		},
		{
			name: "ranges are accumulated over the history",
			ms: func() []Migration {
				// Node 0 writes [0,4) and later [4,8); node 1 writes [6,7)
				// once: the union of node 0's ranges overlaps node 1's.
				ms := pingPong(0, 10, disjoint)
				ms[0].Written = []Range{{0, 4}}
				ms[2].Written = []Range{{4, 4}}
				for i := 4; i < len(ms); i += 2 {
					ms[i].Written = []Range{{0, 2}}
				}
				ms[1].Written = []Range{{6, 1}}
				return ms
			}(),
			want: TrueSharing,
		},
		{
			name: "ranges past the page end are cut and counted",
			ms: pingPong(0, 10, func(from uint16) []Range {
				if from == 0 {
					return []Range{{4090, 100}, {5000, 1}, {10, 0}}
				}
				return []Range{{0, 8}}
			}),
			want: FalseSharing, nVars: 2, invalid: 15,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(ps)
			for _, m := range tt.ms {
				a.Record(m)
			}
			fs := a.Findings()
			if tt.want == Quiet {
				if len(fs) != 0 {
					t.Fatalf("got findings, want none:\n%s", dump(fs))
				}
				return
			}
			if len(fs) != 1 || fs[0].Class != tt.want {
				t.Fatalf("want one %v finding, got:\n%s", tt.want, dump(fs))
			}
			f := fs[0]
			if !strings.Contains(f.Fix, tt.fixHas) {
				t.Errorf("fix = %q, want it to contain %q", f.Fix, tt.fixHas)
			}
			if !strings.Contains(f.Summary, tt.sumHas) {
				t.Errorf("summary = %q, want it to contain %q", f.Summary, tt.sumHas)
			}
			if tt.nVars != 0 && len(f.Vars) != tt.nVars {
				t.Errorf("vars = %q, want %d", varNames(f), tt.nVars)
			}
			if f.Migrations != len(tt.ms) || f.WriteMigrations != len(tt.ms) {
				t.Errorf("migrations = %d/%d, want %d", f.Migrations, f.WriteMigrations, len(tt.ms))
			}
			if f.Cost != time.Duration(len(tt.ms))*100*time.Microsecond {
				t.Errorf("cost = %v", f.Cost)
			}
			if got := a.Report().Totals.InvalidRanges; got != tt.invalid {
				t.Errorf("invalid ranges = %d, want %d", got, tt.invalid)
			}
		})
	}
}

func TestVarUseCounts(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"counter_A", 0, 8}, Var{"counter_B", 8, 8}, Var{"idle", 64, 8})
	// Node 0 writes counter_A in every period it holds the page and the
	// high half of counter_B (bytes [12,16)) in every fourth; node 1 writes
	// the low bytes of counter_B. The writers stay disjoint, but counter_B
	// has two writers and must be split.
	ms := pingPong(0, 40, func(from uint16) []Range {
		if from == 1 {
			return []Range{{8, 2}}
		}
		return []Range{{0, 1}}
	})
	for i := 0; i < len(ms); i += 8 {
		ms[i].Written = []Range{{0, 1}, {12, 4}}
	}
	for _, m := range ms {
		a.Record(m)
	}
	fs := a.Findings()
	if len(fs) != 1 || fs[0].Class != FalseSharing {
		t.Fatalf("want one false-sharing finding, got:\n%s", dump(fs))
	}
	want := []VarUse{
		{Name: "counter_A", Offset: 0, Size: 8, WrittenBy: []uint16{0}, Writes: 20},
		{Name: "counter_B", Offset: 8, Size: 8, WrittenBy: []uint16{0, 1}, Writes: 25},
	}
	if fmt.Sprint(fs[0].Vars) != fmt.Sprint(want) {
		t.Errorf("vars = %+v\nwant %+v", fs[0].Vars, want)
	}
	if !strings.Contains(fs[0].Fix, "split counter_B so that each node's part is on a page of its own (node 0 writes bytes [4,8), node 1 writes bytes [0,2) of it)") {
		t.Errorf("fix = %q", fs[0].Fix)
	}
}

func TestFindingsSortedByCost(t *testing.T) {
	a := New(ps)
	disjoint := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	costs := map[uint32]time.Duration{3: time.Millisecond, 7: 50 * time.Millisecond, 5: 10 * time.Millisecond}
	for p, c := range costs {
		for _, m := range pingPong(p, 12, disjoint) {
			m.Cost = c
			a.Record(m)
		}
	}
	var pages []uint32
	for _, f := range a.Findings() {
		pages = append(pages, f.Page)
	}
	if want := []uint32{7, 5, 3}; !slices.Equal(pages, want) {
		t.Errorf("order = %v, want %v", pages, want)
	}
}

func TestFindingString(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"counter_A", 0, 8}, Var{"counter_B", 8, 8})
	for _, m := range pingPong(0, 9876, func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 1}} }) {
		m.Cost = 121500 * time.Nanosecond
		a.Record(m)
	}
	fs := a.Findings()
	if len(fs) != 1 {
		t.Fatalf("got %d findings", len(fs))
	}
	if want := "page 0: counter_A (node 0) and counter_B (node 1) share a page: 9,876 migrations, 1.2s"; fs[0].Summary != want {
		t.Errorf("summary = %q\nwant %q", fs[0].Summary, want)
	}
	s := fs[0].String()
	for _, want := range []string{
		fs[0].Summary,
		"class: false sharing",
		"counter_A  bytes [0,8)  written by node 0 in 4,938 transfers",
		"counter_B  bytes [8,16)  written by node 1 in 4,938 transfers",
		"9,876 migrations (9,876 for ownership) between nodes 0 and 1",
		`fix: align counter_B to the next page (offset 4096): r.Alloc("counter_B", 8, 4096)`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q:\n%s", want, s)
		}
	}
}

func TestReport(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"table", 0, 4096}, Var{"counter_A", 4096, 8}, Var{"counter_B", 4104, 8}, Var{"cold", 1 << 20, 8})
	ms := simulate(ps, 0, tableReaders(map[uint16]uint64{0: 4096, 1: 4104}))
	for _, m := range ms {
		a.Record(m)
	}
	a.Record(Migration{Page: 9, From: 2, To: 3, Write: true}) // quiet, no wall time, no ranges
	r := a.Report()

	var total time.Duration
	var page1 int
	for _, m := range ms {
		total += m.Cost
		if m.Page == 1 {
			page1++
		}
	}
	tot := r.Totals
	if tot.Migrations != len(ms)+1 || tot.Cost != total || tot.Pages != 3 || tot.UnknownWritten != 1 {
		t.Errorf("totals = %+v", tot)
	}
	if tot.ReadMigrations+tot.WriteMigrations != tot.Migrations || tot.ReadMigrations == 0 {
		t.Errorf("read/write split = %d/%d", tot.ReadMigrations, tot.WriteMigrations)
	}
	if want := map[string]int{"read-mostly": 1, "false sharing": 1, "quiet": 1}; !maps.Equal(tot.PagesByClass, want) {
		t.Errorf("pages by class = %v, want %v", tot.PagesByClass, want)
	}
	if !slices.Equal(tot.Nodes, []uint16{0, 1, 2, 3}) {
		t.Errorf("nodes = %v", tot.Nodes)
	}
	if !tot.First.Equal(ms[0].Wall) || !tot.Last.Equal(ms[len(ms)-1].Wall) {
		t.Errorf("first/last = %v/%v", tot.First, tot.Last)
	}
	if len(r.Findings) != 2 || r.Findings[0].Class != FalseSharing || tot.FalseSharingCost != r.Findings[0].Cost {
		t.Errorf("findings = %s; false-sharing cost %v", dump(r.Findings), tot.FalseSharingCost)
	}

	byName := make(map[string]VarStat)
	for _, v := range r.Vars {
		byName[v.Name] = v
	}
	if len(byName) != 4 {
		t.Fatalf("vars = %+v", r.Vars)
	}
	ca := byName["counter_A"]
	if ca.Migrations != page1 || !slices.Equal(ca.Pages, []uint32{1}) || ca.Class != FalseSharing || ca.Writes == 0 || ca.Writes >= page1 {
		t.Errorf("counter_A = %+v (page 1 moved %d times)", ca, page1)
	}
	if tb := byName["table"]; tb.Class != ReadMostly || tb.Migrations == 0 {
		t.Errorf("table = %+v", tb)
	}
	if c := byName["cold"]; c.Migrations != 0 || len(c.Pages) != 0 || c.Class != Quiet {
		t.Errorf("cold = %+v", c)
	}
	if r.Vars[len(r.Vars)-1].Name != "cold" {
		t.Errorf("vars not sorted by migrations: %+v", r.Vars)
	}

	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"class":"false sharing"`) {
		t.Errorf("JSON lacks the class name: %s", b)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Findings[0].Class != FalseSharing || back.Totals.Migrations != tot.Migrations || back.Vars[0].Name != r.Vars[0].Name {
		t.Errorf("JSON round trip lost data: %+v", back)
	}
}

func TestClassText(t *testing.T) {
	for c := Quiet; c <= FalseSharing; c++ {
		b, err := c.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Class
		if err := back.UnmarshalText(b); err != nil || back != c || string(b) != c.String() {
			t.Errorf("%v: %q -> %v, %v", c, b, back, err)
		}
	}
	var c Class
	if err := c.UnmarshalText([]byte("sharing")); err == nil {
		t.Error("unknown class name accepted")
	}
	if _, err := Class(42).MarshalText(); err == nil {
		t.Error("unknown class marshalled")
	}
	if s := Class(42).String(); s != "Class(42)" {
		t.Errorf("String = %q", s)
	}
}

func TestAddVarsReplacesAndSkips(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"x", 0, 8}, Var{"", 16, 8}, Var{"zero", 24, 0})
	a.AddVars(Var{"x", 4096, 8}) // x moved to its own page
	for _, m := range pingPong(0, 10, func(from uint16) []Range { return []Range{{Off: uint32(from) * 16, Len: 8}} }) {
		a.Record(m)
	}
	fs := a.Findings()
	if len(fs) != 1 {
		t.Fatalf("findings:\n%s", dump(fs))
	}
	if got, want := varNames(fs[0]), []string{"unnamed bytes [0,8)", "var@16"}; !slices.Equal(got, want) {
		t.Errorf("vars = %q, want %q", got, want)
	}
}

func TestNewRejectsBadPageSize(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "page size must be positive") {
			t.Errorf("recover = %v", r)
		}
	}()
	New(0)
}

func TestOrderFollowsVectorClocks(t *testing.T) {
	// Ownership goes 0 -> 1 -> 2 -> 0. Node 2's wall clock runs 1 s
	// behind, and the records arrive out of order.
	t0 := time.Unix(5000, 0)
	ms := []Migration{
		{Page: 4, From: 2, To: 0, Write: true, Wall: t0.Add(3*time.Millisecond - time.Second), Clock: []uint64{2, 2, 2}},
		{Page: 4, From: 0, To: 1, Write: true, Wall: t0.Add(1 * time.Millisecond), Clock: []uint64{1, 1, 0}},
		{Page: 4, From: 1, To: 2, Write: true, Wall: t0.Add(2 * time.Millisecond), Clock: []uint64{1, 2, 1}},
	}
	a := New(ps)
	for _, m := range ms {
		a.Record(m)
	}
	var to []uint16
	for _, e := range a.pages[4].ordered() {
		to = append(to, e.to)
	}
	if want := []uint16{1, 2, 0}; !slices.Equal(to, want) {
		t.Errorf("order by clock = %v, want %v", to, want)
	}
	// Drawn against wall time, node 2's skewed transfer is clamped to the
	// time of the one before it, so node 2's turn takes no width, but the
	// owner after it is node 0 as the clocks say.
	if owners := heatOwners(t, a); !slices.Equal(owners, []uint16{0, 1, 0}) {
		t.Errorf("ownership runs = %v, want [0 1 0]", owners)
	}

	// Without clocks the wall time decides.
	b := New(ps)
	for _, m := range ms {
		m.Clock = nil
		b.Record(m)
	}
	to = to[:0]
	for _, e := range b.pages[4].ordered() {
		to = append(to, e.to)
	}
	if want := []uint16{0, 1, 2}; !slices.Equal(to, want) {
		t.Errorf("order by wall = %v, want %v", to, want)
	}
	if owners := heatOwners(t, b); !slices.Equal(owners, []uint16{0, 1, 2}) {
		t.Errorf("ownership runs by wall = %v, want [0 1 2]", owners)
	}
}

// heatOwners returns the owners of the ownership runs of the first row of
// the heat map, checking that the runs go forward in time.
func heatOwners(t *testing.T, a *Analyzer) []uint16 {
	t.Helper()
	hm, err := a.heatmapData(10)
	if err != nil {
		t.Fatal(err)
	}
	var owners []uint16
	for i, r := range hm.runs[0] {
		owners = append(owners, hm.nodes[r.owner])
		if i > 0 && r.start < hm.runs[0][i-1].start {
			t.Errorf("runs go back in time: %+v", hm.runs[0])
		}
	}
	return owners
}

func TestConcurrentUse(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"counter_A", 0, 8}, Var{"counter_B", 8, 8})
	ms := simulate(ps, 0, incr(400, map[uint16]uint64{0: 0, 1: 8}))
	var wg sync.WaitGroup
	const workers = 4
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ms); i += workers {
				a.Record(ms[i])
				if i%50 == 0 {
					_ = a.Findings()
					_ = a.Report()
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.AddVars(Var{"later", 2048, 8})
	}()
	wg.Wait()
	fs := a.Findings()
	if len(fs) != 1 || fs[0].Migrations != len(ms) || fs[0].Class != FalseSharing {
		t.Errorf("after concurrent records:\n%s", dump(fs))
	}
}

func TestStructVars(t *testing.T) {
	type inner struct {
		X, Y uint64
	}
	type outer struct {
		A     uint32
		In    inner
		N     atomic.Uint64
		Mu    sync.Mutex
		_     [40]byte
		Empty struct{}
		B     [3]uint16
	}
	tests := []struct {
		name    string
		v       any
		prefix  string
		off     uint64
		want    []Var
		wantErr error
	}{
		{"value", Stats{}, "Stats", 100, []Var{{"Stats.Hits", 100, 8}, {"Stats.Misses", 108, 8}}, nil},
		{"nil pointer", (*Stats)(nil), "S", 0, []Var{{"S.Hits", 0, 8}, {"S.Misses", 8, 8}}, nil},
		{"type name", &Stats{}, "", 0, []Var{{"Stats.Hits", 0, 8}, {"Stats.Misses", 8, 8}}, nil},
		{"nested, wrappers, blanks", outer{}, "o", 4096, []Var{
			{"o.A", 4096, 4}, {"o.In.X", 4104, 8}, {"o.In.Y", 4112, 8},
			{"o.N", 4120, 8}, {"o.Mu", 4128, 8}, {"o.B", 4176, 6},
		}, nil},
		{"not a struct", 42, "x", 0, nil, ErrNotStruct},
		{"nil", nil, "x", 0, nil, ErrNotStruct},
		{"slice", []Stats{}, "x", 0, nil, ErrNotStruct},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := StructVars(tt.prefix, tt.off, tt.v)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
	if _, err := StructVars("", 0, struct{ A int }{}); err == nil {
		t.Error("anonymous struct without a name accepted")
	}
}

func TestSpanSet(t *testing.T) {
	build := func(xs ...uint64) spanSet {
		var s spanSet
		for i := 0; i+1 < len(xs); i += 2 {
			s = s.add(xs[i], xs[i+1])
		}
		return s
	}
	tests := []struct {
		name string
		got  spanSet
		want spanSet
	}{
		{"disjoint stay apart", build(10, 20, 0, 5), spanSet{{0, 5}, {10, 20}}},
		{"touching merge", build(0, 8, 8, 16), spanSet{{0, 16}}},
		{"bridge merges three", build(0, 2, 10, 12, 20, 22, 1, 21), spanSet{{0, 22}}},
		{"empty ignored", build(5, 5, 7, 3), nil},
		{"contained", build(0, 100, 10, 20), spanSet{{0, 100}}},
		{"minus middle", build(0, 100).minus(build(10, 20, 30, 40)), spanSet{{0, 10}, {20, 30}, {40, 100}}},
		{"minus all", build(10, 20).minus(build(0, 100)), nil},
		{"minus edges", build(0, 10, 20, 30).minus(build(5, 25)), spanSet{{0, 5}, {25, 30}}},
		{"clip", build(0, 10, 20, 30).clip(5, 25), spanSet{{5, 10}, {20, 25}}},
		{"union", build(0, 4).union(build(4, 8, 12, 16)), spanSet{{0, 8}, {12, 16}}},
		{"key round trip", decodeSpans(build(0, 4, 300, 70000).key()), spanSet{{0, 4}, {300, 70000}}},
	}
	for _, tt := range tests {
		if fmt.Sprint(tt.got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	for _, tt := range []struct {
		a, b spanSet
		want bool
	}{
		{build(0, 8), build(8, 16), false},
		{build(0, 8), build(7, 16), true},
		{build(0, 2, 10, 12), build(2, 10, 12, 14), false},
		{build(0, 2, 10, 12), build(2, 10, 11, 14), true},
		{nil, build(0, 1), false},
	} {
		if got := tt.a.overlaps(tt.b); got != tt.want {
			t.Errorf("%v overlaps %v = %v", tt.a, tt.b, got)
		}
		if got := tt.b.overlaps(tt.a); got != tt.want {
			t.Errorf("%v overlaps %v = %v", tt.b, tt.a, got)
		}
	}
}

func TestFormatting(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{commas(0), "0"}, {commas(999), "999"}, {commas(1000), "1,000"}, {commas(9876), "9,876"},
		{commas(1234567), "1,234,567"}, {commas(-1234), "-1,234"},
		{fmtDur(1234 * time.Millisecond), "1.2s"}, {fmtDur(12345 * time.Microsecond), "12.3ms"},
		{fmtDur(45 * time.Second), "45s"}, {fmtDur(450 * time.Nanosecond), "450ns"},
		{nodesWord([]uint16{3}), "node 3"}, {nodesWord([]uint16{0, 1, 2}), "nodes 0, 1 and 2"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestManyDistinctPatterns(t *testing.T) {
	// Node 0 writes a different set of bytes in each of 10,000 periods,
	// more distinct patterns than a page remembers; the counts must stay
	// right for a variable every pattern touches.
	const n = 20000
	a := New(ps)
	a.AddVars(Var{"a", 0, 2056}, Var{"b", 4000, 8})
	for _, m := range pingPong(0, n, func(uint16) []Range { return nil }) {
		if m.From == 0 {
			i := int(m.Clock[0])
			m.Written = []Range{{Off: uint32(i % 2048), Len: 1 + uint32(i/2048)}}
		} else {
			m.Written = []Range{{4000, 8}}
		}
		a.Record(m)
	}
	if got := a.pages[0].npat; got != maxPatterns {
		t.Errorf("patterns = %d, want the bound %d", got, maxPatterns)
	}
	fs := a.Findings()
	if len(fs) != 1 || fs[0].Class != FalseSharing {
		t.Fatalf("findings:\n%s", dump(fs))
	}
	want := []VarUse{
		{Name: "a", Offset: 0, Size: 2056, WrittenBy: []uint16{0}, Writes: n / 2},
		{Name: "b", Offset: 4000, Size: 8, WrittenBy: []uint16{1}, Writes: n / 2},
	}
	if fmt.Sprint(fs[0].Vars) != fmt.Sprint(want) {
		t.Errorf("vars = %+v\nwant %+v", fs[0].Vars, want)
	}
}

// TestLockProtected: a counter that two nodes write in turn is true
// sharing, unless the holding periods show a lock that moved with the page.
func TestLockProtected(t *testing.T) {
	shared := interleave(incr(200, map[uint16]uint64{0: 0}), incr(200, map[uint16]uint64{1: 0}))
	packed := incr(200, map[uint16]uint64{0: 0, 1: 8})
	// Each decorate sets the locks of the i-th transfer m.
	always := func(locks ...string) func(int, *Migration) {
		return func(_ int, m *Migration) { m.Locks = locks }
	}
	tests := []struct {
		name      string
		ops       []op
		decorate  func(i int, m *Migration)
		want      Class
		wantLocks []string
		rcAdvice  bool // the fix offers release consistency
	}{
		{name: "no locks known", ops: shared, decorate: func(int, *Migration) {}, want: TrueSharing},
		{name: "every period under one lock", ops: shared, decorate: always("acct"), want: LockProtected, wantLocks: []string{"acct"}},
		{
			// What one daemon records: only its own periods carry locks.
			name: "one writer's periods known", ops: shared,
			decorate: func(_ int, m *Migration) {
				if m.From == 0 {
					m.Locks = []string{"acct"}
				}
			},
			want: LockProtected, wantLocks: []string{"acct"},
		},
		{
			name: "a lock kept cached all along does not count", ops: shared,
			decorate: func(_ int, m *Migration) {
				m.Locks, m.Kept = []string{"acct", "cfg"}, []string{"cfg"}
			},
			want: LockProtected, wantLocks: []string{"acct"},
		},
		{
			name: "two locks moving together", ops: shared, decorate: always("z", "a"),
			want: LockProtected, wantLocks: []string{"a", "z"},
		},
		{
			name: "a period without locks does not hide the lock", ops: shared,
			decorate: func(i int, m *Migration) {
				m.Locks = []string{"acct"}
				if i == 0 {
					m.Locks = []string{} // initialisation, before the program shares the data
				}
			},
			want: LockProtected, wantLocks: []string{"acct"},
		},
		{
			// Node 0 still held the lock when node 1 took the page, as its
			// daemon records: node 1 wrote without it.
			name: "a racing writer, seen by the node that kept the lock", ops: shared,
			decorate: func(_ int, m *Migration) {
				if m.From == 0 {
					m.Locks, m.Kept = []string{"acct"}, []string{"acct"}
				}
			},
			want: TrueSharing,
		},
		{
			name: "a racing writer, seen by itself", ops: shared,
			decorate: func(_ int, m *Migration) {
				if m.From == 1 {
					m.Locks = []string{}
				}
			},
			want: TrueSharing,
		},
		{
			name: "each node its own lock", ops: shared,
			decorate: func(_ int, m *Migration) {
				own := []string{fmt.Sprint("lock-", m.From)}
				m.Locks, m.Kept = own, own
			},
			want: TrueSharing,
		},
		{
			name: "the lock moved with the page in a third of the periods", ops: shared,
			decorate: func(i int, m *Migration) {
				m.Locks = []string{}
				if i%3 == 0 {
					m.Locks = []string{"acct"}
				}
			},
			want: TrueSharing,
		},
		{
			name: "periods without writes do not count", ops: shared,
			decorate: func(i int, m *Migration) {
				m.Locks = []string{"acct"}
				if i%3 != 0 {
					m.Locks, m.Written = []string{}, []Range{}
				}
			},
			want: LockProtected, wantLocks: []string{"acct"},
		},
		{
			name: "too few periods known", ops: shared,
			decorate: func(i int, m *Migration) {
				if i == 0 {
					m.Locks = []string{"acct"}
				}
			},
			want: TrueSharing,
		},
		{
			// Apart, each counter would stay with its writer: the layout
			// fix still holds.
			name: "false sharing under a lock", ops: packed, decorate: always("acct"), want: FalseSharing, rcAdvice: true,
		},
		{
			// Each writer's data under its own lock: padding, or release
			// consistency, which lets both write the page at once.
			name: "false sharing under each node's lock", ops: packed,
			decorate: func(_ int, m *Migration) {
				own := []string{fmt.Sprint("lock-", m.From)}
				m.Locks = own
			},
			want: FalseSharing, rcAdvice: true,
		},
		{name: "false sharing without locks", ops: packed, decorate: always(), want: FalseSharing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(ps)
			a.AddVars(Var{"balance", 0, 8}, Var{"other", 8, 8})
			buf := make([]string, 0, 4)
			for i, m := range simulate(ps, 0, tt.ops) {
				tt.decorate(i, &m)
				// The analyzer must not keep the caller's slices: hand
				// them over in a reused buffer, spoiled after each call.
				if m.Locks != nil {
					buf = append(buf[:0], m.Locks...)
					m.Locks = buf
				}
				a.Record(m)
				for j := range buf {
					buf[j] = "spoiled"
				}
			}
			fs := a.Findings()
			if len(fs) != 1 || fs[0].Class != tt.want {
				t.Fatalf("want one %v finding, got:\n%s", tt.want, dump(fs))
			}
			f := fs[0]
			if !slices.Equal(f.Locks, tt.wantLocks) {
				t.Errorf("locks = %q, want %q", f.Locks, tt.wantLocks)
			}
			if got := strings.Contains(f.Fix, "dsm.ReleaseConsistent"); got != tt.rcAdvice {
				t.Errorf("the fix offers release consistency: %v, want %v: %s", got, tt.rcAdvice, f.Fix)
			}
			if tt.want != LockProtected {
				return
			}
			for _, want := range []string{"under " + lockWord(tt.wantLocks), "(lock-protected sharing)", "balance (nodes 0 and 1)"} {
				if !strings.Contains(f.Summary, want) {
					t.Errorf("summary %q lacks %q", f.Summary, want)
				}
			}
			for _, want := range []string{"already orders the writes", "the page moves with it", "holding periods recorded with their locks", "more work per acquisition", "each lock's data page(s) of its own"} {
				if !strings.Contains(f.Fix, want) {
					t.Errorf("fix %q lacks %q", f.Fix, want)
				}
			}
			if strings.Contains(f.Fix, "synchronise") || strings.Contains(f.Fix, "align") {
				t.Errorf("fix gives the advice for unsynchronised or misaligned data: %q", f.Fix)
			}
			r := a.Report()
			if r.Totals.PagesByClass["lock-protected"] != 1 || r.Totals.FalseSharingCost != 0 {
				t.Errorf("totals: %+v", r.Totals)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), `"class":"lock-protected"`) || !strings.Contains(string(b), `"locks":[`) {
				t.Errorf("JSON lacks the class or the locks: %s", b)
			}
		})
	}
}
