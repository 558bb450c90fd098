package pager

import (
	"time"

	"github.com/dsmrt/dsm/coherence"
)

// Where a fault's time goes, measured by the node that faulted: from
// reading the fault to sending the first request (Stages.Send), from there
// to the answer (data or grant) arriving (Remote: the network both ways,
// the home, the owner, and any hold the owner applied), and from the answer
// to waking the thread (Install). Faults resolved without a message (a
// local home granting a fresh page, a page already there) count only in
// the total.

// faultTrace is the timeline of the oldest pending fault on a page.
type faultTrace struct {
	fault, req, answer time.Time
}

// traceFault starts the timeline of page p's fault, unless one is running.
func (g *Pager) traceFault(p coherence.PageID, at time.Time) {
	if _, ok := g.traces[p]; !ok {
		g.traces[p] = faultTrace{fault: at}
	}
}

// traceSend notes that a message about page p left.
func (g *Pager) traceSend(p coherence.PageID) {
	if t, ok := g.traces[p]; ok && t.req.IsZero() {
		t.req = g.now()
		g.traces[p] = t
	}
}

// traceAnswer notes that the answer for page p arrived.
func (g *Pager) traceAnswer(m *coherence.Message) {
	if m.Type != coherence.MsgData && m.Type != coherence.MsgGrant {
		return
	}
	if t, ok := g.traces[m.Page]; ok && !t.req.IsZero() && t.answer.IsZero() {
		t.answer = g.now()
		g.traces[m.Page] = t
	}
}

// traceDone closes page p's timeline when its faults (waiters of them)
// are resolved.
func (g *Pager) traceDone(p coherence.PageID, waiters int, now time.Time) {
	t, ok := g.traces[p]
	if ok {
		delete(g.traces, p)
	}
	o := g.cfg.Observer
	if o == nil {
		return
	}
	if !ok || t.req.IsZero() || t.answer.IsZero() {
		o.Resolved(waiters, nil)
		return
	}
	o.Resolved(waiters, &Stages{Send: t.req.Sub(t.fault), Remote: t.answer.Sub(t.req), Install: now.Sub(t.answer)})
}
