package pager

import "github.com/dsmrt/dsm/coherence"

// Read-ahead: a program that reads a remote region in order pays a round
// trip per page. When a program's read faults come in ascending consecutive
// pages, the daemon asks for the next ReadAhead pages at once, as reads, so
// that their round trips overlap and the program finds them present. It is
// the daemon that guesses, not the protocol that changes: a prefetched page
// is an ordinary read copy (the engine is asked for it exactly as for a
// fault), and a wrong guess costs a read copy that the next writer
// invalidates.

// minStreak is how many consecutive pages a program must read-fault on
// before its daemon reads ahead. Two was too few: the stencil's halo rows
// are two pages, and reading seven pages past them made every iteration
// slower (go run ./examples/stencil, 2 nodes: 2.3-2.8 ms per iteration
// without read-ahead, 3.5-6.3 with it).
const minStreak = 3

// readAheadState is what the daemon remembers of a program's reads.
type readAheadState struct {
	last   coherence.PageID // the last page it read-faulted on
	streak int              // consecutive pages in a row, ending at last
	ahead  coherence.PageID // pages below this were already asked for
}

// readAhead notes a read fault of program pr on page p and, on a sequential
// run, asks the engine for the next pages.
func (g *Pager) readAhead(pr *Prog, p coherence.PageID) {
	depth := g.cfg.ReadAhead
	if depth <= 0 {
		return
	}
	ra := &pr.ra
	switch {
	case p == ra.last+1, p > ra.last && p <= ra.ahead:
		// The next page, or one past pages read ahead that were found
		// present: the run goes on.
		ra.streak++
	case p != ra.last:
		ra.streak, ra.ahead = 1, 0
	}
	ra.last = p
	if ra.streak < minStreak {
		return
	}
	// The window grows with the run, as the kernel's read-ahead does: a
	// short run of consecutive pages (a halo row of a stencil, two pages
	// at 1024 float64) is no scan, and pages fetched past it are taken
	// back by their writer at its next write.
	depth = min(depth, ra.streak)
	from := max(p+1, ra.ahead)
	to := min(p+1+coherence.PageID(depth), coherence.PageID(g.pages))
	for q := from; q < to; q++ {
		if g.phys[q] != coherence.Invalid || g.eng.State(q) != coherence.Invalid || len(g.waiting[q]) > 0 {
			continue
		}
		if err := g.eng.Fault(q, coherence.Read); err != nil {
			g.log.Warn("read-ahead refused by the engine", "page", q, "err", err)
			return
		}
		g.c.ReadAheads++
	}
	ra.ahead = max(ra.ahead, to)
}
