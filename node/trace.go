package node

import (
	"time"

	"github.com/dsmrt/dsm/coherence"
)

// Where a fault's time goes, measured by the daemon of the node that
// faulted: from reading the fault message to sending the first request
// ("send"), from there to the answer (data or grant) arriving ("remote": the
// network both ways, the home, the owner, and any hold the owner applied),
// and from the answer to waking the thread ("install"). Faults resolved
// without a message (a local home granting a fresh page, a page already
// there) count only in the total.

// faultTrace is the timeline of the oldest pending fault on a page.
type faultTrace struct {
	fault, req, answer time.Time
}

// Breakdown is the fault path split into its stages, for dsmnode status.
type Breakdown struct {
	Send    Percentiles `json:"send"`
	Remote  Percentiles `json:"remote"`
	Install Percentiles `json:"install"`
}

type breakdown struct {
	send, remote, install latencies
}

// traceFault starts the timeline of page p's fault, unless one is running.
func (n *Node) traceFault(p coherence.PageID, at time.Time) {
	if _, ok := n.traces[p]; !ok {
		n.traces[p] = &faultTrace{fault: at}
	}
}

// traceSend notes that a message about page p left.
func (n *Node) traceSend(p coherence.PageID) {
	if t, ok := n.traces[p]; ok && t.req.IsZero() {
		t.req = time.Now()
	}
}

// traceAnswer notes that the answer for page p arrived.
func (n *Node) traceAnswer(m *coherence.Message) {
	if m.Type != coherence.MsgData && m.Type != coherence.MsgGrant {
		return
	}
	if t, ok := n.traces[m.Page]; ok && !t.req.IsZero() && t.answer.IsZero() {
		t.answer = time.Now()
	}
}

// traceDone closes page p's timeline when its faults are resolved.
func (n *Node) traceDone(p coherence.PageID, now time.Time) {
	t, ok := n.traces[p]
	n.stats.metrics.countResolved(len(n.waiting[p]), ok && !t.req.IsZero() && !t.answer.IsZero())
	if !ok {
		return
	}
	delete(n.traces, p)
	if t.req.IsZero() || t.answer.IsZero() {
		return
	}
	n.stats.stages.send.add(t.req.Sub(t.fault))
	n.stats.stages.remote.add(t.answer.Sub(t.req))
	n.stats.stages.install.add(now.Sub(t.answer))
}

func (b *breakdown) percentiles() Breakdown {
	return Breakdown{Send: b.send.percentiles(), Remote: b.remote.percentiles(), Install: b.install.percentiles()}
}
