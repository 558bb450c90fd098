package node

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
// is its twin (n.twins), against which the hold compares it. Called with
// n.mu held.
//
// Only the last MaxHold matters: a hold asked for a page made accessible
// longer ago than that ends at once. So the records are forgotten once they
// are that old (forgetHolds), and the map holds the pages of the last
// fraction of a millisecond, not every page ever installed.
func (n *Node) noteAccessible(p coherence.PageID, writable bool) {
	now := time.Now()
	n.holds[p] = holdState{at: now, writable: writable && n.twins.has(p)}
	n.holdAges = append(n.holdAges, heldPage{page: p, holdState: holdState{at: now}})
}

// forgetHolds forgets the records of pages made accessible more than
// MaxHold ago. Called by the loop with n.mu held.
func (n *Node) forgetHolds(now time.Time) {
	old := now.Add(-time.Duration(n.cfg.MaxHold))
	i := 0
	for ; i < len(n.holdAges) && n.holdAges[i].at.Before(old); i++ {
		r := n.holdAges[i]
		if h, ok := n.holds[r.page]; ok && h.at.Equal(r.at) {
			delete(n.holds, r.page)
		}
	}
	if i > 0 {
		n.holdAges = append(n.holdAges[:0], n.holdAges[i:]...)
	}
}

// startHold serves ActHold for page p: the loop ends the hold once it is
// over (serveHolds). Called with n.mu held.
func (n *Node) startHold(p coherence.PageID) {
	h, ok := n.holds[p]
	if !ok {
		// Made accessible longer than MaxHold ago (forgotten), or not
		// for a local fault: nothing to wait for.
		h = holdState{at: time.Time{}}
	}
	delete(n.holds, p)
	n.stats.holds++
	n.holding = append(n.holding, heldPage{page: p, holdState: h})
	n.holdNext = time.Time{} // due: the loop looks at it before it waits
}

// serveHolds ends the holds that are over and returns when the next one
// must be looked at again (zero when none is held). Called by the loop
// with n.mu held.
func (n *Node) serveHolds(now time.Time) time.Time {
	if len(n.holding) == 0 {
		n.holdNext = time.Time{}
		return n.holdNext
	}
	minHold, maxHold := time.Duration(n.cfg.MinHold), time.Duration(n.cfg.MaxHold)
	var next time.Time
	ended := n.holdEnds[:0]
	keep := n.holding[:0]
	for _, h := range n.holding {
		since := now.Sub(h.at)
		over := since >= maxHold || (!h.writable && since >= minHold)
		if !over && h.writable {
			over = n.written(h.page)
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
	clear(n.holding[len(keep):])
	n.holding = keep
	n.holdNext = next
	for _, p := range ended {
		n.eng.EndHold(p)
		n.flush() // may start new holds: they are looked at next time round
	}
	n.holdEnds = ended[:0]
	if len(n.holding) > 0 && n.holdNext.IsZero() {
		n.holdNext = now // a hold started by the flushes above
	}
	return n.holdNext
}

// written reports whether page p differs from its twin: the program wrote
// it since it was made accessible. pread reads a hole as zeros, so this is
// safe whatever the page's state.
func (n *Node) written(p coherence.PageID) bool {
	twin, ok := n.twins.get(p)
	if !ok {
		return true // dropped meanwhile: nothing left to hold
	}
	if err := n.readPage(p); err != nil {
		return true
	}
	return !bytes.Equal(n.buf, twin)
}
