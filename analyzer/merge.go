package analyzer

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"gonum.org/v1/plot/vg/vgimg"
)

// Bounds of Report.History: enough pages and transfers for a heat map, few
// enough that a report stays small (at most about 200 KB of JSON) when a
// daemon sends it over its control socket.
const (
	historyPages   = 64
	historyPerPage = 256
)

// PageHistory is the recent ownership history of one page: the ownership
// (write) transfers kept of it, oldest first. Read copies leave the owner in
// place and are left out.
type PageHistory struct {
	Page uint32 `json:"page"`
	// Migrations is the page's count of transfers, which ranks the pages
	// for the heat map.
	Migrations int `json:"migrations"`
	// From is the node that owned the page before the first transfer kept,
	// unless Partial.
	From uint16 `json:"from"`
	// Partial says that older transfers of the page were not kept: who
	// owned it before the first one here is unknown.
	Partial bool `json:"partial,omitempty"`
	// At[i] is when the i-th transfer happened, in microseconds since the
	// report's Totals.First, and To[i] the node that got the page.
	At []int64  `json:"at"`
	To []uint16 `json:"to"`
}

// Recorder is a node whose records a report holds.
type Recorder struct {
	Node uint16 `json:"node"`
	// Sent counts the migrations the node recorded as the node that gave
	// the page away (a daemon's status calls them migrations out); the
	// node that received the page recorded them too.
	Sent int `json:"sent"`
}

// history returns the ownership history of the most migrated pages analysed
// in detail, for Report. Pages with a transfer without wall time are left
// out: their transfers cannot be placed beside other nodes'. The caller
// holds a.mu.
func (a *Analyzer) history() []PageHistory {
	if a.first == 0 {
		return nil
	}
	ids := make([]uint32, 0, len(a.pages))
	for p := range a.pages {
		ids = append(ids, p)
	}
	slices.SortFunc(ids, func(x, y uint32) int {
		if c := cmp.Compare(a.pages[y].cnt.migrations, a.pages[x].cnt.migrations); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	var out []PageHistory
	for _, p := range ids {
		if len(out) == historyPages {
			break
		}
		st := a.pages[p]
		evs := st.ordered()
		if len(evs) == 0 || slices.ContainsFunc(evs, func(e event) bool { return e.wall == 0 }) {
			continue
		}
		h := PageHistory{Page: p, Migrations: int(st.cnt.migrations), From: evs[0].from, Partial: st.wrapped || st.before > 0}
		owner, at := evs[0].from, int64(0)
		for _, e := range evs {
			if !e.write || e.to == owner {
				continue
			}
			// Keep the causal order even if wall clocks disagree, as the
			// heat map of an analyzer does.
			at = max(at, (e.wall-a.first)/int64(time.Microsecond))
			h.At = append(h.At, at)
			h.To = append(h.To, e.to)
			owner = e.to
		}
		if cut := len(h.At) - historyPerPage; cut > 0 {
			// The owner before the first transfer kept is known, but not
			// since when: the row stays blank before it.
			h.From, h.Partial = h.To[cut-1], true
			h.At, h.To = h.At[cut:], h.To[cut:]
		}
		out = append(out, h)
	}
	return out
}

// Merge combines the reports of the nodes of one run into one report over
// the whole run. Each node's report covers only the transfers it took part
// in, so a page that ping-pongs between nodes 1 and 2 is not in node 0's;
// the merged report has every finding of every node.
//
// A node daemon records a transfer when it installs a page another node
// sent (with the time the faulting thread waited), and also when it gives
// away a page it had written (with the bytes it wrote, which the receiver
// records too): a write transfer is usually in the reports of both of its
// ends. Merge counts each transfer once in Totals.Migrations and
// Totals.WriteMigrations when it can tell: when every part names the node
// that recorded it (Report.Recorders, with the number of records it made as
// the giving end) and the parts cover every node seen, the records of the
// giving ends are duplicates, and Totals.Duplicates says how many were left
// out. Otherwise the totals sum the records, and a transfer may count twice.
// Either way the counts of findings and variables are sums of the nodes'
// records: a report holds them per page, not per transfer, so they cannot be
// split. Waiting times (Cost) are recorded by the receiving end only and are
// exact.
//
// Findings about the same page are combined: their nodes, variables and
// writers are joined and their counts summed. The class is the most severe
// of the parts', except that true sharing seen by any node wins over false
// sharing seen by another (some node saw two writers write the same bytes);
// the fix is that of the part that saw the most writers. A page that one
// node found quiet adds nothing to another node's finding about it, and a
// page every node saw migrate too little to judge stays quiet, however
// often it migrated in all. Pages
// counts the pages that migrated as well as the parts tell: at least the
// most any node saw. Untracked is the most any node had.
//
// DataRace findings are kept as they are: only the home of a page records
// its races, so the parts' races are distinct, and a race finding that two
// parts have (the same page, nodes and bytes) is kept once, with the larger
// count. Totals.DataRaces and DroppedRaces are the parts' sums.
//
// Merge takes the page size of the first part that has one; the reports of
// one run agree on it.
func Merge(parts ...Report) Report {
	r := Report{
		Findings: []Finding{},
		Vars:     []VarStat{},
		Totals:   Totals{PagesByClass: map[string]int{}, Nodes: []uint16{}},
	}
	t := &r.Totals
	complete := true // every part says which nodes recorded it
	var (
		sent        int
		writeRecs   int
		lateDetail  int
		races       []Finding
		findings    = map[uint32][]Finding{}
		vars        = map[string]*VarStat{}
		pages       = map[uint32]bool{}
		histories   = map[uint32][]PageHistory{}
		historyBase = map[uint32][]time.Time{}
	)
	for _, p := range parts {
		if r.PageSize == 0 {
			r.PageSize = p.PageSize
		}
		n := max(p.Parts, 1)
		r.Parts += n
		if len(p.Recorders) != n {
			complete = false
		}
		r.Recorders = append(r.Recorders, p.Recorders...)
		for _, rc := range p.Recorders {
			sent += rc.Sent
		}
		pt := p.Totals
		// A merged part left its duplicates out: put them back, to count
		// them once over all parts.
		t.Migrations += pt.Migrations + pt.Duplicates
		writeRecs += pt.WriteMigrations + pt.Duplicates
		t.Cost += pt.Cost
		t.Pages = max(t.Pages, pt.Pages)
		t.Untracked = max(t.Untracked, pt.Untracked)
		t.UntrackedMigrations += pt.UntrackedMigrations
		lateDetail += pt.LateDetail
		t.UnknownWritten += pt.UnknownWritten
		t.InvalidRanges += pt.InvalidRanges
		for _, nd := range pt.Nodes {
			t.Nodes = addNode(t.Nodes, nd)
		}
		if !pt.First.IsZero() && (t.First.IsZero() || pt.First.Before(t.First)) {
			t.First = pt.First
		}
		if pt.Last.After(t.Last) {
			t.Last = pt.Last
		}
		t.DataRaces += pt.DataRaces
		t.DroppedRaces += pt.DroppedRaces
		for _, f := range p.Findings {
			if f.Race != nil {
				// Not a verdict on the page: it joins no page's finding
				// and says nothing about whether the page migrated.
				races = append(races, f)
				continue
			}
			findings[f.Page] = append(findings[f.Page], f)
			pages[f.Page] = true
		}
		for _, v := range p.Vars {
			for _, pg := range v.Pages {
				pages[pg] = true
			}
			m := vars[v.Name]
			if m == nil {
				// The first part's place of the variable: the programs of
				// one run allocate the same way on every node.
				m = &VarStat{Name: v.Name, Offset: v.Offset, Size: v.Size, Pages: []uint32{}}
				vars[v.Name] = m
			}
			m.Pages = append(m.Pages, v.Pages...)
			m.Migrations += v.Migrations
			m.WriteMigrations += v.WriteMigrations
			m.Writes += v.Writes
			m.Cost += v.Cost
		}
		for _, h := range p.History {
			histories[h.Page] = append(histories[h.Page], h)
			historyBase[h.Page] = append(historyBase[h.Page], pt.First)
			pages[h.Page] = true
		}
	}
	slices.SortFunc(r.Recorders, func(x, y Recorder) int { return cmp.Compare(x.Node, y.Node) })
	if complete && len(parts) > 0 && covers(r.Recorders, t.Nodes) {
		// Every record of a giving end has its receiver among the parts.
		// A receiver that refused a page as stale recorded nothing, hence
		// the bound.
		t.Duplicates = min(sent, writeRecs)
	}
	t.Migrations -= t.Duplicates
	t.WriteMigrations = writeRecs - t.Duplicates
	t.ReadMigrations = t.Migrations - t.WriteMigrations
	t.Pages = max(t.Pages, len(pages))

	byPage := make(map[uint32]Finding, len(findings))
	for pg, fs := range findings {
		f := mergeFindings(fs)
		byPage[pg] = f
		r.Findings = append(r.Findings, f)
		t.PagesByClass[f.Class.String()]++
		if f.Class == FalseSharing {
			t.FalseSharingCost += f.Cost
		}
	}
	if q := t.Pages - len(r.Findings) - t.Untracked; q > 0 {
		t.PagesByClass[Quiet.String()] = q
	}
	t.LateDetail = min(lateDetail, len(r.Findings))
	races = mergeRaces(races)
	raced := map[string]bool{}
	for _, f := range races {
		for _, v := range f.Vars {
			raced[v.Name] = true
		}
	}
	r.Findings = append(r.Findings, races...)
	sortFindings(r.Findings)

	for _, v := range vars {
		slices.Sort(v.Pages)
		v.Pages = slices.Compact(v.Pages)
		// The class as Report gives it, from the merged findings.
		for _, pg := range v.Pages {
			f, ok := byPage[pg]
			if !ok {
				continue
			}
			if slices.ContainsFunc(f.Vars, func(u VarUse) bool { return u.Name == v.Name && len(u.WrittenBy) > 0 }) {
				v.Class = max(v.Class, f.Class)
			} else {
				v.Class = max(v.Class, min(f.Class, ReadMostly))
			}
		}
		if raced[v.Name] {
			v.Class = DataRace
		}
		r.Vars = append(r.Vars, *v)
	}
	sort.Slice(r.Vars, func(i, j int) bool {
		x, y := r.Vars[i], r.Vars[j]
		if x.Migrations != y.Migrations {
			return x.Migrations > y.Migrations
		}
		if x.Offset != y.Offset {
			return x.Offset < y.Offset
		}
		return x.Name < y.Name
	})

	for pg, hs := range histories {
		r.History = append(r.History, mergeHistories(hs, historyBase[pg], t.First))
	}
	slices.SortFunc(r.History, func(x, y PageHistory) int {
		if c := cmp.Compare(y.Migrations, x.Migrations); c != 0 {
			return c
		}
		return cmp.Compare(x.Page, y.Page)
	})
	if len(r.History) > historyPages {
		r.History = r.History[:historyPages]
	}
	return r
}

// covers reports whether recs names every node in nodes, each once.
func covers(recs []Recorder, nodes []uint16) bool {
	seen := make(map[uint16]bool, len(recs))
	for _, rc := range recs {
		if seen[rc.Node] {
			return false // one node's report twice: its records would count twice
		}
		seen[rc.Node] = true
	}
	for _, n := range nodes {
		if !seen[n] {
			return false
		}
	}
	return true
}

// classRank orders the classes for merging: true sharing that one node saw
// outranks false sharing that another saw, since the same bytes were
// written by two nodes whatever the other node could see.
func classRank(c Class) int {
	switch c {
	case TrueSharing:
		return int(FalseSharing) + 1
	case DataRace:
		return int(FalseSharing) + 2
	}
	return int(c)
}

// mergeFindings combines the findings of several nodes about one page.
func mergeFindings(fs []Finding) Finding {
	if len(fs) == 1 {
		return fs[0]
	}
	writers := func(f Finding) int {
		var ns []uint16
		for _, v := range f.Vars {
			for _, n := range v.WrittenBy {
				ns = addNode(ns, n)
			}
		}
		return len(ns)
	}
	// The part whose class wins, and among those the one that saw the most
	// writers, then the most migrations: its fix stands for the page.
	best := fs[0]
	for _, f := range fs[1:] {
		switch {
		case classRank(f.Class) != classRank(best.Class):
			if classRank(f.Class) > classRank(best.Class) {
				best = f
			}
		case writers(f) != writers(best):
			if writers(f) > writers(best) {
				best = f
			}
		case f.Migrations > best.Migrations:
			best = f
		}
	}
	m := Finding{Page: best.Page, Class: best.Class, Fix: best.Fix, Nodes: []uint16{}}
	uses := map[string]*VarUse{}
	for _, f := range fs {
		m.Migrations += f.Migrations
		m.WriteMigrations += f.WriteMigrations
		m.Cost += f.Cost
		for _, n := range f.Nodes {
			m.Nodes = addNode(m.Nodes, n)
		}
		if f.Class == m.Class {
			for _, l := range f.Locks {
				if !slices.Contains(m.Locks, l) {
					m.Locks = append(m.Locks, l)
				}
			}
		}
		for _, v := range f.Vars {
			u := uses[v.Name]
			if u == nil {
				u = &VarUse{Name: v.Name, Offset: v.Offset, Size: v.Size}
				uses[v.Name] = u
			}
			for _, n := range v.WrittenBy {
				u.WrittenBy = addNode(u.WrittenBy, n)
			}
			u.Writes += v.Writes
		}
	}
	m.Vars = make([]VarUse, 0, len(uses))
	for _, u := range uses {
		m.Vars = append(m.Vars, *u)
	}
	slices.SortFunc(m.Vars, func(x, y VarUse) int {
		if c := cmp.Compare(x.Offset, y.Offset); c != 0 {
			return c
		}
		return cmp.Compare(x.Name, y.Name)
	})
	m.Summary = mergedSummary(m)
	return m
}

// mergedSummary is the one-line description of a merged finding: the parts'
// summaries carry their own counts and writers.
func mergedSummary(f Finding) string {
	stats := commas(f.Migrations) + " migrations"
	if f.Cost > 0 {
		stats += ", " + fmtDur(f.Cost)
	}
	list := varList
	switch f.Class {
	case FalseSharing:
		return fmt.Sprintf("page %d: %s share a page: %s", f.Page, list(f.Vars), stats)
	case TrueSharing, LockProtected:
		shared := slices.DeleteFunc(slices.Clone(f.Vars), func(v VarUse) bool { return len(v.WrittenBy) < 2 })
		if len(shared) == 0 {
			shared = f.Vars
		}
		if f.Class == LockProtected {
			return fmt.Sprintf("page %d: %s written by more than one node under %s (lock-protected sharing): %s", f.Page, list(shared), lockWord(f.Locks), stats)
		}
		return fmt.Sprintf("page %d: %s written by more than one node: %s", f.Page, list(shared), stats)
	case Contended:
		return fmt.Sprintf("page %d: ownership moved %s times among %s for writes, but the written bytes do not show two writers: %s",
			f.Page, commas(f.WriteMigrations), nodesWord(f.Nodes), stats)
	case ReadMostly:
		return fmt.Sprintf("page %d: read-mostly (%s read copies, %s ownership transfers): nothing to change",
			f.Page, commas(f.Migrations-f.WriteMigrations), commas(f.WriteMigrations))
	}
	return fmt.Sprintf("page %d: quiet: %s", f.Page, stats)
}

// mergeHistories joins the histories several nodes kept of one page. bases
// are the parts' Totals.First, base the merged one. A transfer both ends
// recorded appears twice, at about the same time: the second changes no
// owner and is dropped.
func mergeHistories(hs []PageHistory, bases []time.Time, base time.Time) PageHistory {
	type change struct {
		at int64
		to uint16
	}
	var all []change
	// The owner before the merged history is the one before the earliest
	// transfer any part kept.
	m := PageHistory{Page: hs[0].Page, From: hs[0].From}
	first := int64(math.MaxInt64)
	for i, h := range hs {
		m.Migrations += h.Migrations
		m.Partial = m.Partial || h.Partial
		shift := bases[i].Sub(base).Microseconds()
		for k := range h.At {
			all = append(all, change{h.At[k] + shift, h.To[k]})
		}
		if len(h.At) > 0 && h.At[0]+shift < first {
			first, m.From = h.At[0]+shift, h.From
		}
	}
	slices.SortStableFunc(all, func(x, y change) int { return cmp.Compare(x.at, y.at) })
	owner := m.From
	for _, c := range all {
		if c.to == owner {
			continue
		}
		m.At = append(m.At, c.at)
		m.To = append(m.To, c.to)
		owner = c.to
	}
	return m
}

// mergedNote says what the counts of a merged report mean.
func (r Report) mergedNote() string {
	t := r.Totals
	var nodes []uint16
	for _, rc := range r.Recorders {
		nodes = addNode(nodes, rc.Node)
	}
	switch {
	case len(r.Recorders) != r.Parts:
		return fmt.Sprintf("merged from %d reports, not all of which say which node recorded them: a transfer recorded by both of its ends may count twice\n", r.Parts)
	case !covers(r.Recorders, t.Nodes):
		return fmt.Sprintf("merged from the reports of %s, without those of every node seen: a transfer recorded by both of its ends may count twice\n", nodesWord(nodes))
	case t.Duplicates > 0:
		return fmt.Sprintf("merged from the reports of %s: each transfer counts once above; the findings and variables sum the nodes' records, in which %s transfers count twice (the node that gave the page and the node that got it both recorded them)\n",
			nodesWord(nodes), commas(t.Duplicates))
	}
	return fmt.Sprintf("merged from the reports of %s\n", nodesWord(nodes))
}

// Plots draws the pictures of a report, merged or not, as Analyzer.Plots
// does: the heat map of page ownership (heatmap.png) from the report's
// History, and the migrations per variable (variables.png) from its Vars.
// A picture without data is left out: a report without migrations has
// none.
func (r Report) Plots() ([]Plot, error) {
	var out []Plot
	keep := func(name string, cnv *vgimg.Canvas) error {
		b, err := pngBytes(cnv)
		if err == nil {
			out = append(out, Plot{Name: name, PNG: b})
		}
		return err
	}
	cnv, err := r.drawHeatmap(1200, 600)
	if err == nil {
		err = keep("heatmap.png", cnv)
	}
	if err != nil && !errors.Is(err, ErrNoMigrations) {
		return out, err
	}
	cnv, err = drawVars(r.Vars)
	if err == nil {
		err = keep("variables.png", cnv)
	}
	if err != nil && !errors.Is(err, ErrNoVars) {
		return out, err
	}
	return out, nil
}

// drawHeatmap draws the heat map of the report's History the way
// Analyzer.WriteHeatmap draws an analyzer's.
func (r Report) drawHeatmap(width, height int) (*vgimg.Canvas, error) {
	if width < MinImageWidth || height < MinImageHeight || width > MaxImageSide || height > MaxImageSide {
		return nil, fmt.Errorf("%w: %d×%d pixels; ask for %d to %d pixels wide and %d to %d high",
			ErrBadSize, width, height, MinImageWidth, MaxImageSide, MinImageHeight, MaxImageSide)
	}
	hs := slices.Clone(r.History)
	if len(hs) == 0 {
		return nil, fmt.Errorf("%w: the report has no ownership history", ErrNoMigrations)
	}
	// Rows get at least two pixels; about 80 pixels go to title and axes.
	if maxRows := max(1, (height-80)/2); len(hs) > maxRows {
		slices.SortStableFunc(hs, func(x, y PageHistory) int { return cmp.Compare(y.Migrations, x.Migrations) })
		hs = hs[:maxRows]
	}
	slices.SortFunc(hs, func(x, y PageHistory) int { return cmp.Compare(x.Page, y.Page) })

	hm := &heatmap{total: max(r.Totals.Pages, len(hs))}
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, h := range hs {
		hm.pages = append(hm.pages, h.Page)
		hm.nodes = addNode(hm.nodes, h.From)
		for i, at := range h.At {
			lo, hi = min(lo, at), max(hi, at)
			hm.nodes = addNode(hm.nodes, h.To[i])
		}
	}
	if lo > hi { // no page changed owner
		lo, hi = 0, 0
	}
	span := time.Duration(hi-lo) * time.Microsecond
	unit, name := time.Second, "s"
	switch {
	case span < 10*time.Millisecond:
		unit, name = time.Microsecond, "µs"
	case span < 10*time.Second:
		unit, name = time.Millisecond, "ms"
	}
	scale := float64(unit / time.Microsecond)
	hm.xmin, hm.xmax = 0, max(float64(hi-lo)/scale, 1)
	hm.xlabel = "time since the first migration shown (" + name + ")"
	index := make(map[uint16]int, len(hm.nodes))
	for i, n := range hm.nodes {
		index[n] = i
	}
	for _, h := range hs {
		runs := []ownRun{{start: hm.xmin, owner: index[h.From]}}
		if h.Partial {
			runs[0].owner = -1
			hm.partial = true
		}
		for i, at := range h.At {
			x, o := float64(at-lo)/scale, index[h.To[i]]
			last := &runs[len(runs)-1]
			switch {
			case last.owner == o:
			case last.start == x:
				last.owner = o
			default:
				runs = append(runs, ownRun{start: x, owner: o})
			}
		}
		hm.runs = append(hm.runs, runs)
	}

	title := "Page ownership over time"
	if len(hm.pages) < hm.total {
		title += fmt.Sprintf(" (the %d most migrated of %d pages)", len(hm.pages), hm.total)
	}
	if hm.partial {
		title += "; blank before the oldest transfer kept"
	}
	return drawOwnership(hm, title, width, height), nil
}
