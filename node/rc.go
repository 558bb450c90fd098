package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/coherence/rc"
	"github.com/dsmrt/dsm/internal/heaplayout"
	"github.com/dsmrt/dsm/lockmgr"
)

// The release-consistent area (Config.RCSize) is served by the engine of
// package coherence/rc instead of the directory protocol: a page there is
// copied, not owned. The daemon's part:
//
//   - A missing page is fetched from its home and installed; a read gets it
//     write-protected, a write writable.
//   - The first write to a write-protected copy faults: the page joins the
//     node's written set and is made writable in every program (this is
//     write-fault tracking: one fault per page and interval, or fewer for
//     a program that writes pages in order, see rcWritable).
//   - A release (a program's Unlock giving a lock back, a barrier arrival,
//     Region.Release) write-protects the written pages in every program
//     before it reads them, so that no write slips between the read and the
//     protection, and hands them to the engine, which sends the diffs home.
//     The lock or barrier goes on when the homes have them, carrying the
//     engine's payload.
//   - A page homed here in blocks (rchomes.go) is written in place: the
//     program's memory is its master, installed writable and not tracked,
//     until another node asks for it; the engine then asks for it
//     (Ready.Shares) and rcShare write-protects it, reads it and hands it
//     over, after which it is tracked like any copy.
//   - An acquire (a grant, a barrier departure, Region.Acquire) flushes the
//     written pages the same way, then the engine invalidates the copies
//     the writers' notices outdate (a punched hole: the next access faults
//     and fetches). Write-protect faults that come while an acquire runs
//     wait for its end, since the page they would make writable may be one
//     it invalidates.
//
// The engine runs one release or acquire at a time; the others queue.
type rcState struct {
	eng                *rc.Engine
	lo, hi             coherence.PageID          // the area's pages
	dirty              map[coherence.PageID]bool // written since the last release or acquire
	wantWrite          map[coherence.PageID]bool // missing faults that were writes
	deferred           []coherence.PageID        // write-protect faults held during an acquire
	queue              []*rcOp                   // operations waiting for the engine
	cur                *rcOp                     // the operation the engine runs
	nextOp             uint64
	races              int
	releases, acquires uint64
	// Write-protect faults on consecutive pages make the next pages
	// writable too (rcWritable): lastWP is the last page so made
	// writable, ahead how many more pages the next such fault takes.
	lastWP coherence.PageID
	ahead  int
	// homes are the page ranges homed in blocks (rchomes.go), sorted;
	// announcing the announcements waiting for peers' answers.
	homes        []homeRange
	announcing   map[uint64]*announcement
	nextAnnounce uint64
	zeros        []byte // zeroPage
	prefetched   uint64 // pages rcPrefetch asked for or made writable
}

// maxDirtyAhead bounds how many pages a write-protect fault makes writable
// beyond its own. A page made writable and not written costs a comparison
// with its twin at the next release (no message: the diff is empty); a
// write-protect fault costs a wake-up of the daemon and of the program
// (measured here: 9 to 77 µs).
const maxDirtyAhead = 63

// rcOp is a release or acquire a program's synchronisation needs.
type rcOp struct {
	id      uint64
	noop    bool // no engine operation: then runs when the ones before are done
	acquire bool
	all     bool // AcquireAll
	payload rc.Payload
	then    func(*rc.Payload) // run under n.mu when the engine is done
}

// protoRC starts the transport messages of the release-consistent protocol.
const protoRC = 4

// initRC starts the release-consistent engine when the cluster keeps an
// area for it.
func (n *Node) initRC() error {
	if n.cfg.RCSize == 0 {
		return nil
	}
	l, err := heaplayout.New(n.cfg.Size, uint64(n.cfg.PageSize), n.cfg.RCSize)
	if err != nil {
		return fmt.Errorf("rc_size: %w", err)
	}
	lo, hi := l.RCPages()
	n.rcs = &rcState{lo: coherence.PageID(lo), hi: coherence.PageID(hi),
		dirty: map[coherence.PageID]bool{}, wantWrite: map[coherence.PageID]bool{}, announcing: map[uint64]*announcement{}}
	eng, err := rc.New(rc.Config{ID: rc.NodeID(n.cfg.ID), Nodes: n.cfg.Nodes, PageSize: n.ps,
		Home: func(p rc.PageID) rc.NodeID { return rc.NodeID(n.rcHome(coherence.PageID(p))) },
		// Pages homed in blocks are written in place by their home: the
		// band a node writes costs nothing at its releases until a
		// neighbour asks for a page of it (see rcShare).
		InPlace: func(p rc.PageID) bool { _, ok := n.homeRangeOf(coherence.PageID(p)); return ok }})
	if err != nil {
		return err
	}
	n.rcs.eng = eng
	return nil
}

// isRC reports whether page p is release-consistent.
func (n *Node) isRC(p coherence.PageID) bool {
	return n.rcs != nil && p >= n.rcs.lo && p < n.rcs.hi
}

// rcFault serves a fault on a release-consistent page.
func (n *Node) rcFault(pr *prog, p coherence.PageID, write, wp bool, at time.Time) {
	rs := n.rcs
	n.pg.Wait(pr.Prog, p, wp, at)
	a := coherence.Read
	if write || wp {
		a = coherence.Write
	}
	n.pg.CountFault(a, wp)
	if wp {
		if rs.cur != nil && rs.cur.acquire {
			rs.deferred = append(rs.deferred, p)
			return
		}
		n.rcWritable(p, true)
		return
	}
	if write {
		rs.wantWrite[p] = true
	}
	if err := rs.eng.Fault(rc.PageID(p)); err != nil {
		n.log.Error("fault refused by the release-consistent engine", "page", p, "err", err)
	}
}

// rcWritable makes a present copy writable: the page is written in this
// interval. ahead lets a fault that continues a sequence of faults on
// consecutive pages make the next pages writable as well (doubling the
// number each time, up to maxDirtyAhead), so that a program writing pages
// in order takes a fault for few of them.
func (n *Node) rcWritable(p coherence.PageID, ahead bool) {
	rs := n.rcs
	if n.pg.Phys(p) == coherence.Invalid {
		// Invalidated meanwhile: the waiting threads retry and fault
		// again, as a missing page.
		n.pg.Resolve(p, true)
		return
	}
	k := 0
	if ahead {
		if p == rs.lastWP+1 && rs.lastWP != 0 {
			rs.ahead = min(2*rs.ahead+1, maxDirtyAhead)
		} else {
			rs.ahead = 0
		}
		for k < rs.ahead {
			q := p + coherence.PageID(k+1)
			if q >= rs.hi || n.pg.Phys(q) != coherence.Shared || rs.dirty[q] || n.pg.WaitingOn(q) {
				break
			}
			k++
		}
		rs.lastWP = p + coherence.PageID(k)
	}
	for q := p; q <= p+coherence.PageID(k); q++ {
		rs.dirty[q] = true
		n.pg.SetPhys(q, coherence.Exclusive)
	}
	n.pg.ProtectAll(p, k+1, false)
	n.pg.Resolve(p, false)
}

// rcPrefetch serves prefetch hints on release-consistent pages [lo, hi),
// with nobody waiting: a page the node has no copy of is asked for as a
// fault would ask (writable once it comes, with write); with write, a
// present copy not yet written is made writable and joins the written set
// as a write-protect fault would make it (its diff is empty if the program
// does not write it after all). Nothing is made writable ahead while an
// acquire runs, since the acquire may yet invalidate the copy. Pages a
// fault already waits on are left to it.
func (n *Node) rcPrefetch(lo, hi coherence.PageID, write bool) {
	rs := n.rcs
	write = write && (rs.cur == nil || !rs.cur.acquire)
	for q := lo; q < hi; q++ {
		if n.pg.WaitingOn(q) {
			continue
		}
		switch n.pg.Phys(q) {
		case coherence.Invalid:
			if rs.eng.Valid(rc.PageID(q)) {
				continue
			}
			if write {
				rs.wantWrite[q] = true
			}
			if err := rs.eng.Fault(rc.PageID(q)); err != nil {
				n.log.Warn("prefetch refused by the release-consistent engine", "page", q, "err", err)
				return
			}
		case coherence.Shared:
			if !write || rs.dirty[q] {
				continue
			}
			n.rcWritable(q, false)
		default:
			continue
		}
		rs.prefetched++
	}
}

// rcSync queues a release (acquire false) or an acquire for the engine;
// then runs when it is done, with the release's payload.
func (n *Node) rcSync(acquire, all bool, pl rc.Payload, then func(*rc.Payload)) {
	rs := n.rcs
	rs.nextOp++
	rs.queue = append(rs.queue, &rcOp{id: rs.nextOp, acquire: acquire, all: all, payload: pl, then: then})
	n.rcStart()
}

// rcAfter runs fn once the operations queued before it are done: a lock
// request must not overtake the release of the same lock (the lock
// manager would find the lock still held by the program).
func (n *Node) rcAfter(fn func()) {
	rs := n.rcs
	if rs.cur == nil && len(rs.queue) == 0 {
		fn()
		return
	}
	rs.queue = append(rs.queue, &rcOp{noop: true, then: func(*rc.Payload) { fn() }})
}

// rcStart hands the next queued operation to the engine when it is free.
func (n *Node) rcStart() {
	rs := n.rcs
	for rs.cur == nil && len(rs.queue) > 0 {
		op := rs.queue[0]
		rs.queue = rs.queue[1:]
		if op.noop {
			op.then(nil)
			continue
		}
		rs.cur = op
		if op.acquire {
			rs.acquires++
		} else {
			rs.releases++
		}
		dirty := n.rcWritten()
		var err error
		switch {
		case !op.acquire:
			err = rs.eng.Release(op.id, dirty)
		case op.all:
			err = rs.eng.AcquireAll(op.id, dirty)
		default:
			err = rs.eng.Acquire(op.id, dirty, op.payload)
		}
		if err != nil {
			// A bug: the engine refused pages the daemon says are
			// present. Stop rather than lose writes.
			n.fail(fmt.Errorf("release-consistent %s: %w", opWord(op), err))
			return
		}
		n.flushRC()
	}
}

func opWord(op *rcOp) string {
	if op.acquire {
		return "acquire"
	}
	return "release"
}

// rcWritten write-protects the written pages in every program, then reads
// them: the engine diffs them against their twins.
func (n *Node) rcWritten() []rc.PageData {
	rs := n.rcs
	pages := make([]coherence.PageID, 0, len(rs.dirty))
	for p := range rs.dirty {
		pages = append(pages, p)
	}
	slices.Sort(pages)
	out := make([]rc.PageData, 0, len(pages))
	// Consecutive pages are protected and read together.
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		first, count := pages[i], j-i
		n.pg.ProtectAll(first, count, true)
		buf := make([]byte, count*n.ps)
		if err := n.readPages(first, buf); err != nil {
			n.fail(fmt.Errorf("written pages: %w", err))
			return nil
		}
		for k := range count {
			p := first + coherence.PageID(k)
			n.pg.SetPhys(p, coherence.Shared)
			out = append(out, rc.PageData{Page: rc.PageID(p), Data: buf[k*n.ps : (k+1)*n.ps : (k+1)*n.ps]})
		}
		i = j
	}
	clear(rs.dirty)
	return out
}

// flushRC applies what the release-consistent engine produced.
func (n *Node) flushRC() bool {
	rs := n.rcs
	if rs == nil {
		return false
	}
	rd := rs.eng.Ready()
	if len(rd.Messages)+len(rd.Installs)+len(rd.Invalidates)+len(rd.Done)+len(rd.Races)+len(rd.Shares) == 0 {
		return false
	}
	for i := range rd.Messages {
		m := &rd.Messages[i]
		n.flushBox(coherence.NodeID(m.To))
		// The transport copies what it is given: one buffer serves every
		// message, as for the coherence protocol's.
		b := m.Marshal(append(n.sendBuf[:0], protoRC))
		n.sendBuf = b
		if err := n.tr.Send(uint16(m.To), b); err != nil {
			n.log.Debug("rc send failed", "to", m.To, "err", err)
		}
	}
	for _, in := range rd.Installs {
		n.rcInstall(coherence.PageID(in.Page), in.Data, in.Own)
	}
	// After the installs: a page installed in place and asked for in the
	// same batch is then present, and shared with what it holds.
	for _, p := range rd.Shares {
		n.rcShare(coherence.PageID(p))
	}
	for _, p := range rd.Invalidates {
		n.rcInvalidate(coherence.PageID(p))
	}
	for _, r := range rd.Races {
		rs.races++
		n.an.RecordRace(raceOf(r))
	}
	for _, d := range rd.Done {
		op := rs.cur
		if op == nil || op.id != d.Op {
			n.fail(fmt.Errorf("release-consistent engine finished operation %d, not the one it runs", d.Op))
			return true
		}
		rs.cur = nil
		if op.acquire {
			held := rs.deferred
			rs.deferred = nil
			for _, p := range held {
				if n.pg.WaitingOn(p) {
					n.rcWritable(p, false)
				}
			}
		}
		op.then(d.Payload)
	}
	n.rcStart()
	return true
}

func raceOf(r rc.Race) analyzer.Race {
	w := func(x rc.Write) analyzer.RaceWrite {
		return analyzer.RaceWrite{Node: uint16(x.Node), Interval: x.Interval, Clock: x.Clock}
	}
	return analyzer.Race{Page: uint32(r.Page), Off: r.Off, Len: r.Len, A: w(r.A), B: w(r.B)}
}

// rcInstall installs a copy the engine fetched, or, own, a page this node
// is the home of and writes in place: zeros, writable, untracked.
func (n *Node) rcInstall(p coherence.PageID, data []byte, own bool) {
	rs := n.rcs
	// While an acquire runs, a copy is installed write-protected even for
	// a write: the write then faults again and waits for the acquire's
	// end, since the acquire may yet invalidate the copy, which must not
	// hold writes then. A page written in place is never invalidated.
	writable := own || rs.wantWrite[p] && (rs.cur == nil || !rs.cur.acquire)
	if own && data == nil {
		data = n.zeroPage()
	}
	delete(rs.wantWrite, p)
	if n.pg.Phys(p) != coherence.Invalid {
		n.log.Error("rc engine installs a page that is present", "page", p)
		return
	}
	via, installed, ok := n.pg.Place(p, data, writable)
	if !ok {
		return // the pager stopped the node
	}
	if writable && !own {
		rs.dirty[p] = true
	}
	n.pg.Resolve(p, via == nil || !installed)
}

// zeroPage returns a page of zeros, which nobody may write.
func (n *Node) zeroPage() []byte {
	if n.rcs.zeros == nil {
		n.rcs.zeros = make([]byte, n.ps)
	}
	return n.rcs.zeros
}

// rcShare hands the engine a page this node writes in place and another
// node asked for. It is write-protected in every program first, so that a
// write from now on faults and is tracked (and diffed at the release),
// then read: the read holds every write made before the protection.
func (n *Node) rcShare(p coherence.PageID) {
	var data []byte
	if n.pg.Phys(p) != coherence.Invalid {
		n.pg.ProtectAll(p, 1, true)
		n.pg.SetPhys(p, coherence.Shared)
		data = make([]byte, n.ps)
		if err := n.readPages(p, data); err != nil {
			n.fail(err)
			return
		}
	}
	if err := n.rcs.eng.Shared(rc.PageID(p), data); err != nil {
		n.fail(fmt.Errorf("release-consistent page %d shared: %w", p, err))
	}
}

// readPages reads len(buf)/page size pages from p on from the memfd.
func (n *Node) readPages(p coherence.PageID, buf []byte) error {
	for done := 0; done < len(buf); {
		k, err := unix.Pread(n.memfd, buf[done:], n.pageOff(p)+int64(done))
		if err != nil || k == 0 {
			return fmt.Errorf("read pages %d..%d: %v (%d bytes)", p, p+coherence.PageID(len(buf)/n.ps-1), err, k)
		}
		done += k
	}
	return nil
}

// rcInvalidate drops a copy the notices outdate.
func (n *Node) rcInvalidate(p coherence.PageID) {
	if n.rcs.dirty[p] {
		n.fail(fmt.Errorf("release-consistent page %d invalidated with unreleased writes", p))
		return
	}
	n.pg.Drop(p)
	// Threads held in a write-protect fault on it retry, and fault again.
	n.pg.Resolve(p, true)
}

// onRCMessage takes a message of the release-consistent protocol.
func (n *Node) onRCMessage(from uint16, b []byte) {
	if n.rcs == nil {
		n.log.Warn("release-consistent message, but this node keeps no area for it (rc_size differs?)", "peer", from)
		return
	}
	m, err := rc.UnmarshalMessage(b)
	if err != nil {
		n.log.Warn("malformed release-consistent message dropped", "peer", from, "err", err)
		return
	}
	if int(m.From) != int(from) {
		n.log.Warn("release-consistent message claims another sender; dropped", "peer", from, "claims", m.From)
		return
	}
	if err := n.rcs.eng.Step(m); err != nil {
		n.log.Warn("release-consistent message refused", "peer", from, "err", err)
	}
}

// rcRequest serves a program's Region.Release (acquire false) or
// Region.Acquire, and returns when the engine is done.
func (n *Node) rcRequest(ctx context.Context, acquire bool) error {
	done := make(chan struct{})
	var refused error
	err := n.do(ctx, func() {
		if n.rcs == nil {
			refused = errNoRC
			close(done)
			return
		}
		n.rcSync(acquire, acquire, rc.Payload{}, func(*rc.Payload) { close(done) })
	})
	if err != nil {
		return err
	}
	select {
	case <-done:
		return refused
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acquirePayload returns what a grant or a barrier's end hands the
// release-consistent engine: the releasers' clock, or all (AcquireAll)
// when the lock's home may have forgotten the latest one (it restarted) or
// a payload does not decode (a bug; acquiring everything is always safe).
func (n *Node) acquirePayload(ev lockmgr.Event) (p rc.Payload, all bool) {
	raw := [][]byte{ev.Payload}
	if ev.Kind == lockmgr.BarrierDone {
		raw = ev.Payloads
	}
	var ps []rc.Payload
	for _, b := range raw {
		x, err := rc.UnmarshalPayload(b)
		if err != nil {
			n.log.Warn("release-consistent payload does not decode; acquiring every release", "lock", ev.Name, "err", err)
			return rc.Payload{}, true
		}
		ps = append(ps, x)
	}
	return rc.Merge(ps...), ev.PayloadLost
}

// errNoRC is the answer to a release or acquire on a cluster without a
// release-consistent area.
var errNoRC = errors.New("the cluster keeps no release-consistent area (start it with --rc-size)")
