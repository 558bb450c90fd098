package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"time"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/coherence/rc"
	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/lockmgr"
)

// LockTick is the period of the lock manager's clock: its leases are
// counted in these ticks (lockmgr.DefaultConfig: a holder believes 2 s, the
// home enforces 2.5 s, renewals every 500 ms).
const LockTick = 10 * time.Millisecond

// LockInfo is a lock homed on this node, as dsmnode status shows it.
type LockInfo struct {
	Name    string   `json:"name"`
	Kind    string   `json:"kind"`
	Mode    string   `json:"mode,omitempty"`
	Holders []string `json:"holders"`
	Waiters int      `json:"waiters"`
	Token   uint64   `json:"token"`
	Lease   string   `json:"lease_left,omitempty"`
}

// String is the one-line form status prints.
func (l LockInfo) String() string {
	return fmt.Sprintf("%s %s holders %v, %d waiting, token %#x, lease left %s", l.Kind, l.Mode, l.Holders, l.Waiters, l.Token, l.Lease)
}

// pendingLock is a program's request waiting for its event.
type pendingLock struct {
	conn *net.UnixConn
	id   uint64
	bin  bool      // answer in the binary encoding (ctl.LockMsg)
	at   time.Time // when the request began to wait (for the metrics)
}

type lockKey struct {
	client, req uint64
}

// lockState is the node's half of the lock manager.
type lockState struct {
	eng      *lockmgr.Engine
	pending  map[lockKey]pendingLock
	clients  map[int]map[uint64]bool  // program id -> its client ids
	conns    map[uint64]*net.UnixConn // client id -> its program's connection, for unsolicited events
	lastTick time.Time

	// For the layout analyzer (see grantedLocks): the exclusive locks
	// granted to this node's programs, the sorted names of those (nil when
	// to be rebuilt), and the names granted when this node last got write
	// access to a page.
	granted map[string]map[uint64]struct{} // lock name -> clients
	names   []string
	began   map[coherence.PageID][]string
}

func (n *Node) initLocks(fresh bool) error {
	ring := dht.ClusterRing(n.cfg.Nodes)
	home := func(name string) lockmgr.NodeID { return ring.HomeOfString(name) }
	cfg := lockmgr.DefaultConfig(lockmgr.NodeID(n.cfg.ID), n.cfg.Nodes, home, uint32(time.Now().Unix()))
	cfg.FreshStart = fresh
	eng, err := lockmgr.New(cfg)
	if err != nil {
		return fmt.Errorf("lock manager: %w", err)
	}
	n.locks = lockState{eng: eng, pending: map[lockKey]pendingLock{}, clients: map[int]map[uint64]bool{},
		conns: map[uint64]*net.UnixConn{}, lastTick: time.Now()}
	return nil
}

// lockKinds maps the kinds of the JSON lock requests to the binary ops.
var lockKinds = map[string]ctl.LockOp{
	"lock": ctl.LockOpLock, "lockcached": ctl.LockOpLockCached, "rlock": ctl.LockOpRLock,
	"unlock": ctl.LockOpUnlock, "cancel": ctl.LockOpCancel, "barrier": ctl.LockOpBarrier,
	"campaign": ctl.LockOpCampaign, "resign": ctl.LockOpResign, "holding": ctl.LockOpHolding,
	"leader": ctl.LockOpLeader,
}

// lockRequest serves one lock request from a program in JSON (ctl.OpLock).
// The dsm library sends the binary form (lockBinary); this one stays for
// tools and older libraries.
func (n *Node) lockRequest(ctx context.Context, c *net.UnixConn, p *prog, r ctl.Request) {
	var a ctl.LockArgs
	if err := json.Unmarshal(r.Args, &a); err != nil {
		reply(c, r.ID, nil, fmt.Errorf("bad lock request: %w", err))
		return
	}
	op, ok := lockKinds[a.Kind]
	if !ok {
		reply(c, r.ID, ctl.LockReply{}, fmt.Errorf("unknown lock request %q", a.Kind))
		return
	}
	if a.Count < 0 || a.Count > 1<<31 {
		reply(c, r.ID, nil, fmt.Errorf("barrier count %d out of range", a.Count))
		return
	}
	n.serveLock(func(fn func()) error { return n.do(ctx, fn) }, c, p, ctl.LockMsg{Op: op, ID: r.ID, Client: a.Client, Req: a.Req, Count: uint32(a.Count), Text: a.Name}, false)
}

// lockBinary serves one lock request from a program in the binary encoding.
func (n *Node) lockBinary(ctx context.Context, c *net.UnixConn, p *prog, b []byte) {
	m, err := ctl.ParseLockMsg(b)
	if err != nil {
		// Without a request id there is nobody to answer.
		n.log.Warn("malformed lock request dropped", "pid", p.pid, "err", err)
		return
	}
	run := func(fn func()) error { return n.do(ctx, fn) }
	if m.Op == ctl.LockOpPrefetch {
		n.prefetch(run, p, m.Text)
		return
	}
	n.serveLock(run, c, p, m, true)
}

// onLoop runs fn at once: for requests the loop serves, which holds n.mu
// and applies what the engines produced after the batch.
func onLoop(fn func()) error {
	fn()
	return nil
}

// prefetch serves a program's prefetch hints (dsm's Region.Prefetch): the
// pager asks for the pages of each range that are not there yet, as
// faults would, and nobody waits for them. All the hints of a message are
// served in one batch, so that their requests share datagrams. Hints on
// the release-consistent area go to its engine (rcPrefetch). The program
// checked the ranges; hints outside the region are dropped
// and logged, as nobody waits for an answer.
func (n *Node) prefetch(run func(func()) error, p *prog, text string) {
	hints, err := ctl.ParsePrefetchHints(text, nil)
	if err != nil {
		n.log.Warn("malformed prefetch hints dropped", "pid", p.pid, "err", err)
		return
	}
	ps := uint64(n.ps)
	run(func() {
		for _, h := range hints {
			if h.Size == 0 {
				continue
			}
			if h.Off >= n.cfg.Size || h.Size > n.cfg.Size-h.Off {
				n.log.Warn("prefetch outside the region dropped", "pid", p.pid, "offset", h.Off, "size", h.Size, "region", n.cfg.Size)
				continue
			}
			lo, hi := coherence.PageID(h.Off/ps), coherence.PageID((h.Off+h.Size+ps-1)/ps)
			if n.rcs != nil {
				// Three pieces at most: below, in and above the area.
				if lo < n.rcs.lo {
					n.pg.Prefetch(lo, min(hi, n.rcs.lo), h.Write)
				}
				if a, b := max(lo, n.rcs.lo), min(hi, n.rcs.hi); a < b {
					n.rcPrefetch(a, b, h.Write)
				}
				lo = max(lo, n.rcs.hi)
			}
			if lo < hi {
				n.pg.Prefetch(lo, hi, h.Write)
			}
		}
	})
}

// lockAnswer sends the answer to request id of a program, in the encoding
// of the request.
func lockAnswer(c *net.UnixConn, bin bool, id uint64, rep ctl.LockMsg, err error) {
	if !bin {
		body := ctl.LockReply{Token: rep.Token, Generation: rep.Gen, Held: rep.Flags&ctl.LockHeld != 0,
			LeaderNode: int(rep.Node), Leader: rep.Flags&ctl.LockLeader != 0}
		reply(c, id, body, err)
		return
	}
	if id == 0 {
		return // the program wants no answer (a release from its event reader)
	}
	rep.Op, rep.ID = ctl.LockOpReply, id
	if err != nil {
		rep.Flags |= ctl.LockFailed
		rep.Text = err.Error()
	}
	ctl.WriteLock(c, &rep)
}

// serveLock serves one lock request that came on connection c, with run:
// n.do on the connection's goroutine, or onLoop on the loop (the program's
// lock stream). Requests that wait (lock, rlock, barrier, campaign) are
// answered when the engine's event comes.
func (n *Node) serveLock(run func(func()) error, c *net.UnixConn, p *prog, a ctl.LockMsg, bin bool) {
	var now *ctl.LockMsg
	var nowErr error
	err := run(func() {
		c = p.replyConn(c, &a)
		if a.Client >= 1<<32 {
			now, nowErr = &ctl.LockMsg{}, errors.New("lock client id out of range")
			return
		}
		client := uint64(p.id)<<32 | a.Client
		set := n.locks.clients[p.id]
		if set == nil {
			set = map[uint64]bool{}
			n.locks.clients[p.id] = set
		}
		set[client] = true
		// Events (recalls, losses) go on the program's first connection,
		// which its reader goroutine always reads; c may be a joined one,
		// read only while a call waits on it.
		n.locks.conns[client] = p.conn
		e := n.locks.eng
		wait := func() {
			n.locks.pending[lockKey{client, a.Req}] = pendingLock{conn: c, id: a.ID, bin: bin, at: time.Now()}
		}
		// With a release-consistent area, a request waits for the
		// releases queued before it (rcAfter).
		after := func(fn func()) { fn() }
		if n.rcs != nil {
			after = n.rcAfter
		}
		switch a.Op {
		case ctl.LockOpLock:
			wait()
			name, req := a.Text, a.Req
			after(func() { e.Lock(name, lockmgr.Exclusive, client, req) })
		case ctl.LockOpLockCached:
			wait()
			name, req := a.Text, a.Req
			after(func() { e.LockCached(name, client, req) })
		case ctl.LockOpRLock:
			wait()
			name, req := a.Text, a.Req
			after(func() { e.Lock(name, lockmgr.SharedMode, client, req) })
		case ctl.LockOpCampaign:
			wait()
			e.Campaign(a.Text, client, a.Req)
		case ctl.LockOpBarrier:
			wait()
			if n.rcs != nil {
				// The arrival waits until this node's
				// release-consistent writes are at their homes, and
				// carries the clock that says so.
				name, count, req := a.Text, int(a.Count), a.Req
				n.rcSync(false, false, rc.Payload{}, func(pl *rc.Payload) {
					e.BarrierWithPayload(name, count, client, req, pl.MarshalPayload())
				})
				break
			}
			e.Barrier(a.Text, int(a.Count), client, a.Req)
		case ctl.LockOpUnlock:
			if n.rcs != nil {
				// The lock leaves this program: first its
				// release-consistent writes go home, then the lock
				// goes, carrying the clock the next holder acquires.
				// The program does not wait for it (an Unlock that
				// gives a cached lock back never did); an error is
				// logged.
				name, last := a.Text, a.Token
				now = &ctl.LockMsg{}
				n.rcSync(false, false, rc.Payload{}, func(pl *rc.Payload) {
					if err := e.UnlockWithPayload(name, client, last, pl.MarshalPayload()); err != nil {
						n.log.Warn("unlock after the release-consistent release", "lock", name, "err", err)
					}
					n.dropGrant(name, client)
				})
				break
			}
			now, nowErr = &ctl.LockMsg{}, e.UnlockCached(a.Text, client, a.Token)
			n.dropGrant(a.Text, client)
		case ctl.LockOpResign:
			now, nowErr = &ctl.LockMsg{}, e.Resign(a.Text, client)
		case ctl.LockOpCancel:
			e.Cancel(a.Text, client, a.Req)
			now = &ctl.LockMsg{}
		case ctl.LockOpHolding:
			// After a stall (SIGSTOP, a long pause) the loop may not have
			// counted the lock manager's ticks yet: count them, so that a
			// belief that ran out meanwhile is not reported as held.
			n.tickLocks(time.Now())
			tok, ok := e.Holding(a.Text, client)
			now = &ctl.LockMsg{Token: tok}
			if left, held := e.BeliefLeft(a.Text, client); ok && held {
				now.Flags = ctl.LockHeld
				now.Count = uint32(min(time.Duration(left)*LockTick/time.Millisecond, 1<<31))
			}
		case ctl.LockOpLeader:
			info, ok := e.Leader(a.Text)
			now = &ctl.LockMsg{Node: info.Node, Token: info.Token}
			if ok {
				now.Flags = ctl.LockLeader
			}
		default:
			nowErr = fmt.Errorf("unknown lock request %d", a.Op)
			now = &ctl.LockMsg{}
		}
	})
	if err != nil {
		lockAnswer(c, bin, a.ID, ctl.LockMsg{}, err)
		return
	}
	if now != nil {
		lockAnswer(c, bin, a.ID, *now, nowErr)
	}
}

// releaseClientLocks releases every lock of a program that detached or died.
func (n *Node) releaseClientLocks(p *prog) {
	for client := range n.locks.clients[p.id] {
		n.locks.eng.ReleaseClient(client)
		n.dropClientGrants(client)
		delete(n.locks.conns, client)
		for k := range n.locks.pending {
			if k.client == client {
				delete(n.locks.pending, k)
			}
		}
	}
	delete(n.locks.clients, p.id)
}

func (n *Node) onLockMessage(from uint16, b []byte) {
	m, err := lockmgr.UnmarshalMessage(b)
	if err != nil {
		n.log.Warn("malformed lock message dropped", "peer", from, "err", err)
		return
	}
	if int(m.From) != int(from) {
		n.log.Warn("lock message claims another sender; dropped", "peer", from, "claims", m.From)
		return
	}
	if err := n.locks.eng.Step(m); err != nil {
		n.log.Warn("lock message refused", "peer", from, "err", err)
	}
}

// tickLocks advances the lock manager's clock by the ticks that elapsed.
func (n *Node) tickLocks(now time.Time) {
	for now.Sub(n.locks.lastTick) >= LockTick {
		n.locks.lastTick = n.locks.lastTick.Add(LockTick)
		n.locks.eng.Tick()
	}
}

// flushLocks sends the lock manager's messages and answers its events. It
// reports whether there was anything.
func (n *Node) flushLocks() bool {
	e := n.locks.eng
	if !e.HasReady() {
		return false
	}
	msgs, events := e.Ready()
	for i := range msgs {
		m := &msgs[i]
		if int(m.To) == n.cfg.ID {
			if err := e.Step(m); err != nil {
				n.log.Warn("local lock message refused", "err", err)
			}
			continue
		}
		n.flushBox(coherence.NodeID(m.To))
		b := m.AppendBinary([]byte{protoLock})
		if err := n.tr.Send(uint16(m.To), b); err != nil {
			n.log.Debug("lock send failed", "to", m.To, "err", err)
		}
	}
	for _, ev := range events {
		n.noteLockEvent(ev)
		k := lockKey{ev.Client, ev.Req}
		pl, ok := n.locks.pending[k]
		switch ev.Kind {
		case lockmgr.Granted, lockmgr.BarrierDone, lockmgr.Refused:
			if !ok {
				continue
			}
			delete(n.locks.pending, k)
			n.stats.metrics.lockWaited(ev.Kind, time.Since(pl.at))
			var err error
			if ev.Kind == lockmgr.Refused {
				err = ev.Err
			}
			rep := ctl.LockMsg{Token: ev.Token, Limit: ev.Limit, Gen: ev.Generation}
			if ev.Recall {
				rep.Flags = ctl.LockRecall
			}
			if n.rcs != nil && err == nil && (ev.Kind == lockmgr.BarrierDone || ev.Space == lockmgr.SpaceLock) {
				// The program goes on once this node has acquired
				// what the releases before the grant (or the other
				// arrivals) wrote.
				p, all := n.acquirePayload(ev)
				n.rcSync(true, all, p, func(*rc.Payload) { lockAnswer(pl.conn, pl.bin, pl.id, rep, nil) })
				continue
			}
			lockAnswer(pl.conn, pl.bin, pl.id, rep, err)
		case lockmgr.Recalled, lockmgr.Lost:
			if ev.Kind == lockmgr.Lost {
				n.log.Warn("lock lost", "name", ev.Name, "client", ev.Client, "token", ev.Token, "err", ev.Err)
			}
			// A program that keeps the lock cached must hear of
			// both at once: it gives the lock back, or stops
			// re-granting it to itself.
			c := n.locks.conns[ev.Client]
			if c == nil || ev.Space != lockmgr.SpaceLock {
				continue
			}
			m := ctl.LockMsg{Op: ctl.LockOpRecalled, Client: ev.Client & (1<<32 - 1), Req: ev.Req, Token: ev.Token, Text: ev.Name}
			if ev.Kind == lockmgr.Lost {
				m.Op = ctl.LockOpLost
			}
			if err := ctl.WriteLock(c, &m); err != nil {
				n.log.Debug("lock event not delivered", "client", ev.Client, "err", err)
			}
		}
	}
	return true
}

func (n *Node) lockInfo() []LockInfo {
	var out []LockInfo
	for _, l := range n.locks.eng.Locks() {
		out = append(out, lockInfoOf(l))
	}
	return out
}

func lockInfoOf(l lockmgr.LockStatus) LockInfo {
	li := LockInfo{Name: l.Name, Kind: l.Space.String(), Waiters: len(l.Waiters)}
	if l.Mode != 0 {
		li.Mode = l.Mode.String()
	}
	var lease int64 = -1
	for _, h := range l.Holders {
		li.Holders = append(li.Holders, fmt.Sprintf("node %d client %#x", h.Node, h.Client))
		li.Token = max(li.Token, h.Token)
		if lease < 0 || h.LeaseLeft < lease {
			lease = h.LeaseLeft
		}
	}
	if lease >= 0 {
		li.Lease = (time.Duration(lease) * LockTick).String()
	}
	return li
}

// Locks for the layout analyzer. The record of a page leaving this node
// carries the locks this node held when it began writing the page, and
// those of them it still holds as the page leaves (analyzer.Migration.Locks
// and Kept): a lock that moves with the page from node to node orders the
// writes, which tells data that nodes update under a lock from data they
// write without one. The daemon learns the locks granted to its programs
// from the lock manager's events: a lock is granted from its Granted event
// until its program unlocks it for good, loses it or detaches. A lock that
// a program keeps cached after Unlock stays granted until the home recalls
// it, which suits the analyzer: the lock, and so the page, can move to
// another node only through a recall.

// maxRecordedLocks bounds the locks a record lists: the writes of a node
// that holds more are recorded with unknown locks. Bank shards, a few
// tables: programs hold a handful.
const maxRecordedLocks = 64

// noLocks is the Locks of a record whose node held no lock: known, and
// empty. Shared, never modified.
var noLocks = []string{}

// noteLockEvent keeps the granted locks up to date with an event of the lock
// manager.
func (n *Node) noteLockEvent(ev lockmgr.Event) {
	if ev.Space != lockmgr.SpaceLock {
		return
	}
	switch {
	case ev.Kind == lockmgr.Granted && ev.Mode == lockmgr.Exclusive:
		if _, ok := n.locks.eng.Holding(ev.Name, ev.Client); !ok {
			return // released since (its program detached)
		}
		l := &n.locks
		if l.granted == nil {
			l.granted = make(map[string]map[uint64]struct{})
		}
		cs := l.granted[ev.Name]
		if cs == nil {
			cs = make(map[uint64]struct{})
			l.granted[ev.Name] = cs
			l.names = nil
		}
		cs[ev.Client] = struct{}{}
	case ev.Kind == lockmgr.Lost:
		n.dropGrant(ev.Name, ev.Client)
	}
}

// dropGrant forgets that lock name is granted to client.
func (n *Node) dropGrant(name string, client uint64) {
	l := &n.locks
	cs := l.granted[name]
	if cs == nil {
		return
	}
	delete(cs, client)
	if len(cs) == 0 {
		delete(l.granted, name)
		l.names = nil
	}
}

// dropClientGrants forgets every lock granted to client.
func (n *Node) dropClientGrants(client uint64) {
	for name, cs := range n.locks.granted {
		if _, ok := cs[client]; ok {
			n.dropGrant(name, client)
		}
	}
}

// grantedLocks returns the sorted names of the exclusive locks granted to
// this node's programs, held or kept cached (nil when there are none), and
// false when there are more than maxRecordedLocks. The slice is shared until
// the set changes, so that the fault path does not allocate; nobody may
// modify it.
func (n *Node) grantedLocks() ([]string, bool) {
	l := &n.locks
	if len(l.granted) > maxRecordedLocks {
		return nil, false
	}
	if len(l.granted) > 0 && l.names == nil {
		l.names = slices.Sorted(maps.Keys(l.granted))
	}
	return l.names, true
}

// noteWriteLocks remembers the locks granted to this node as it gets write
// access to page p, on the fault path: the locks under which its programs
// go on to write the page. It costs a map deletion when the node holds no
// lock.
func (n *Node) noteWriteLocks(p coherence.PageID) {
	l := &n.locks
	locks, ok := n.grantedLocks()
	if ok && locks == nil {
		delete(l.began, p)
		return
	}
	if l.began == nil {
		l.began = make(map[coherence.PageID][]string)
	}
	if _, budget := n.pg.Twins(); len(l.began) >= 2*budget {
		// A page that left without a record (its twin was forgotten,
		// or it was dropped) keeps its entry: forget the entries that
		// can no longer be used, which leaves at most one per twin.
		for q := range l.began {
			if !n.pg.HasTwin(q) {
				delete(l.began, q)
			}
		}
	}
	l.began[p] = locks // nil: too many to list
}

// writeLocks returns, for the record of page p leaving this node, the locks
// granted to this node when it got write access to the page (empty when
// none, nil when unknown), and those of them it still holds.
func (n *Node) writeLocks(p coherence.PageID) (locks, kept []string) {
	l := &n.locks
	locks, ok := l.began[p]
	if !ok {
		return noLocks, nil
	}
	delete(l.began, p)
	for _, name := range locks {
		if _, held := l.granted[name]; held {
			kept = append(kept, name)
		}
	}
	return locks, kept
}
