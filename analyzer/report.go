package analyzer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot/vg/vgimg"
)

// Report is everything the analyzer knows, in a form that encodes to JSON.
type Report struct {
	PageSize int       `json:"page_size"`
	Totals   Totals    `json:"totals"`
	Findings []Finding `json:"findings"` // as returned by Findings, data races included
	// Vars holds one entry per named variable, the most migrated first.
	Vars []VarStat `json:"vars"`
	// History is the recent ownership history of the most migrated pages
	// analysed in detail: what the heat map of a report (Report.Plots), a
	// merged one included, is drawn from.
	History []PageHistory `json:"history,omitempty"`
	// Recorders are the nodes whose records the report holds, when known:
	// the analyzer does not know which node feeds it, so whoever fetches a
	// daemon's report sets them. Merge needs them to count a transfer
	// that both of its ends recorded once.
	Recorders []Recorder `json:"recorders,omitempty"`
	// Parts is the number of reports Merge combined into this one; 0 for
	// the report of one analyzer.
	Parts int `json:"parts,omitempty"`
}

// Totals sums the recorded migrations.
type Totals struct {
	Migrations      int           `json:"migrations"`
	WriteMigrations int           `json:"write_migrations"`
	ReadMigrations  int           `json:"read_migrations"`
	Cost            time.Duration `json:"cost_ns"`
	// Pages is the number of pages that migrated at least once.
	Pages int `json:"pages"`
	// PagesByClass counts those pages by class name, except the Untracked
	// ones. A page that was not analysed in detail but migrated too little
	// to be anything else counts as quiet. DataRace findings are not a
	// page's class and are not counted here; DataRaces counts them.
	PagesByClass map[string]int `json:"pages_by_class"`
	// DataRaces counts the data races recorded (RecordRace), repeated ones
	// included. DroppedRaces counts those of them that are in no finding
	// because the analyzer already kept Limits.Races distinct races.
	DataRaces    int `json:"data_races,omitempty"`
	DroppedRaces int `json:"dropped_races,omitempty"`
	// Untracked counts the pages that migrated enough to be a finding but
	// were not analysed in detail, because the pages that were had
	// migrated more and the analyzer's Limits were reached, or that got
	// detail too recently to be judged: they have no class and no
	// finding. UntrackedMigrations sums their migrations, which are in
	// Migrations like any other.
	Untracked           int `json:"untracked,omitempty"`
	UntrackedMigrations int `json:"untracked_migrations,omitempty"`
	// LateDetail counts the findings whose page got detail only after it
	// had migrated for a while (it took the place of a page that migrated
	// less): their counts and cost are complete, their class, written
	// ranges and per-variable write counts rest on the later transfers.
	LateDetail int `json:"late_detail,omitempty"`
	// FalseSharingCost is the part of Cost spent on falsely shared pages:
	// what a better layout would save.
	FalseSharingCost time.Duration `json:"false_sharing_cost_ns"`
	// Nodes are the nodes seen in any migration.
	Nodes []uint16 `json:"nodes"`
	// UnknownWritten counts migrations recorded without written ranges.
	UnknownWritten int `json:"unknown_written"`
	// InvalidRanges counts written ranges that were empty or crossed the
	// end of the page.
	InvalidRanges int `json:"invalid_ranges"`
	// First and Last are the earliest and latest wall times recorded.
	First time.Time `json:"first,omitzero"`
	Last  time.Time `json:"last,omitzero"`
	// Duplicates, in a merged report, counts the records that Migrations
	// and WriteMigrations leave out because both ends of the transfer
	// recorded it (see Merge). The findings and variables include them.
	Duplicates int `json:"duplicates,omitempty"`
}

// VarStat is what happened to the pages of one named variable.
type VarStat struct {
	Name   string `json:"name"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
	// Pages lists the pages of the variable that migrated.
	Pages []uint32 `json:"pages"`
	// Migrations and WriteMigrations sum the transfers of those pages:
	// how often the variable was moved, whoever caused it.
	Migrations      int `json:"migrations"`
	WriteMigrations int `json:"write_migrations"`
	// Writes counts the transfers whose written ranges touched the
	// variable: how often it caused a page to move. Only the transfers of
	// pages analysed in detail, since they got detail, are counted.
	Writes int `json:"writes"`
	// Cost sums the waiting time of those pages' transfers (shared with
	// the other variables on the same pages).
	Cost time.Duration `json:"cost_ns"`
	// Class is the most severe class among the pages analysed in detail
	// on which the variable was written; a page it only resides on
	// contributes at most ReadMostly, since the variable is not what moves
	// that page. It is DataRace when a DataRace finding names the
	// variable.
	Class Class `json:"class"`
}

// Report returns the findings, per-variable migration counts and totals.
func (a *Analyzer) Report() Report {
	a.mu.Lock()
	defer a.mu.Unlock()
	views := a.analyzeAll()
	r := Report{
		PageSize: int(a.pageSize),
		Totals: Totals{
			Migrations:      a.migrations,
			WriteMigrations: a.writes,
			ReadMigrations:  a.migrations - a.writes,
			Cost:            a.cost,
			Pages:           a.npages,
			PagesByClass:    make(map[string]int),
			Nodes:           slices.Clone(a.nodes),
			UnknownWritten:  a.unknown,
			InvalidRanges:   a.invalid,
			DataRaces:       a.dataRaces,
			DroppedRaces:    a.droppedRaces,
		},
		Findings: []Finding{},
		Vars:     make([]VarStat, len(a.vars)),
	}
	t := &r.Totals
	byPage := make(map[uint32]*pageView, len(views))
	for i := range views {
		pv := &views[i]
		byPage[pv.page] = pv
		f := pv.f
		if f.Class == Quiet && pv.st.before > 0 && !pv.st.cnt.quiet() {
			// It got detail late and has not shown enough since.
			t.Untracked++
			t.UntrackedMigrations += int(pv.st.cnt.migrations)
			continue
		}
		t.PagesByClass[f.Class.String()]++
		if f.Class == FalseSharing {
			t.FalseSharingCost += f.Cost
		}
		if f.Class != Quiet {
			r.Findings = append(r.Findings, f)
			if pv.st.before > 0 {
				t.LateDetail++
			}
		}
	}
	races, raced := a.raceFindings()
	r.Findings = append(r.Findings, races...)
	a.table.each(0, 1<<32, func(p uint32, c *pageCount) {
		switch {
		case byPage[p] != nil:
		case c.quiet():
			t.PagesByClass[Quiet.String()]++
		default:
			t.Untracked++
			t.UntrackedMigrations += int(c.migrations)
		}
	})
	for vi, v := range a.vars {
		vs := VarStat{Name: v.Name, Offset: v.Offset, Size: v.Size, Pages: []uint32{}}
		lo, hi := v.Offset/a.pageSize, (v.Offset+v.Size-1)/a.pageSize+1
		a.table.each(lo, hi, func(p uint32, c *pageCount) {
			vs.Pages = append(vs.Pages, p)
			vs.Migrations += int(c.migrations)
			vs.WriteMigrations += int(c.writes)
			vs.Cost += c.cost
			pv := byPage[p]
			if pv == nil {
				return // quiet, or untracked: no class and no write counts
			}
			vs.Writes += pv.perVar[vi]
			if pv.perVar[vi] > 0 {
				vs.Class = max(vs.Class, pv.f.Class)
			} else {
				vs.Class = max(vs.Class, min(pv.f.Class, ReadMostly))
			}
		})
		if raced[vi] {
			vs.Class = DataRace
		}
		r.Vars[vi] = vs
	}
	if a.first != 0 {
		t.First = time.Unix(0, a.first)
		t.Last = time.Unix(0, a.last)
	}
	if t.Nodes == nil {
		t.Nodes = []uint16{}
	}
	r.History = a.history()
	sortFindings(r.Findings)
	sort.SliceStable(r.Vars, func(i, j int) bool {
		if r.Vars[i].Migrations != r.Vars[j].Migrations {
			return r.Vars[i].Migrations > r.Vars[j].Migrations
		}
		return r.Vars[i].Offset < r.Vars[j].Offset
	})
	return r
}

// Text is the report as a person reads it: totals, then every finding.
func (r Report) Text() string {
	var b strings.Builder
	t := r.Totals
	fmt.Fprintf(&b, "layout analyzer: %d page migrations (%d for writes, %d read copies) on %d pages, %s waiting in faults\n",
		t.Migrations, t.WriteMigrations, t.ReadMigrations, t.Pages, fmtDur(t.Cost))
	if r.Parts > 0 {
		b.WriteString(r.mergedNote())
	}
	if t.DataRaces > 0 {
		b.WriteString(r.raceNote())
	}
	if t.Untracked > 0 {
		fmt.Fprintf(&b, "%s pages with %s migrations were not analysed: the analyzer keeps the details of the pages that migrated most, up to its limits\n",
			commas(t.Untracked), commas(t.UntrackedMigrations))
	}
	if len(r.Findings) == 0 {
		b.WriteString("no false sharing found: no page ping-pongs between writers of different variables\n")
		return b.String()
	}
	for i, f := range r.Findings {
		fmt.Fprintf(&b, "\nfinding %d: %s", i+1, f.String())
		if !strings.HasSuffix(f.String(), "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// Plot is a picture of the analyzer's findings, encoded as PNG.
type Plot struct {
	Name string `json:"name"` // a file name: heatmap.png, variables.png
	PNG  []byte `json:"png"`
}

// Plots draws the heat map (heatmap.png) and, when variables are known,
// the migrations per variable (variables.png), in memory: a daemon hands
// them to the client that asked, which writes them where its user can.
func (a *Analyzer) Plots() ([]Plot, error) {
	var out []Plot
	keep := func(name string) func(*vgimg.Canvas) error {
		return func(cnv *vgimg.Canvas) error {
			b, err := pngBytes(cnv)
			if err == nil {
				out = append(out, Plot{Name: name, PNG: b})
			}
			return err
		}
	}
	if err := a.drawHeatmap(1200, 600, keep("heatmap.png")); err != nil {
		return out, err
	}
	if err := a.drawVarBars(keep("variables.png")); err != nil && !errors.Is(err, ErrNoVars) {
		return out, err
	}
	return out, nil
}

// WritePlots writes the heat map (heatmap.png) and the migrations per
// variable (variables.png) into dir, creating it if needed, and returns the
// paths written.
func (a *Analyzer) WritePlots(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	heat := filepath.Join(dir, "heatmap.png")
	if err := a.WriteHeatmap(heat, 1200, 600); err != nil {
		return nil, err
	}
	bars := filepath.Join(dir, "variables.png")
	if err := a.WriteVarBars(bars); err != nil {
		if errors.Is(err, ErrNoVars) {
			return []string{heat}, nil
		}
		return []string{heat}, err
	}
	return []string{heat, bars}, nil
}
