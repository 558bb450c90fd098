package coherence

import (
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// DirEntry is a snapshot of the directory entry of a page homed on a node.
// Version, Owner, Exclusive and Copies describe the transactions that are
// closed; open ones are counted in Open.
type DirEntry struct {
	Version   uint64        // the page's current version (0: never written)
	Clock     clocks.Vector // the current version's clock, as last confirmed
	Owner     NodeID        // the node that holds the authoritative copy (valid if HasOwner)
	HasOwner  bool          // false until the page is first written
	Exclusive bool          // the owner holds the page Exclusive
	Copies    []NodeID      // the nodes holding the current version, owner included, ascending
	Busy      bool          // a transaction is in progress
	Requester NodeID        // the oldest open transaction's requester (valid if Busy)
	Open      int           // transactions in progress: more than one when pipelined
	Queue     int           // requests waiting behind the open transactions
}

// dirView is what a directory entry says about a page's copies: the
// closed state, or the state once the open transactions close.
type dirView struct {
	version  uint64
	owner    NodeID
	hasOwner bool
	excl     bool
	copies   []NodeID // ascending; includes the owner; never changed in place
}

// dirEntry is the directory entry of a page homed on this node, kept in the
// engine's dirTable: 24 bytes, since there is one for every homed page. The
// request ids the home accepted for the page, and its dirBusy if it has
// one, are in the dirTable too (dirRef).
type dirEntry struct {
	version uint64  // the version the closed transactions left (0: never written)
	clockP  *uint64 // the current version's clock, as last confirmed (clockOf)
	clockN  uint32
	owner   NodeID // valid with dirHasOwner
	flags   dirFlags
}

// dirFlags are the yes/no parts of a dirEntry.
type dirFlags uint8

const (
	dirHasOwner dirFlags = 1 << iota // the page was written: owner is valid
	dirExcl                          // the owner holds the page Exclusive
	// dirSole: the owner's is the only copy, and dirBusy.copies is not
	// used. After a write that is the case, so the copy set of a page
	// nobody read since costs nothing.
	dirSole
)

// dirBusy is the part of a directory entry that a page in flight or with
// readers needs: copies besides a sole owner's, requests. It is recycled
// when the page has neither (idle).
type dirBusy struct {
	copies []NodeID // the copy set, ascending, unless dirSole; owned by this entry
	queue  []queued // FIFO, at most one entry per node
	open   []*txn   // transactions in progress, oldest first
}

// spareDirBusyMax bounds the recycled dirBusy values an engine keeps.
const spareDirBusyMax = 64

func (d *dirEntry) clock() clocks.Vector { return clockOf(d.clockP, d.clockN) }

func (d *dirEntry) has(f dirFlags) bool { return d.flags&f != 0 }

func (d *dirEntry) set(f dirFlags, on bool) {
	if on {
		d.flags |= f
	} else {
		d.flags &^= f
	}
}

func (d dirRef) openTxns() []*txn {
	if x := d.busy(); x != nil {
		return x.open
	}
	return nil
}

func (d dirRef) queued() []queued {
	if x := d.busy(); x != nil {
		return x.queue
	}
	return nil
}

// soloCopy returns the copy set {n}, shared and never changed in place.
func (e *Engine) soloCopy(n NodeID) []NodeID { return e.solo[n : n+1 : n+1] }

// closed returns the state the closed transactions left.
func (e *Engine) closed(d dirRef) dirView {
	v := dirView{version: d.version, owner: d.owner, hasOwner: d.has(dirHasOwner), excl: d.has(dirExcl)}
	if d.has(dirSole) {
		v.copies = e.soloCopy(d.owner)
	} else if x := d.busy(); x != nil {
		v.copies = x.copies
	}
	return v
}

// dirBusy returns d's dirBusy, making it if d has none (from the ones
// recycled, if any).
func (e *Engine) dirBusy(d dirRef) *dirBusy {
	x := d.busy()
	if x == nil {
		if k := len(e.spareDirBusy); k > 0 {
			x, e.spareDirBusy = e.spareDirBusy[k-1], e.spareDirBusy[:k-1]
		} else {
			x = &dirBusy{}
		}
		e.dirs.setBusy(d, x)
	}
	return x
}

// dirIdle recycles d's dirBusy if the page has no reader besides a sole
// owner, no queued request and no open transaction.
func (e *Engine) dirIdle(d dirRef) {
	x := d.busy()
	if x == nil || (x.copies != nil && !d.has(dirSole)) || len(x.queue) > 0 || len(x.open) > 0 {
		return
	}
	e.dirs.setBusy(d, nil)
	if len(e.spareDirBusy) < spareDirBusyMax {
		// The queue and open slices keep their arrays for the next page
		// (they are empty, and slices.Delete cleared what they held).
		x.copies = nil
		e.spareDirBusy = append(e.spareDirBusy, x)
	}
}

// addCopy adds node n to the copy set of d.
func (e *Engine) addCopy(d dirRef, n NodeID) {
	cur := e.closed(d).copies
	i, ok := slices.BinarySearch(cur, n)
	if ok {
		return
	}
	if d.has(dirSole) {
		// The shared {owner} has no room: Insert makes the entry's own.
		d.set(dirSole, false)
	}
	e.dirBusy(d).copies = slices.Insert(cur, i, n)
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
	source  NodeID   // tkReadFwd, tkWriteFwd: the owner, or the pending owner when pipelined
	waiting []NodeID // invalidations not yet acknowledged
	granted bool     // the invalidations are done and the grant step was sent
}

// owns reports whether t makes its requester the only holder of the page,
// Exclusive: the transactions the home may pipeline behind.
func (t *txn) owns() bool {
	return t.kind == tkWriteFwd || t.kind == tkWriteZero || t.kind == tkUpgrade
}

// DirEntry returns the directory entry of page p, if p is homed on this
// node.
func (e *Engine) DirEntry(p PageID) (DirEntry, bool) {
	if int(p) >= e.pages || e.home(p) != e.id {
		return DirEntry{}, false
	}
	d := e.dirs.get(p)
	if d.dirEntry == nil {
		return DirEntry{}, true
	}
	v := e.closed(d)
	open := d.openTxns()
	de := DirEntry{
		Version: v.version, Clock: d.clock().Clone(), Owner: v.owner, HasOwner: v.hasOwner,
		Exclusive: v.excl, Copies: slices.Clone(v.copies), Open: len(open), Queue: len(d.queued()),
	}
	if len(open) > 0 {
		de.Busy, de.Requester = true, open[0].from
	}
	return de, true
}

func (v *dirView) has(n NodeID) bool {
	_, ok := slices.BinarySearch(v.copies, n)
	return ok
}

// others returns the copies except nodes a and b, in out's array.
func (v *dirView) others(out []NodeID, a, b NodeID) []NodeID {
	out = out[:0]
	for _, n := range v.copies {
		if n != a && n != b {
			out = append(out, n)
		}
	}
	return out
}

// find returns the index of the open transaction of node n (a node has at
// most one), or -1.
func (d dirRef) find(n NodeID) int {
	return slices.IndexFunc(d.openTxns(), func(t *txn) bool { return t.from == n })
}

// view returns the state of the page once the open transactions close,
// when the last one is base (nil: none is open). The home pipelines only
// behind a transaction that makes its requester the sole, Exclusive holder,
// so that state is known without waiting for it.
func (e *Engine) view(d dirRef, base *txn) dirView {
	switch {
	case base == nil:
		return e.closed(d)
	case base.kind == tkReadFwd:
		// Only under bugs.pipeRead: the new reader is forgotten.
		return dirView{version: base.version, owner: base.source, hasOwner: true, copies: e.soloCopy(base.source)}
	}
	return dirView{version: base.version, owner: base.from, hasOwner: true, excl: true, copies: e.soloCopy(base.from)}
}

func (e *Engine) onRequest(m *Message) {
	d := e.dirs.at(m.Page)
	defer e.dirIdle(d)
	last := e.dirs.lastSeen(m.Page, d, m.From)
	if m.Req <= last {
		if i := d.find(m.From); i >= 0 && d.busy().open[i].req == m.Req {
			// The requester is still waiting: something was lost.
			e.stats.Redrives++
			e.drive(m.Page, d.busy().open[i])
			return
		}
		e.stale() // queued already, or finished
		return
	}
	if i := d.find(m.From); i >= 0 {
		if !d.busy().open[i].granted {
			// Cannot happen: the requester has not been served yet, so
			// it cannot have a newer request.
			e.stats.Anomalies++
			return
		}
		// A node sends a new request for a page only after it installed
		// the last one: this closes its transaction and the ones before.
		e.closeThrough(m.Page, d, i, nil)
	}
	x := e.dirBusy(d)
	if i := slices.IndexFunc(x.queue, func(q queued) bool { return q.from == m.From }); i >= 0 {
		e.stats.Anomalies++ // a node has one request per page at a time
		x.queue = slices.Delete(x.queue, i, i+1)
	}
	e.dirs.setSeen(m.Page, d, m.From, m.Req)
	x.queue = append(x.queue, queued{from: m.From, req: m.Req, access: m.Access, have: m.Have, haveVersion: m.HaveVersion})
	e.next(m.Page, d)
}

// next starts the queued requests that may start: the first one when no
// transaction is open; when pipelining, also the ones behind a granted
// transaction that makes its requester the sole holder (the pending
// owner), which the home forwards to it at once.
func (e *Engine) next(p PageID, d dirRef) {
	for x := d.busy(); x != nil && len(x.queue) > 0; {
		var base *txn
		if n := len(x.open); n > 0 {
			base = x.open[n-1]
			ok := base.owns() || (e.bugs.pipeRead && base.kind == tkReadFwd)
			if !e.pipe || !base.granted || !ok || base.from == x.queue[0].from {
				return
			}
			e.stats.Pipelined++
		}
		q := x.queue[0]
		x.queue = slices.Delete(x.queue, 0, 1)
		e.start(p, d, q, base)
	}
}

// start plans the transaction for request q on the state the open
// transactions leave (base is the last of them, or nil) and drives it.
func (e *Engine) start(p PageID, d dirRef, q queued, base *txn) {
	v := e.view(d, base)
	var t *txn
	if k := len(e.txnFree); k > 0 {
		t, e.txnFree = e.txnFree[k-1], e.txnFree[:k-1]
		t.queued = q
	} else {
		t = &txn{queued: q}
	}
	holds := v.has(q.from) && q.have && q.haveVersion == v.version
	if v.has(q.from) && !holds {
		e.stats.Anomalies++ // the directory and the requester disagree
	}
	switch {
	case q.access == Read && holds:
		t.kind, t.version = tkHeld, v.version
	case q.access == Read && v.hasOwner:
		t.kind, t.version, t.source = tkReadFwd, v.version, v.owner
	case q.access == Read:
		t.kind, t.version = tkReadZero, v.version
	case holds && v.excl && v.owner == q.from:
		t.kind, t.version = tkHeld, v.version
	case holds:
		t.kind, t.version, t.waiting = tkUpgrade, v.version+1, v.others(t.waiting, q.from, q.from)
	case v.hasOwner:
		t.kind, t.version, t.source = tkWriteFwd, v.version+1, v.owner
		t.waiting = v.others(t.waiting, q.from, v.owner)
	default:
		t.kind, t.version, t.waiting = tkWriteZero, v.version+1, v.others(t.waiting, q.from, q.from)
	}
	if e.bugs.skipInval {
		t.waiting = nil
	}
	x := d.busy() // the dirBusy whose queue q came from
	x.open = append(x.open, t)
	e.stats.InvalidationsSent += uint64(len(t.waiting))
	e.drive(p, t)
}

// drive sends what transaction t waits for: the invalidations not yet
// acknowledged, or else the grant step.
func (e *Engine) drive(p PageID, t *txn) {
	if len(t.waiting) > 0 {
		for _, n := range t.waiting {
			e.post(Message{Type: MsgInval, To: n, Page: p, Req: t.req, Requester: t.from, Version: t.version})
		}
		return
	}
	t.granted = true
	m := Message{Page: p, Req: t.req, Requester: t.from, Version: t.version}
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
	e.post(m)
}

func (e *Engine) onInvalAck(m *Message) {
	d := e.dirs.get(m.Page)
	if d.dirEntry == nil {
		e.stale()
		return
	}
	i := d.find(m.Requester)
	if i < 0 || d.busy().open[i].req != m.Req || d.busy().open[i].granted {
		e.stale()
		return
	}
	t := d.busy().open[i]
	j := slices.Index(t.waiting, m.From)
	if j < 0 {
		e.stale()
		return
	}
	t.waiting = slices.Delete(t.waiting, j, j+1)
	if len(t.waiting) == 0 {
		e.drive(m.Page, t)
		e.next(m.Page, d)
		e.dirIdle(d)
	}
}

func (e *Engine) onConfirm(m *Message) {
	d := e.dirs.at(m.Page)
	if i := d.find(m.From); i >= 0 && d.busy().open[i].req == m.Req {
		if !d.busy().open[i].granted {
			e.stats.Anomalies++
			return
		}
		e.closeThrough(m.Page, d, i, m.PageClock)
		e.post(Message{Type: MsgDone, To: m.From, Page: m.Page, Req: m.Req, Requester: m.From, Version: m.Version})
		e.next(m.Page, d)
		e.dirIdle(d)
		return
	}
	if m.Req <= e.dirs.lastSeen(m.Page, d, m.From) {
		// Closed already (the MsgDone was lost): say so again.
		e.stale()
		e.post(Message{Type: MsgDone, To: m.From, Page: m.Page, Req: m.Req, Requester: m.From, Version: m.Version})
		return
	}
	e.stale()
}

// closeThrough closes the open transactions up to the i-th, whose requester
// installed what it asked for, and records their outcome in the directory.
// The earlier ones are complete too: each handed the page on to the next
// (a transaction pipelined behind another gets its copy from that one's
// requester). Their requesters get MsgDone, in case they still wait for it.
func (e *Engine) closeThrough(p PageID, d dirRef, i int, pageClock clocks.Vector) {
	x := d.busy() // non-nil: the transactions are open
	for k, t := range x.open[:i+1] {
		switch t.kind {
		case tkReadFwd:
			d.set(dirExcl, false)
			e.addCopy(d, t.from)
		case tkReadZero:
			e.addCopy(d, t.from)
		case tkWriteFwd, tkWriteZero, tkUpgrade:
			if t.kind == tkWriteFwd {
				e.post(Message{Type: MsgRelease, To: t.source, Page: p, Version: t.version})
			}
			d.version = t.version
			d.owner = t.from
			d.flags = dirHasOwner | dirExcl | dirSole
			x.copies = nil
		}
		if k < i {
			e.post(Message{Type: MsgDone, To: t.from, Page: p, Req: t.req, Requester: t.from, Version: t.version})
		}
		e.stats.Transactions++
	}
	if pageClock != nil {
		// Shared, not copied: nobody changes the clocks of a message
		// stepped in (Step's contract).
		d.clockP, d.clockN = clockPtr(pageClock)
	}
	e.txnDead = append(e.txnDead, x.open[:i+1]...)
	x.open = slices.Delete(x.open, 0, i+1)
}

func (e *Engine) onXferQuery(m *Message) {
	var version uint64 // a page nobody asked for is at version 0
	if d := e.dirs.get(m.Page); d.dirEntry != nil {
		version = d.version
	}
	if version < m.Version {
		e.stale() // the transfer is still in progress
		return
	}
	e.post(Message{Type: MsgRelease, To: m.From, Page: m.Page, Version: m.Version})
}
