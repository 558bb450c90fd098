package node

import (
	"time"

	"github.com/dsmrt/dsm/coherence"
	dsmnet "github.com/dsmrt/dsm/net"
)

// Messages off the critical path ride on the next message to the same
// node. A remote read costs one request and one reply; the requester's
// confirmation to the home, and the home's acknowledgement of it, need not
// wake the other daemon on their own: they wait in the node's outbox until
// a message that matters goes the same way (the next fault's request, the
// next page), or until their delay runs out. The transport is corked for
// each batch of work, so a message and what rides on it share a datagram.
//
// The delays keep the protocol's timing well inside its retransmission
// tick (5 ms): a requester retransmits a confirmation it got no MsgDone for
// only on a tick. A confirmation waits the least, because a request for
// the page behind a read waits at the home until it comes.

// lazyDelay returns how long a message of type t may wait in the outbox,
// or zero if it must go at once.
func lazyDelay(t coherence.MsgType) time.Duration {
	switch t {
	case coherence.MsgConfirm:
		return 100 * time.Microsecond
	case coherence.MsgDone, coherence.MsgRelease:
		return time.Millisecond
	}
	return 0
}

// lazyBox holds the messages waiting for one node, back to back.
type lazyBox struct {
	buf  []byte
	ends []int // where each message ends in buf
	due  time.Time
}

// postLazy queues the encoded message b (already in box.buf) for node to,
// due after delay. Called with n.mu held.
func (n *Node) postLazy(to coherence.NodeID, delay time.Duration) {
	box := &n.outbox[to]
	box.ends = append(box.ends, len(box.buf))
	due := time.Now().Add(delay)
	if box.due.IsZero() || due.Before(box.due) {
		box.due = due
	}
	if n.lazyNext.IsZero() || box.due.Before(n.lazyNext) {
		n.lazyNext = box.due
	}
}

// flushBox sends what waits for node to. Called with n.mu held, before
// any other message to that node, so that messages keep their order.
func (n *Node) flushBox(to coherence.NodeID) {
	box := &n.outbox[to]
	if len(box.ends) == 0 {
		return
	}
	start := 0
	for _, end := range box.ends {
		if err := n.tr.Send(dsmnet.NodeID(to), box.buf[start:end]); err != nil {
			n.log.Debug("send failed", "to", to, "err", err)
		}
		start = end
	}
	box.buf, box.ends, box.due = box.buf[:0], box.ends[:0], time.Time{}
}

// flushLazy sends the boxes that are due and returns when the next one is
// (zero if none waits). Called by the loop with n.mu held.
func (n *Node) flushLazy(now time.Time) time.Time {
	if n.lazyNext.IsZero() || now.Before(n.lazyNext) {
		return n.lazyNext
	}
	var next time.Time
	for to := range n.outbox {
		box := &n.outbox[to]
		if len(box.ends) == 0 {
			continue
		}
		if !now.Before(box.due) {
			n.flushBox(coherence.NodeID(to))
			continue
		}
		if next.IsZero() || box.due.Before(next) {
			next = box.due
		}
	}
	n.lazyNext = next
	return next
}
