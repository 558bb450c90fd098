package coherence

import (
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// DirEntry is a snapshot of the directory entry of a page homed on a node.
type DirEntry struct {
	Version   uint64        // the page's current version (0: never written)
	Clock     clocks.Vector // the current version's clock, as last confirmed
	Owner     NodeID        // the node that holds the authoritative copy (valid if HasOwner)
	HasOwner  bool          // false until the page is first written
	Exclusive bool          // the owner holds the page Exclusive
	Copies    []NodeID      // the nodes holding the current version, owner included, ascending
	Busy      bool          // a transaction is in progress
	Requester NodeID        // the current transaction's requester (valid if Busy)
	Queue     int           // requests waiting behind the current transaction
}

// dirEntry is the directory entry of a page homed on this node.
type dirEntry struct {
	version  uint64
	clock    clocks.Vector
	owner    NodeID
	hasOwner bool
	excl     bool
	copies   []NodeID          // ascending; includes the owner
	seen     map[NodeID]uint64 // the newest request id accepted from each node
	queue    []queued          // FIFO, at most one entry per node
	cur      *txn
}

// queued is a request waiting at the home.
type queued struct {
	from        NodeID
	req         uint64
	access      Access
	have        bool
	haveVersion uint64
}

// txnKind is how the home serves a request.
type txnKind uint8

const (
	tkReadFwd   txnKind = iota + 1 // the owner sends a read copy
	tkReadZero                     // never written: the home grants zeros
	tkWriteFwd                     // the owner hands the page over
	tkWriteZero                    // never written: the home grants zeros, writable
	tkUpgrade                      // the requester holds the current version: grant without data
	tkHeld                         // the requester already holds what it asks for
)

// txn is the transaction a home runs for one request.
type txn struct {
	queued
	kind    txnKind
	version uint64   // the version the requester will hold
	source  NodeID   // tkReadFwd, tkWriteFwd: the owner
	waiting []NodeID // invalidations not yet acknowledged
	granted bool     // the invalidations are done and the grant step was sent
}

// DirEntry returns the directory entry of page p, if p is homed on this
// node.
func (e *Engine) DirEntry(p PageID) (DirEntry, bool) {
	if int(p) >= e.pages || e.home(p) != e.id {
		return DirEntry{}, false
	}
	d := e.dirs[p]
	if d == nil {
		return DirEntry{}, true
	}
	de := DirEntry{
		Version: d.version, Clock: d.clock.Clone(), Owner: d.owner, HasOwner: d.hasOwner,
		Exclusive: d.excl, Copies: slices.Clone(d.copies), Queue: len(d.queue),
	}
	if d.cur != nil {
		de.Busy, de.Requester = true, d.cur.from
	}
	return de, true
}

func (e *Engine) dir(p PageID) *dirEntry {
	d := e.dirs[p]
	if d == nil {
		d = &dirEntry{seen: map[NodeID]uint64{}}
		e.dirs[p] = d
	}
	return d
}

func (d *dirEntry) has(n NodeID) bool {
	_, ok := slices.BinarySearch(d.copies, n)
	return ok
}

func (d *dirEntry) addCopy(n NodeID) {
	if i, ok := slices.BinarySearch(d.copies, n); !ok {
		d.copies = slices.Insert(d.copies, i, n)
	}
}

// others returns the copies except the given nodes.
func (d *dirEntry) others(except ...NodeID) []NodeID {
	var out []NodeID
	for _, n := range d.copies {
		if !slices.Contains(except, n) {
			out = append(out, n)
		}
	}
	return out
}

func (e *Engine) onRequest(m *Message) {
	d := e.dir(m.Page)
	last := d.seen[m.From]
	if m.Req <= last {
		if t := d.cur; t != nil && t.from == m.From && t.req == m.Req {
			// The requester is still waiting: something was lost.
			e.stats.Redrives++
			e.drive(m.Page, d)
			return
		}
		e.stale() // queued already, or finished
		return
	}
	if t := d.cur; t != nil && t.from == m.From {
		if !t.granted {
			// Cannot happen: the requester has not been served yet, so
			// it cannot have a newer request.
			e.stats.Anomalies++
			return
		}
		// A node sends a new request for a page only after it installed
		// the last one: this closes the current transaction.
		e.closeTxn(m.Page, d, nil)
	}
	if i := slices.IndexFunc(d.queue, func(q queued) bool { return q.from == m.From }); i >= 0 {
		e.stats.Anomalies++ // a node has one request per page at a time
		d.queue = slices.Delete(d.queue, i, i+1)
	}
	d.seen[m.From] = m.Req
	d.queue = append(d.queue, queued{from: m.From, req: m.Req, access: m.Access, have: m.Have, haveVersion: m.HaveVersion})
	e.next(m.Page, d)
}

// next starts the first queued transaction if none is running.
func (e *Engine) next(p PageID, d *dirEntry) {
	if d.cur != nil || len(d.queue) == 0 {
		return
	}
	q := d.queue[0]
	d.queue = slices.Delete(d.queue, 0, 1)
	t := &txn{queued: q}
	holds := d.has(q.from) && q.have && q.haveVersion == d.version
	if d.has(q.from) && !holds {
		e.stats.Anomalies++ // the directory and the requester disagree
	}
	switch {
	case q.access == Read && holds:
		t.kind, t.version = tkHeld, d.version
	case q.access == Read && d.hasOwner:
		t.kind, t.version, t.source = tkReadFwd, d.version, d.owner
	case q.access == Read:
		t.kind, t.version = tkReadZero, d.version
	case holds && d.excl && d.owner == q.from:
		t.kind, t.version = tkHeld, d.version
	case holds:
		t.kind, t.version, t.waiting = tkUpgrade, d.version+1, d.others(q.from)
	case d.hasOwner:
		t.kind, t.version, t.source = tkWriteFwd, d.version+1, d.owner
		t.waiting = d.others(q.from, d.owner)
	default:
		t.kind, t.version, t.waiting = tkWriteZero, d.version+1, d.others(q.from)
	}
	if e.bugs.skipInval {
		t.waiting = nil
	}
	d.cur = t
	e.stats.InvalidationsSent += uint64(len(t.waiting))
	e.drive(p, d)
}

// drive sends what the current transaction waits for: the invalidations
// not yet acknowledged, or else the grant step.
func (e *Engine) drive(p PageID, d *dirEntry) {
	t := d.cur
	if len(t.waiting) > 0 {
		for _, n := range t.waiting {
			e.send(&Message{Type: MsgInval, To: n, Page: p, Req: t.req, Requester: t.from, Version: t.version})
		}
		return
	}
	t.granted = true
	m := &Message{Page: p, Req: t.req, Requester: t.from, Version: t.version}
	switch t.kind {
	case tkReadFwd:
		m.Type, m.To = MsgFwdRead, t.source
	case tkWriteFwd:
		m.Type, m.To = MsgFwdWrite, t.source
	case tkReadZero, tkWriteZero:
		m.Type, m.To, m.Zero = MsgData, t.from, true
		m.Writable = t.kind == tkWriteZero
		m.SenderDropped = m.Writable
	case tkUpgrade:
		m.Type, m.To, m.Writable = MsgGrant, t.from, true
	case tkHeld:
		m.Type, m.To, m.Writable = MsgGrant, t.from, t.access == Write
	}
	e.send(m)
}

func (e *Engine) onInvalAck(m *Message) {
	d := e.dirs[m.Page]
	if d == nil || d.cur == nil || d.cur.from != m.Requester || d.cur.req != m.Req || d.cur.granted {
		e.stale()
		return
	}
	t := d.cur
	i := slices.Index(t.waiting, m.From)
	if i < 0 {
		e.stale()
		return
	}
	t.waiting = slices.Delete(t.waiting, i, i+1)
	if len(t.waiting) == 0 {
		e.drive(m.Page, d)
	}
}

func (e *Engine) onConfirm(m *Message) {
	d := e.dir(m.Page)
	if t := d.cur; t != nil && t.from == m.From && t.req == m.Req {
		if !t.granted {
			e.stats.Anomalies++
			return
		}
		e.closeTxn(m.Page, d, m.PageClock)
		e.send(&Message{Type: MsgDone, To: m.From, Page: m.Page, Req: m.Req, Requester: m.From, Version: m.Version})
		e.next(m.Page, d)
		return
	}
	if m.Req <= d.seen[m.From] {
		// Closed already (the MsgDone was lost): say so again.
		e.stale()
		e.send(&Message{Type: MsgDone, To: m.From, Page: m.Page, Req: m.Req, Requester: m.From, Version: m.Version})
		return
	}
	e.stale()
}

// closeTxn records the outcome of the current transaction in the directory.
func (e *Engine) closeTxn(p PageID, d *dirEntry, pageClock clocks.Vector) {
	t := d.cur
	switch t.kind {
	case tkReadFwd:
		d.excl = false
		d.addCopy(t.from)
	case tkReadZero:
		d.addCopy(t.from)
	case tkWriteFwd, tkWriteZero, tkUpgrade:
		if t.kind == tkWriteFwd {
			e.send(&Message{Type: MsgRelease, To: t.source, Page: p, Version: t.version})
		}
		d.version = t.version
		d.owner, d.hasOwner, d.excl = t.from, true, true
		d.copies = append(d.copies[:0], t.from)
	}
	if pageClock != nil {
		d.clock = pageClock.Clone()
	}
	d.cur = nil
	e.stats.Transactions++
}

func (e *Engine) onXferQuery(m *Message) {
	d := e.dir(m.Page)
	if d.version < m.Version {
		e.stale() // the transfer is still in progress
		return
	}
	e.send(&Message{Type: MsgRelease, To: m.From, Page: m.Page, Version: m.Version})
}
