package analyzer

import (
	"bytes"
	"encoding/json"
	"image/png"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
)

// nodeReports feeds each node's analyzer what its daemon records of the
// transfers ms: the receiving node records every transfer, with its cost;
// the giving node records the ownership transfers too, without cost (it had
// written the page: node.outgoing records whenever the giver has a twin).
// With recorders set, each report names its node and the records it made
// as the giving end, as cluster.Report sets them.
func nodeReports(ms []Migration, vars []Var, recorders bool) []Report {
	byNode := map[uint16]*Analyzer{}
	sent := map[uint16]int{}
	get := func(n uint16) *Analyzer {
		if byNode[n] == nil {
			byNode[n] = New(ps)
			byNode[n].AddVars(vars...)
		}
		return byNode[n]
	}
	for _, m := range ms {
		get(m.To).Record(m)
		if !m.Write {
			continue
		}
		g := m
		g.Cost, g.Wall = 0, m.Wall.Add(-time.Microsecond)
		get(m.From).Record(g)
		sent[m.From]++
	}
	nodes := slices.Sorted(maps.Keys(byNode))
	var out []Report
	for _, n := range nodes {
		r := byNode[n].Report()
		if recorders {
			r.Recorders = []Recorder{{Node: n, Sent: sent[n]}}
		}
		out = append(out, r)
	}
	return out
}

// threeNodes: counter_A and counter_B share page 1, written by nodes 0 and
// 1; counter_C and counter_D share page 2, written by nodes 1 and 2, which
// node 0's report cannot see; node 0 keeps a table on page 3 that nodes 1
// and 2 read.
func threeNodes() ([]Migration, []Var) {
	vars := []Var{{"counter_A", 4096, 8}, {"counter_B", 4104, 8}, {"counter_C", 8192, 8}, {"counter_D", 8200, 8}, {"table", 12288, 4096}}
	var ops []op
	for i, o := range incr(60, map[uint16]uint64{0: 4096, 1: 4104}) {
		ops = append(ops, o)
		if i%3 == 0 {
			ops = append(ops, incr(1, map[uint16]uint64{1: 8192, 2: 8200})...)
		}
		if i%5 == 0 {
			ops = append(ops, op{node: 0, off: 12288 + uint64(i), len: 8, write: true},
				op{node: 1, off: 12288, len: 8}, op{node: 2, off: 12296, len: 8})
		}
	}
	return simulate(ps, 0, ops), vars
}

func TestMergeCountsEachTransferOnce(t *testing.T) {
	ms, vars := threeNodes()
	truth := New(ps)
	truth.AddVars(vars...)
	for _, m := range ms {
		truth.Record(m)
	}
	want := truth.Report()
	parts := nodeReports(ms, vars, true)
	writes := 0
	for _, m := range ms {
		if m.Write {
			writes++
		}
	}
	if len(parts) != 3 || len(parts[0].Findings) >= len(want.Findings) {
		t.Fatalf("node 0 should miss a finding: %d parts, node 0 has %d findings of %d", len(parts), len(parts[0].Findings), len(want.Findings))
	}
	got := Merge(parts...)

	wt, gt := want.Totals, got.Totals
	if gt.Migrations != wt.Migrations || gt.WriteMigrations != wt.WriteMigrations || gt.ReadMigrations != wt.ReadMigrations ||
		gt.Cost != wt.Cost || gt.Pages != wt.Pages || gt.Duplicates != writes {
		t.Errorf("merged totals = %+v\nwant %+v with %d duplicates", gt, wt, writes)
	}
	if !slices.Equal(gt.Nodes, wt.Nodes) || !gt.First.Equal(wt.First.Add(-time.Microsecond)) || !gt.Last.Equal(wt.Last) {
		t.Errorf("nodes, first, last = %v %v %v; want %v %v %v", gt.Nodes, gt.First, gt.Last, wt.Nodes, wt.First, wt.Last)
	}
	if !maps.Equal(gt.PagesByClass, wt.PagesByClass) || gt.FalseSharingCost != wt.FalseSharingCost {
		t.Errorf("pages by class %v, false sharing cost %v; want %v, %v", gt.PagesByClass, gt.FalseSharingCost, wt.PagesByClass, wt.FalseSharingCost)
	}
	if got.Parts != 3 || len(got.Recorders) != 3 {
		t.Errorf("parts %d, recorders %v", got.Parts, got.Recorders)
	}

	// Findings: the same pages, classes, writers and cost as one analyzer
	// that saw every transfer once; the counts are the sums of the records
	// of the nodes that found something on the page, in which a write
	// transfer counts twice.
	if len(got.Findings) != len(want.Findings) {
		t.Fatalf("merged findings:\n%s\nwant:\n%s", dump(got.Findings), dump(want.Findings))
	}
	wf := map[uint32]Finding{}
	for _, f := range want.Findings {
		wf[f.Page] = f
	}
	for _, f := range got.Findings {
		w := wf[f.Page]
		records := 0
		for _, p := range parts {
			for _, pf := range p.Findings {
				if pf.Page == f.Page {
					records += pf.Migrations
				}
			}
		}
		if f.Class != w.Class || !slices.Equal(f.Nodes, w.Nodes) || f.Cost != w.Cost || f.Migrations != records ||
			f.Migrations < w.Migrations || f.Migrations > w.Migrations+w.WriteMigrations {
			t.Errorf("merged finding (of %d records):\n%s\nwant (counts of each transfer once):\n%s", records, f, w)
		}
		var gw, ww []string
		for _, v := range f.Vars {
			gw = append(gw, v.Name+" by "+nodesWord(v.WrittenBy))
		}
		for _, v := range w.Vars {
			ww = append(ww, v.Name+" by "+nodesWord(v.WrittenBy))
		}
		if !slices.Equal(gw, ww) {
			t.Errorf("page %d: writers %q, want %q", f.Page, gw, ww)
		}
		if f.Class == FalseSharing && (f.Fix == "" || !strings.Contains(f.Summary, "share a page")) {
			t.Errorf("page %d: summary %q, fix %q", f.Page, f.Summary, f.Fix)
		}
	}
	wv := map[string]VarStat{}
	for _, v := range want.Vars {
		wv[v.Name] = v
	}
	for _, v := range got.Vars {
		w := wv[v.Name]
		if v.Class != w.Class || !slices.Equal(v.Pages, w.Pages) || v.Migrations != w.Migrations+w.WriteMigrations || v.Cost != w.Cost {
			t.Errorf("merged var %+v, want %+v (write transfers counted twice)", v, w)
		}
	}
	if txt := got.Text(); !strings.Contains(txt, "merged from the reports of nodes 0, 1 and 2: each transfer counts once") ||
		!strings.Contains(txt, "counter_C (node 1) and counter_D (node 2) share a page") {
		t.Errorf("text:\n%s", txt)
	}
}

// Without knowing which node recorded what, or without every node's
// report, Merge cannot tell the duplicates: it sums the records.
func TestMergeSumsWhenItCannotTell(t *testing.T) {
	ms, vars := threeNodes()
	named := nodeReports(ms, vars, true)
	anonymous := nodeReports(ms, vars, false)
	sum := 0
	for _, r := range named {
		sum += r.Totals.Migrations
	}
	tests := []struct {
		name  string
		parts []Report
		want  int
		note  string
	}{
		{"unnamed", anonymous, sum, "not all of which say which node recorded them"},
		{"one unnamed", []Report{named[0], named[1], anonymous[2]}, sum, "not all of which"},
		{"a node missing", named[:2], named[0].Totals.Migrations + named[1].Totals.Migrations, "without those of every node seen"},
		{"a node twice", []Report{named[0], named[1], named[2], named[2]}, sum + named[2].Totals.Migrations, "may count twice"},
		{"one node", named[:1], named[0].Totals.Migrations, "without those of every node seen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Merge(tt.parts...)
			if r.Totals.Migrations != tt.want || r.Totals.Duplicates != 0 {
				t.Errorf("migrations %d, duplicates %d; want %d, 0", r.Totals.Migrations, r.Totals.Duplicates, tt.want)
			}
			if r.Totals.ReadMigrations+r.Totals.WriteMigrations != r.Totals.Migrations {
				t.Errorf("read/write split %d/%d", r.Totals.ReadMigrations, r.Totals.WriteMigrations)
			}
			if txt := r.Text(); !strings.Contains(txt, tt.note) {
				t.Errorf("text lacks %q:\n%s", tt.note, txt)
			}
		})
	}
}

// A merged report merges again like its parts.
func TestMergeOfMerged(t *testing.T) {
	ms, vars := threeNodes()
	parts := nodeReports(ms, vars, true)
	all := Merge(parts...)
	twice := Merge(Merge(parts[0], parts[1]), parts[2])
	if twice.Totals.Migrations != all.Totals.Migrations || twice.Totals.WriteMigrations != all.Totals.WriteMigrations ||
		twice.Totals.Duplicates != all.Totals.Duplicates || twice.Parts != 3 {
		t.Errorf("merged in two steps: %+v\nin one: %+v", twice.Totals, all.Totals)
	}
	if dump(twice.Findings) != dump(all.Findings) {
		t.Errorf("findings in two steps:\n%s\nin one:\n%s", dump(twice.Findings), dump(all.Findings))
	}
	if !slices.EqualFunc(twice.Vars, all.Vars, func(x, y VarStat) bool {
		return x.Name == y.Name && x.Migrations == y.Migrations && x.Class == y.Class && slices.Equal(x.Pages, y.Pages)
	}) {
		t.Errorf("vars in two steps %+v\nin one %+v", twice.Vars, all.Vars)
	}
}

func TestMergeFindingsOfOnePage(t *testing.T) {
	use := func(name string, off uint64, by ...uint16) VarUse {
		return VarUse{Name: name, Offset: off, Size: 8, WrittenBy: by, Writes: 10}
	}
	finding := func(c Class, fix string, vars ...VarUse) Report {
		return Report{Findings: []Finding{{Page: 7, Class: c, Vars: vars, Migrations: 20, WriteMigrations: 20,
			Cost: time.Millisecond, Nodes: []uint16{0, 1, 2}, Fix: fix, Summary: "a part's summary"}}}
	}
	tests := []struct {
		name    string
		parts   []Report
		class   Class
		fix     string
		summary string
		writers map[string][]uint16
	}{
		{
			name:    "true sharing seen by one node wins",
			parts:   []Report{finding(FalseSharing, "align b", use("a", 0, 0), use("b", 8, 1)), finding(TrueSharing, "lock", use("a", 0, 0, 2))},
			class:   TrueSharing,
			fix:     "lock",
			summary: "page 7: a (nodes 0 and 2) written by more than one node: 40 migrations, 2ms",
			writers: map[string][]uint16{"a": {0, 2}, "b": {1}},
		},
		{
			name: "the fix of the part that saw the most writers",
			parts: []Report{finding(FalseSharing, "align b", use("a", 0, 0), use("b", 8, 1)),
				finding(FalseSharing, "align b and c", use("a", 0, 0), use("b", 8, 1), use("c", 16, 2)), finding(Contended, "")},
			class:   FalseSharing,
			fix:     "align b and c",
			summary: "page 7: a (node 0), b (node 1) and c (node 2) share a page: 60 migrations, 3ms",
			writers: map[string][]uint16{"a": {0}, "b": {1}, "c": {2}},
		},
		{
			name:    "one part keeps its finding",
			parts:   []Report{finding(ReadMostly, "", use("t", 0, 0)), {}},
			class:   ReadMostly,
			summary: "a part's summary",
			writers: map[string][]uint16{"t": {0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Merge(tt.parts...)
			if len(r.Findings) != 1 {
				t.Fatalf("findings: %s", dump(r.Findings))
			}
			f := r.Findings[0]
			if f.Class != tt.class || f.Fix != tt.fix || f.Summary != tt.summary {
				t.Errorf("class %v, fix %q, summary %q; want %v, %q, %q", f.Class, f.Fix, f.Summary, tt.class, tt.fix, tt.summary)
			}
			got := map[string][]uint16{}
			for _, v := range f.Vars {
				got[v.Name] = v.WrittenBy
			}
			if !maps.EqualFunc(got, tt.writers, slices.Equal) {
				t.Errorf("writers %v, want %v", got, tt.writers)
			}
			if r.Totals.PagesByClass[tt.class.String()] != 1 {
				t.Errorf("pages by class %v", r.Totals.PagesByClass)
			}
		})
	}
}

func TestMergeNothing(t *testing.T) {
	r := Merge()
	if r.Totals.Migrations != 0 || r.Findings == nil || r.Vars == nil || r.Totals.Nodes == nil {
		t.Errorf("empty merge = %+v", r)
	}
	if txt := r.Text(); !strings.Contains(txt, "no false sharing found") {
		t.Errorf("text: %s", txt)
	}
	plots, err := r.Plots()
	if err != nil || len(plots) != 0 {
		t.Errorf("plots of nothing: %d, %v", len(plots), err)
	}
}

func TestHistoryBounds(t *testing.T) {
	a := New(ps)
	// Page 0 ping-pongs more than a history keeps; pages 1.. migrate a
	// little, more of them than a report keeps.
	for _, m := range pingPong(0, historyPerPage+100, func(uint16) []Range { return []Range{{0, 8}} }) {
		a.Record(m)
	}
	for p := uint32(1); p <= historyPages+10; p++ {
		for _, m := range pingPong(p, 4, func(uint16) []Range { return nil }) {
			a.Record(m)
		}
	}
	a.Record(Migration{Page: 999, From: 0, To: 1, Write: true}) // no wall time
	r := a.Report()
	if len(r.History) != historyPages {
		t.Fatalf("%d pages of history, want %d", len(r.History), historyPages)
	}
	h := r.History[0]
	if h.Page != 0 || len(h.At) != historyPerPage || len(h.To) != historyPerPage || !h.Partial {
		t.Errorf("page 0: page %d, %d transfers, partial %v", h.Page, len(h.At), h.Partial)
	}
	if !slices.IsSorted(h.At) || h.To[0] == h.From {
		t.Errorf("page 0 history out of order or not a change of owner: from %d, to %v", h.From, h.To[:4])
	}
	for _, h := range r.History[1:] {
		if h.Partial || len(h.At) != 4 || h.From != 0 || h.Page == 999 {
			t.Errorf("history %+v", h)
		}
	}
}

// The pictures of a merged report, and of one read back from JSON, show
// the ownership moving between the nodes.
func TestMergedPlots(t *testing.T) {
	disjoint := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	ms := pingPong(1, 80, disjoint)
	vars := []Var{{"counter_A", 4096, 8}, {"counter_B", 4104, 8}}
	merged := Merge(nodeReports(ms, vars, true)...)
	b, err := json.Marshal(merged)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]Report{"merged": merged, "from JSON": back} {
		plots, err := r.Plots()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var names []string
		for _, p := range plots {
			names = append(names, p.Name)
			img, err := png.Decode(bytes.NewReader(p.PNG))
			if err != nil {
				t.Fatalf("%s: %s is not a PNG: %v", name, p.Name, err)
			}
			if p.Name != "heatmap.png" {
				continue
			}
			if alt, n0, n1 := maxAlternations(img, nodeColor(0), nodeColor(1)); alt < 20 || n0 == 0 || n1 == 0 {
				t.Errorf("%s: heat map row alternates %d times between the nodes (%d and %d pixels)", name, alt, n0, n1)
			}
		}
		if !slices.Equal(names, []string{"heatmap.png", "variables.png"}) {
			t.Errorf("%s: plots %v", name, names)
		}
	}
	if len(back.History) != 1 || len(back.History[0].At) != len(ms) {
		t.Errorf("merged history of %d transfers: %+v", len(ms), back.History)
	}
}
