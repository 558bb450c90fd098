package analyzer

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// statsVars registers a Stats{Hits, Misses} at the start of page 1 and a
// plain counter after it: [4096,4104) Stats.Hits, [4104,4112) Stats.Misses,
// [4112,4120) total.
func statsVars(t *testing.T) []Var {
	return append(mustStructVars(t, "Stats", ps, Stats{}), Var{"total", ps + 16, 8})
}

// rw is a write of a race with a clock whose sum is sum.
func rw(node uint16, interval, sum uint64) RaceWrite {
	return RaceWrite{Node: node, Interval: interval, Clock: []uint64{interval, sum - interval}}
}

// raceFindingsOf returns the DataRace findings, as Findings orders them.
func raceFindingsOf(fs []Finding) []Finding {
	return slices.DeleteFunc(slices.Clone(fs), func(f Finding) bool { return f.Race == nil })
}

func TestRaceFindings(t *testing.T) {
	type want struct {
		page    uint32
		names   []string
		vars    []string // Finding.Vars names
		nodes   [2]uint16
		count   int
		bytes   []Range
		summary []string // substrings
		fix     []string // substrings
	}
	tests := []struct {
		name  string
		races []Race
		want  []want
	}{
		{
			name:  "a race on one field names the field, the nodes and the intervals",
			races: []Race{{Page: 1, Off: 0, Len: 8, A: rw(0, 4, 6), B: rw(1, 7, 8)}},
			want: []want{{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 1,
				bytes:   []Range{{0, 8}},
				summary: []string{"page 1: data race on Stats.Hits:", "node 0's write in interval 4", "node 1's write in interval 7"},
				fix:     []string{"one lock", "barrier", "move the data apart", "node 1's write (interval 7) was kept, node 0's (interval 4) lost"}}},
		},
		{
			name:  "the write with the larger clock sum is kept, whichever arrived first",
			races: []Race{{Page: 1, Off: 8, Len: 8, A: rw(1, 9, 20), B: rw(0, 3, 5)}},
			want: []want{{page: 1, names: []string{"Stats.Misses"}, vars: []string{"Stats.Misses"}, nodes: [2]uint16{0, 1}, count: 1,
				bytes:   []Range{{8, 8}},
				summary: []string{"node 0's write in interval 3 and node 1's write in interval 9"},
				fix:     []string{"node 1's write (interval 9) was kept, node 0's (interval 3) lost"}}},
		},
		{
			name:  "equal sums: the higher node id is kept",
			races: []Race{{Page: 1, Off: 8, Len: 8, A: rw(3, 5, 10), B: rw(2, 6, 10)}},
			want: []want{{page: 1, names: []string{"Stats.Misses"}, vars: []string{"Stats.Misses"}, nodes: [2]uint16{2, 3}, count: 1,
				bytes: []Range{{8, 8}},
				fix:   []string{"node 3's write (interval 5) was kept, node 2's (interval 6) lost"}}},
		},
		{
			name:  "part of a field: the bytes within it",
			races: []Race{{Page: 1, Off: 2, Len: 4, A: rw(0, 1, 2), B: rw(1, 1, 3)}},
			want: []want{{page: 1, names: []string{"Stats.Hits bytes [2,6)"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 1,
				bytes: []Range{{2, 4}}, summary: []string{"data race on Stats.Hits bytes [2,6):"}}},
		},
		{
			name:  "one race over two fields names both",
			races: []Race{{Page: 1, Off: 4, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)}},
			want: []want{{page: 1, names: []string{"Stats.Hits bytes [4,8)", "Stats.Misses bytes [0,4)"}, vars: []string{"Stats.Hits", "Stats.Misses"},
				nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{4, 8}},
				summary: []string{"data race on Stats.Hits bytes [4,8) and Stats.Misses bytes [0,4):"}}},
		},
		{
			name:  "no variable: page offsets",
			races: []Race{{Page: 5, Off: 16, Len: 8, A: rw(0, 2, 3), B: rw(2, 4, 9)}},
			want: []want{{page: 5, names: []string{"bytes [16,24) of page 5"}, vars: []string{"unnamed bytes [20496,20504)"}, nodes: [2]uint16{0, 2}, count: 1,
				bytes: []Range{{16, 8}}, summary: []string{"page 5: data race on bytes [16,24) of page 5:"}}},
		},
		{
			name:  "part in a variable, part outside",
			races: []Race{{Page: 1, Off: 20, Len: 8, A: rw(0, 2, 3), B: rw(1, 4, 9)}},
			want: []want{{page: 1, names: []string{"total bytes [4,8)", "bytes [24,28) of page 1"}, vars: []string{"total", "unnamed bytes [4120,4124)"},
				nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{20, 8}}}},
		},
		{
			name:  "without clocks the kept write is unknown",
			races: []Race{{Page: 1, Off: 0, Len: 8, A: RaceWrite{Node: 0, Interval: 1}, B: RaceWrite{Node: 1, Interval: 2}}},
			want: []want{{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 1,
				bytes: []Range{{0, 8}}, fix: []string{"Which write the bytes kept is unknown"}}},
		},
		{
			name: "races on different bytes of one field are one finding",
			races: []Race{{Page: 1, Off: 0, Len: 4, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 4, Len: 4, A: rw(1, 2, 5), B: rw(0, 2, 4)}},
			want: []want{{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 2,
				bytes:   []Range{{0, 8}},
				summary: []string{"nodes 0 and 1 wrote it concurrently 2 times, first in node 0's interval 1 and node 1's interval 1, last in intervals 2 and 2"},
				fix:     []string{"in the last race node 1's write (interval 2) was kept", "of the 2 races, node 0's write was kept in 0 and node 1's in 2"}}},
		},
		{
			name: "races on two fields are two findings",
			races: []Race{{Page: 1, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 8, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)}},
			want: []want{
				{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{0, 8}}},
				{page: 1, names: []string{"Stats.Misses"}, vars: []string{"Stats.Misses"}, nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{8, 8}}},
			},
		},
		{
			name: "the same bytes between two pairs of nodes are two findings",
			races: []Race{{Page: 1, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 0, Len: 8, A: rw(2, 1, 2), B: rw(1, 2, 4)}},
			want: []want{
				{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{0, 8}}},
				{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{1, 2}, count: 1, bytes: []Range{{0, 8}}},
			},
		},
		{
			name: "the most repeated race first",
			races: []Race{{Page: 0, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 0, Len: 8, A: rw(0, 2, 4), B: rw(1, 2, 5)}},
			want: []want{
				{page: 1, names: []string{"Stats.Hits"}, vars: []string{"Stats.Hits"}, nodes: [2]uint16{0, 1}, count: 2, bytes: []Range{{0, 8}}},
				{page: 0, names: []string{"bytes [0,8) of page 0"}, vars: []string{"unnamed bytes [0,8)"}, nodes: [2]uint16{0, 1}, count: 1, bytes: []Range{{0, 8}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(ps)
			a.AddVars(statsVars(t)...)
			for _, r := range tt.races {
				a.RecordRace(r)
			}
			fs := a.Findings()
			if len(fs) != len(tt.want) {
				t.Fatalf("%d findings, want %d:\n%s", len(fs), len(tt.want), dump(fs))
			}
			for i, w := range tt.want {
				f := fs[i]
				d := f.Race
				if f.Class != DataRace || d == nil || f.Page != w.page {
					t.Fatalf("finding %d: %s", i, f)
				}
				if !slices.Equal(d.Names, w.names) || !slices.Equal(varNames(f), w.vars) || d.Nodes != w.nodes || d.Count != w.count ||
					!slices.Equal(d.Bytes, w.bytes) || !slices.Equal(f.Nodes, w.nodes[:]) {
					t.Errorf("finding %d: names %q, vars %q, nodes %v, count %d, bytes %v; want %q, %q, %v, %d, %v",
						i, d.Names, varNames(f), d.Nodes, d.Count, d.Bytes, w.names, w.vars, w.nodes, w.count, w.bytes)
				}
				for _, v := range f.Vars {
					if !slices.Equal(v.WrittenBy, w.nodes[:]) || v.Writes == 0 {
						t.Errorf("finding %d: var %+v", i, v)
					}
				}
				for _, s := range w.summary {
					if !strings.Contains(f.Summary, s) {
						t.Errorf("finding %d: summary %q lacks %q", i, f.Summary, s)
					}
				}
				for _, s := range w.fix {
					if !strings.Contains(f.Fix, s) {
						t.Errorf("finding %d: fix %q lacks %q", i, f.Fix, s)
					}
				}
				if s := f.String(); !strings.Contains(s, f.Summary) || !strings.Contains(s, "class: data race") || !strings.Contains(s, "fix: ") {
					t.Errorf("finding %d: String = %q", i, s)
				}
			}
		})
	}
}

func TestRepeatedRacesAreOneRecord(t *testing.T) {
	a := New(ps)
	a.AddVars(statsVars(t)...)
	const n = 1000
	for i := range uint64(n) {
		// Node 0's diff arrives first in even intervals, node 1's in odd
		// ones; node 0's write wins in every tenth race.
		x, y := rw(0, i+1, 2*i+2), rw(1, i+1, 2*i+3)
		if i%10 == 0 {
			x = rw(0, i+1, 2*i+4)
		}
		if i%2 == 1 {
			x, y = y, x
		}
		a.RecordRace(Race{Page: 1, Off: 0, Len: 8, A: x, B: y})
	}
	if len(a.races) != 1 {
		t.Fatalf("%d records, want 1", len(a.races))
	}
	fs := a.Findings()
	if len(fs) != 1 {
		t.Fatalf("findings:\n%s", dump(fs))
	}
	d := fs[0].Race
	want := RaceDetail{
		Nodes: [2]uint16{0, 1}, Bytes: []Range{{0, 8}}, Names: []string{"Stats.Hits"}, Count: n,
		First:     RaceWrites{Intervals: [2]uint64{1, 1}, Kept: 0},
		Last:      RaceWrites{Intervals: [2]uint64{n, n}, Kept: 1},
		KeptTimes: [2]int{n / 10, n - n/10},
	}
	if fmt.Sprint(*d) != fmt.Sprint(want) {
		t.Errorf("race = %+v\nwant %+v", *d, want)
	}
	if !strings.Contains(fs[0].Fix, "of the 1,000 races, node 0's write was kept in 100 and node 1's in 900") {
		t.Errorf("fix: %s", fs[0].Fix)
	}
	if r := a.Report(); r.Totals.DataRaces != n || r.Totals.DroppedRaces != 0 {
		t.Errorf("totals: %+v", r.Totals)
	}
}

func TestRaceBounds(t *testing.T) {
	tests := []struct {
		name                     string
		limit                    int
		races                    []Race
		records, recorded, drops int
		invalid                  int
		bytes                    []Range // of the first finding
	}{
		{
			name:  "past the limit, new races are counted, repeats still merge",
			limit: 2,
			races: []Race{
				{Page: 1, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 2, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 3, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)}, // no room
				{Page: 1, Off: 0, Len: 8, A: rw(0, 2, 4), B: rw(1, 2, 5)}, // a repeat
				{Page: 1, Off: 8, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)}, // no room
			},
			records: 2, recorded: 5, drops: 2, bytes: []Range{{0, 8}},
		},
		{
			name:  "empty and out-of-page ranges are invalid; a node with itself is no race",
			limit: 10,
			races: []Race{
				{Page: 1, Off: 0, Len: 0, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: ps, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)},
				{Page: 1, Off: 0, Len: 8, A: rw(1, 1, 2), B: rw(1, 2, 3)},
				{Page: 1, Off: ps - 4, Len: 8, A: rw(0, 1, 2), B: rw(1, 1, 3)}, // cut at the page end
			},
			records: 1, recorded: 1, invalid: 3, bytes: []Range{{ps - 4, 4}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := NewWithLimits(ps, Limits{Races: tt.limit})
			for _, r := range tt.races {
				a.RecordRace(r)
			}
			r := a.Report()
			tot := r.Totals
			if len(a.races) != tt.records || tot.DataRaces != tt.recorded || tot.DroppedRaces != tt.drops || tot.InvalidRanges != tt.invalid {
				t.Errorf("records %d, totals %+v; want %d records, %d recorded, %d dropped, %d invalid",
					len(a.races), tot, tt.records, tt.recorded, tt.drops, tt.invalid)
			}
			if len(r.Findings) != tt.records || !slices.Equal(r.Findings[0].Race.Bytes, tt.bytes) {
				t.Errorf("findings:\n%s", dump(r.Findings))
			}
			if tt.drops > 0 && !strings.Contains(r.Text(), fmt.Sprintf("%d of them are in no finding", tt.drops)) {
				t.Errorf("text does not count the dropped races:\n%s", r.Text())
			}
		})
	}
}

// TestRaceOverManyFields: a race over a whole array of structs is one
// finding, whose summary names a few fields and whose detail names all.
func TestRaceOverManyFields(t *testing.T) {
	a := New(ps)
	a.AddVars(mustStructVars(t, "Slots", 0, [8]Slot{})...) // 24 fields, 192 bytes
	a.RecordRace(Race{Page: 0, Off: 0, Len: 192, A: rw(0, 1, 2), B: rw(1, 1, 3)})
	a.RecordRace(Race{Page: 0, Off: 100, Len: 4, A: rw(0, 2, 4), B: rw(1, 2, 5)})
	fs := a.Findings()
	if len(fs) != 1 || len(fs[0].Race.Names) != 24 || fs[0].Race.Count != 2 || len(fs[0].Vars) != 24 {
		t.Fatalf("findings:\n%s", dump(fs))
	}
	if !strings.Contains(fs[0].Summary, "Slots[0].Hits, ") || !strings.Contains(fs[0].Summary, "and 18 more:") {
		t.Errorf("summary: %s", fs[0].Summary)
	}
	if s := fs[0].String(); !strings.Contains(s, "Slots[7].Ratio") {
		t.Errorf("String leaves out fields: %s", s)
	}
}

func TestRaceReport(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"counter_A", 4096, 8}, Var{"counter_B", 4104, 8})
	a.AddVars(mustStructVars(t, "Stats", 2*ps, Stats{})...)
	// False sharing on page 1, with a cost; a race on page 2.
	for _, m := range simulate(ps, 0, incr(100, map[uint16]uint64{0: 4096, 1: 4104})) {
		a.Record(m)
	}
	a.RecordRace(Race{Page: 2, Off: 0, Len: 8, A: rw(0, 4, 6), B: rw(1, 7, 8)})
	r := a.Report()
	if len(r.Findings) != 2 || r.Findings[0].Class != DataRace || r.Findings[1].Class != FalseSharing || r.Findings[1].Cost == 0 {
		t.Fatalf("a data race must come before any layout finding:\n%s", dump(r.Findings))
	}
	if want := map[string]int{"false sharing": 1}; !maps.Equal(r.Totals.PagesByClass, want) || r.Totals.DataRaces != 1 {
		t.Errorf("totals: %+v", r.Totals)
	}
	classes := map[string]Class{}
	for _, v := range r.Vars {
		classes[v.Name] = v.Class
	}
	if want := map[string]Class{"counter_A": FalseSharing, "counter_B": FalseSharing, "Stats.Hits": DataRace, "Stats.Misses": Quiet}; !maps.Equal(classes, want) {
		t.Errorf("var classes %v, want %v", classes, want)
	}
	txt := r.Text()
	for _, s := range []string{"1 data race recorded by the pages' homes, in 1 finding below", "finding 1: page 2: data race on Stats.Hits:",
		"class: data race", "raced bytes of page 2: [0,8)", "node 1's write (interval 7) was kept"} {
		if !strings.Contains(txt, s) {
			t.Errorf("text lacks %q:\n%s", s, txt)
		}
	}

	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"class":"data race"`, `"race":{"nodes":[0,1],"bytes":[{"off":0,"len":8}],"names":["Stats.Hits"],"count":1,` +
		`"first":{"intervals":[4,7],"kept":1},"last":{"intervals":[4,7],"kept":1},"kept_times":[0,1]}`, `"data_races":1`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("JSON lacks %s: %s", s, b)
		}
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Findings[0], r.Findings[0]) || back.Findings[1].Race != nil {
		t.Errorf("JSON round trip: %+v", back.Findings)
	}

	var c Class
	if err := c.UnmarshalText([]byte("data race")); err != nil || c != DataRace || DataRace <= FalseSharing {
		t.Errorf("data race: %v, %v", c, err)
	}
}

func TestMergeRaces(t *testing.T) {
	vars := []Var{{"counter_A", 4096, 8}, {"counter_B", 4104, 8}, {"flag", 2 * ps, 8}}
	// Node 0 is the home of page 1 (falsely shared, and raced on too) and
	// node 1 of page 2.
	home0, home1 := New(ps), New(ps)
	home0.AddVars(vars...)
	home1.AddVars(vars...)
	for _, m := range simulate(ps, 0, incr(100, map[uint16]uint64{0: 4096, 1: 4104})) {
		home0.Record(m)
	}
	home0.RecordRace(Race{Page: 1, Off: 0, Len: 8, A: rw(0, 1, 2), B: rw(2, 1, 3)})
	for i := range uint64(3) {
		home1.RecordRace(Race{Page: 2, Off: 0, Len: 8, A: rw(1, i+1, 2*i+2), B: rw(2, i+1, 2*i+3)})
	}
	r0, r1 := home0.Report(), home1.Report()
	// A report that went stale before its home's last races.
	stale := New(ps)
	stale.AddVars(vars...)
	stale.RecordRace(Race{Page: 2, Off: 0, Len: 8, A: rw(1, 1, 2), B: rw(2, 1, 3)})
	rs := stale.Report()

	tests := []struct {
		name   string
		parts  []Report
		counts map[string]int // race finding "page nodes" -> count
		races  int            // Totals.DataRaces
	}{
		{"union of the homes' races", []Report{r0, r1}, map[string]int{"1 [0 2]": 1, "2 [1 2]": 3}, 4},
		{"the same report twice is kept once", []Report{r0, r1, r1}, map[string]int{"1 [0 2]": 1, "2 [1 2]": 3}, 7},
		{"the larger count wins", []Report{rs, r1, r0}, map[string]int{"1 [0 2]": 1, "2 [1 2]": 3}, 5},
		{"a merged report merges again", []Report{Merge(r0), Merge(r1)}, map[string]int{"1 [0 2]": 1, "2 [1 2]": 3}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := Merge(tt.parts...)
			races := raceFindingsOf(m.Findings)
			got := map[string]int{}
			for _, f := range races {
				got[fmt.Sprintf("%d %v", f.Page, f.Race.Nodes)] = f.Race.Count
			}
			if !maps.Equal(got, tt.counts) || m.Totals.DataRaces != tt.races {
				t.Errorf("races %v (total %d), want %v (%d):\n%s", got, m.Totals.DataRaces, tt.counts, tt.races, dump(m.Findings))
			}
			if m.Findings[0].Race == nil || m.Findings[0].Race.Count != 3 || m.Findings[1].Race == nil {
				t.Errorf("data races first, the most repeated first:\n%s", dump(m.Findings))
			}
			// Page 1's false sharing stays its own finding.
			fs := slices.DeleteFunc(slices.Clone(m.Findings), func(f Finding) bool { return f.Race != nil })
			if len(fs) != 1 || fs[0].Class != FalseSharing || fs[0].Page != 1 || m.Totals.PagesByClass["false sharing"] != 1 || m.Totals.PagesByClass["data race"] != 0 {
				t.Errorf("page findings:\n%s\nby class %v", dump(fs), m.Totals.PagesByClass)
			}
			classes := map[string]Class{}
			for _, v := range m.Vars {
				classes[v.Name] = v.Class
			}
			if want := map[string]Class{"counter_A": DataRace, "counter_B": FalseSharing, "flag": DataRace}; !maps.Equal(classes, want) {
				t.Errorf("var classes %v, want %v", classes, want)
			}
		})
	}
}

func TestRecordRaceConcurrently(t *testing.T) {
	a := New(ps)
	a.AddVars(statsVars(t)...)
	var wg sync.WaitGroup
	for n := range uint16(4) {
		wg.Go(func() {
			for i := range uint64(200) {
				a.RecordRace(Race{Page: 1, Off: uint32(i % 16), Len: 8, A: rw(n, i+1, i+2), B: rw(n+1, i+1, i+3)})
				if i%50 == 0 {
					_ = a.Report().Text()
				}
			}
		})
	}
	wg.Wait()
	if r := a.Report(); r.Totals.DataRaces != 800 || len(a.races) != 64 {
		t.Errorf("%d races in %d records", r.Totals.DataRaces, len(a.races))
	}
}
