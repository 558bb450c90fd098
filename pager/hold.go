package pager

import (
	"bytes"
	"time"

	"github.com/dsmrt/dsm/coherence"
)

// The minimum hold (Mirage's time window): when another node already waits
// for a page that this node just made accessible for a local fault, the
// engine keeps the page here until the program had its chance to make the
// access it faulted on, and then hands it on at once. Without a hold the page
// could leave before the woken thread ran (livelock); with a long one a
// contended page sits idle.
//
// The hold ends when the page's content differs from what was installed
// (the program wrote: its access is done) or after MinHold (a read leaves no
// trace), whichever comes first, and at the latest after MaxHold. The event
// loop keeps the holds: it checks a held page that may be written every
// holdPoll (one pread and compare) and wakes for the next check or expiry,
// so a hold costs no goroutine and a hold that passed long ago ends inline,
// in the batch that asked for it.

// holdPoll is how often the loop looks whether a held writable page was
// written: a fraction of the default MinHold, so that a written page leaves
// soon after its write.
const holdPoll = 10 * time.Microsecond

// holdState is what a hold needs to know about its page.
type holdState struct {
	at       time.Time // when the page was made accessible
	writable bool      // the program may write it: the hold ends at its write
}

// heldPage is a hold the engine asked the daemon to end (ActHold).
type heldPage struct {
	page coherence.PageID
	holdState
}

// noteAccessible records that page p was made accessible for a local fault
// now (ActInstall, ActUnprotect). A writable page's content at that moment
// is its twin (g.twins), against which the hold compares it.
//
// Only the last MaxHold matters: a hold asked for a page made accessible
// longer ago than that ends at once. So the records are forgotten once they
// are that old (forgetHolds), and the map holds the pages of the last
// fraction of a millisecond, not every page ever installed.
func (g *Pager) noteAccessible(p coherence.PageID, writable bool) {
	now := g.now()
	g.holds[p] = holdState{at: now, writable: writable && g.twins.has(p)}
	g.holdAges = append(g.holdAges, heldPage{page: p, holdState: holdState{at: now}})
}

// forgetHolds forgets the records of pages made accessible more than
// MaxHold ago.
func (g *Pager) forgetHolds(now time.Time) {
	old := now.Add(-g.cfg.MaxHold)
	i := 0
	for ; i < len(g.holdAges) && g.holdAges[i].at.Before(old); i++ {
		r := g.holdAges[i]
		if h, ok := g.holds[r.page]; ok && h.at.Equal(r.at) {
			delete(g.holds, r.page)
		}
	}
	if i > 0 {
		g.holdAges = append(g.holdAges[:0], g.holdAges[i:]...)
	}
}

// startHold serves ActHold for page p: the loop ends the hold once it is
// over (ServeHolds).
func (g *Pager) startHold(p coherence.PageID) {
	h, ok := g.holds[p]
	if !ok {
		// Made accessible longer than MaxHold ago (forgotten), or not
		// for a local fault: nothing to wait for.
		h = holdState{at: time.Time{}}
	}
	delete(g.holds, p)
	g.c.Holds++
	g.holding = append(g.holding, heldPage{page: p, holdState: h})
	g.holdNext = time.Time{} // due: the loop looks at it before it waits
}

// ServeHolds ends the holds that are over and returns when the next one
// must be looked at again (zero when none is held). The daemon calls it
// after every batch of inputs, and again by that time.
func (g *Pager) ServeHolds(now time.Time) time.Time {
	if len(g.holding) == 0 {
		g.holdNext = time.Time{}
		return g.holdNext
	}
	minHold, maxHold := g.cfg.MinHold, g.cfg.MaxHold
	var next time.Time
	ended := g.holdEnds[:0]
	keep := g.holding[:0]
	for _, h := range g.holding {
		since := now.Sub(h.at)
		over := since >= maxHold || (!h.writable && since >= minHold)
		if !over && h.writable {
			// Without its twin (the store evicted it for newer ones) a
			// write cannot be seen: the hold lasts MinHold, as a read's.
			w, known := g.written(h.page)
			over = w || !known && since >= minHold
		}
		if over {
			ended = append(ended, h.page)
			continue
		}
		keep = append(keep, h)
		due := h.at.Add(minHold)
		if h.writable {
			due = h.at.Add(maxHold)
			if poll := now.Add(holdPoll); poll.Before(due) {
				due = poll
			}
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	clear(g.holding[len(keep):])
	g.holding = keep
	g.holdNext = next
	for _, p := range ended {
		g.eng.EndHold(p)
		g.Flush() // may start new holds: they are looked at next time round
	}
	g.holdEnds = ended[:0]
	if len(g.holding) > 0 && g.holdNext.IsZero() {
		g.holdNext = now // a hold started by the flushes above
	}
	return g.holdNext
}

// written reports whether page p differs from its twin: the program wrote
// it since it was made accessible. known is false when the twin is gone
// (evicted by newer ones, or the page dropped). pread reads a hole as
// zeros, so this is safe whatever the page's state.
func (g *Pager) written(p coherence.PageID) (written, known bool) {
	twin, ok := g.twins.get(p)
	if !ok {
		return false, false
	}
	if err := g.cfg.Store.ReadPage(p, g.buf); err != nil {
		return true, true
	}
	return !bytes.Equal(g.buf, twin), true
}

// NextHold returns when ServeHolds must be called again: zero when no hold
// is kept.
func (g *Pager) NextHold() time.Time {
	if len(g.holding) == 0 {
		return time.Time{}
	}
	return g.holdNext
}
