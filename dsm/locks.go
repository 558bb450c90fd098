package dsm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dsmrt/dsm/internal/ctl"
)

// The lock manager's requests travel in the binary encoding of package ctl
// (ctl.LockMsg), not JSON: they are frequent and small.
//
// A Mutex keeps the lock after Unlock (it is cached in this program) until
// another node asks for it. The daemon keeps renewing the lease meanwhile,
// so taking the lock again is a few atomic operations in this program: no
// system call, no message. The lock's home recalls it when someone else
// wants it; the daemon tells the program (an unsolicited message read by
// the region's reader goroutine), which gives the lock back at once if it
// is not in use, or at its next Unlock. Each local re-acquisition has a
// fencing token of its own, one larger than the last, from a range the
// home reserved with the grant; the release tells the home the last one
// used, and the home's next grant is larger still (or larger than the whole
// range when the program or its node died without saying).

// A program re-grants a cached lock by itself for at most cacheTrust after
// its daemon last vouched for the lease (a grant, or an answer to
// LockOpHolding), and never closer than cacheMargin to the end of the
// daemon's belief, which ends before the home may grant the lock elsewhere
// (lockmgr: a holder believes 2 s, the home waits 2.5 s). So a program
// whose daemon stalls stops using the cache within cacheTrust and waits
// for the daemon, instead of holding the lock beside the next holder.
const (
	cacheTrust  = time.Second
	cacheMargin = 250 * time.Millisecond
)

// lockCall sends one lock-manager request to the daemon and waits for the
// answer. A request that waits (lock, barrier, campaign) is withdrawn when
// ctx ends, so that no ghost holder remains.
func (r *Region) lockCall(ctx context.Context, m ctl.LockMsg) (ctl.LockMsg, error) {
	var rep ctl.LockMsg
	err := r.callLock(ctx, &m, &rep)
	if err != nil && ctx.Err() != nil && m.Req != 0 {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c := ctl.LockMsg{Op: ctl.LockOpCancel, Text: m.Text, Client: m.Client, Req: m.Req}
		r.callLock(cctx, &c, nil)
	}
	return rep, err
}

// daemonError is a lock request's failure as the daemon's lock manager
// reported it; its text already names the lock.
type daemonError string

func (e daemonError) Error() string { return string(e) }

// callLock is call for a binary lock request: its reply is read by the
// calling goroutine on a reply connection when one is free
// (replyconn.go), and comes through the reader goroutine otherwise.
func (r *Region) callLock(ctx context.Context, m *ctl.LockMsg, rep *ctl.LockMsg) error {
	if rc, ok := r.takeReply(ctx); ok {
		return r.callLockOn(ctx, rc, m, rep)
	}
	r.mu.Lock()
	if err := r.usable(); err != nil {
		r.mu.Unlock()
		return err
	}
	r.nextID++
	m.ID = r.nextID
	ch := make(chan ctl.Reply, 1)
	r.calls[m.ID] = ch
	r.lockMsgs.Add(1)
	err := r.writeLock(m)
	if err != nil {
		delete(r.calls, m.ID)
	}
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("dsm: send lock request: %w", err)
	}
	select {
	case raw, ok := <-ch:
		if !ok {
			return ErrLost
		}
		got, err := ctl.ParseLockMsg(raw.Bin)
		if err != nil {
			return fmt.Errorf("dsm: lock reply: %w", err)
		}
		if got.Flags&ctl.LockFailed != 0 {
			return daemonError(got.Text)
		}
		if rep != nil {
			*rep = got
		}
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		delete(r.calls, m.ID)
		r.mu.Unlock()
		return ctx.Err()
	}
}

// sendLock sends a lock message that wants no answer. The caller holds
// r.mu.
func (r *Region) sendLockLocked(m *ctl.LockMsg) error {
	if err := r.usable(); err != nil {
		return err
	}
	r.lockMsgs.Add(1)
	return r.writeLock(m)
}

// usable reports why the region can no longer talk to its daemon. The
// caller holds r.mu.
func (r *Region) usable() error {
	if r.lost != nil {
		return r.lost
	}
	if r.closing {
		return errors.New("dsm: region closed")
	}
	return nil
}

// lockEvent handles a message the daemon sent on its own: a recall or the
// loss of a lock this program may keep cached.
func (r *Region) lockEvent(ev ctl.LockMsg) {
	r.mu.Lock()
	m := r.cached[ev.Client]
	r.mu.Unlock()
	if m != nil {
		m.event(ev)
	}
}

// newClient returns a lock client id unique within this program.
func (r *Region) newClient() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lockClients++
	return r.lockClients
}

// Mutex is a distributed mutual-exclusion lock. Its home node is the DHT
// home of its name; it grants in arrival order. A holder keeps a lease
// that its daemon renews; Token is the fencing token of the current hold.
// A Mutex may be shared by the goroutines of one program.
//
// After Unlock the program keeps the lock until another node (or another
// Mutex of the same name) asks for it, so that Lock on the same node again
// costs no message; see Held for what that means for observers.
type Mutex struct {
	r      *Region
	name   string
	client uint64
	cache  bool          // keep the lock after Unlock (not for elections)
	sem    chan struct{} // one goroutine of this program at a time

	mu    sync.Mutex
	req   uint64 // the last request id
	token uint64 // the token of the current (or last) hold

	// A hold granted by the daemon that this program keeps (cached):
	kept       bool      // held from the daemon, in use or not
	validUntil time.Time // re-grant by itself only before this; then ask the daemon
	inUse      bool      // between Lock and Unlock
	recalled   bool      // the home wants it back
	limit      uint64    // the largest token the program may give itself
	holdReq    uint64    // the request that got the hold
	// Events that arrived before the answer to the request they concern
	// (the region's reader may run ahead of the goroutine that asked).
	recalledReq, lostReq uint64
}

// Mutex returns the distributed mutex called name.
func (r *Region) Mutex(name string) *Mutex {
	return &Mutex{r: r, name: name, client: r.newClient(), cache: true, sem: make(chan struct{}, 1)}
}

// Lock blocks until the lock is held or ctx ends.
func (m *Mutex) Lock(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	if m.kept && !m.recalled && m.token < m.limit && !time.Now().Before(m.validUntil) {
		// The cache is only as good as the daemon's belief in the lease,
		// and a daemon that stalls (SIGSTOP, a long pause) cannot say it
		// lost the lock: ask it again before using the cache further.
		m.mu.Unlock()
		rep, err := m.r.lockCall(ctx, ctl.LockMsg{Op: ctl.LockOpHolding, Text: m.name, Client: m.client})
		if err != nil {
			<-m.sem
			return fmt.Errorf("dsm: lock %q: confirm the cached lock: %w", m.name, err)
		}
		m.mu.Lock()
		left := time.Duration(rep.Count) * time.Millisecond
		if rep.Flags&ctl.LockHeld != 0 && left > cacheMargin {
			m.validUntil = time.Now().Add(min(cacheTrust, left-cacheMargin))
		} else {
			m.validUntil = time.Time{}
			m.recalled = true // no longer trusted: give it back below
		}
	}
	if m.kept && !m.recalled && m.token < m.limit {
		// Nobody else asked since this program last held it.
		m.token++
		m.inUse = true
		m.mu.Unlock()
		return nil
	}
	if m.kept {
		// Its range of tokens is used up: give it back and ask anew.
		err := m.releaseLocked()
		if err != nil {
			m.mu.Unlock()
			<-m.sem
			return fmt.Errorf("dsm: lock %q: give back the cached lock: %w", m.name, err)
		}
	}
	m.mu.Unlock()
	return m.acquire(ctx, ctl.LockOpLockCached)
}

// acquire asks the daemon for the lock (op LockOpLockCached) or the
// leadership (LockOpCampaign). The caller holds m.sem.
func (m *Mutex) acquire(ctx context.Context, op ctl.LockOp) error {
	m.mu.Lock()
	m.req++
	req := m.req
	if op == ctl.LockOpLockCached {
		// Events about this hold may come before the answer.
		m.r.mu.Lock()
		if m.r.cached == nil {
			m.r.cached = map[uint64]*Mutex{}
		}
		m.r.cached[m.client] = m
		m.r.mu.Unlock()
	}
	m.mu.Unlock()
	rep, err := m.r.lockCall(ctx, ctl.LockMsg{Op: op, Text: m.name, Client: m.client, Req: req})
	if err != nil {
		<-m.sem
		if _, named := err.(daemonError); named {
			return fmt.Errorf("dsm: %w", err) // the lock manager named the lock
		}
		return fmt.Errorf("dsm: %s %q: %w", opName(op), m.name, err)
	}
	m.mu.Lock()
	m.token = rep.Token
	if op == ctl.LockOpLockCached && m.lostReq != req {
		m.kept, m.inUse, m.holdReq = true, true, req
		// The daemon's belief in the lease was just renewed by the grant.
		m.validUntil = time.Now().Add(cacheTrust)
		m.limit = max(rep.Limit, rep.Token)
		m.recalled = rep.Flags&ctl.LockRecall != 0 || m.recalledReq == req
	}
	m.mu.Unlock()
	return nil
}

func opName(op ctl.LockOp) string {
	if op == ctl.LockOpCampaign {
		return "campaign"
	}
	return "lock"
}

// Unlock releases the lock. The program keeps it for its next Lock unless
// another node asked for it meanwhile.
func (m *Mutex) Unlock() error {
	m.mu.Lock()
	if m.kept && m.inUse {
		m.inUse = false
		if !m.recalled && m.token < m.limit {
			m.mu.Unlock()
			m.releaseSem()
			return nil
		}
		err := m.releaseLocked()
		m.mu.Unlock()
		m.releaseSem()
		if err != nil {
			return fmt.Errorf("dsm: unlock %q: %w", m.name, err)
		}
		return nil
	}
	m.mu.Unlock()
	// Not kept: the daemon answers (an error if the lock was lost).
	_, err := m.r.lockCall(context.Background(), ctl.LockMsg{Op: ctl.LockOpUnlock, Text: m.name, Client: m.client})
	m.releaseSem()
	if err != nil {
		return fmt.Errorf("dsm: unlock %q: %w", m.name, err)
	}
	return nil
}

func (m *Mutex) releaseSem() {
	select {
	case <-m.sem:
	default:
	}
}

// releaseLocked gives a kept lock back to the daemon, telling it the last
// token used. It does not wait for an answer: the caller holds m.mu, which
// the region's reader may need before it can read any answer. The release
// is written before m.mu is released, so it reaches the daemon before any
// later request of this Mutex.
func (m *Mutex) releaseLocked() error {
	m.kept = false
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	delete(m.r.cached, m.client)
	return m.r.sendLockLocked(&ctl.LockMsg{Op: ctl.LockOpUnlock, Text: m.name, Client: m.client, Token: m.token})
}

// event applies a recall or a loss reported by the daemon.
func (m *Mutex) event(ev ctl.LockMsg) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.kept || m.holdReq != ev.Req {
		// The answer to the request has not been seen yet (or the
		// event is about a hold already given back).
		if ev.Req > m.holdReq {
			if ev.Op == ctl.LockOpRecalled {
				m.recalledReq = ev.Req
			} else {
				m.lostReq = ev.Req
			}
		}
		return
	}
	switch ev.Op {
	case ctl.LockOpRecalled:
		m.recalled = true
		if !m.inUse {
			m.releaseLocked()
		}
	case ctl.LockOpLost:
		// The daemon no longer holds it: no more re-grants. An Unlock
		// in progress reports the loss.
		m.kept = false
		m.r.mu.Lock()
		delete(m.r.cached, m.client)
		m.r.mu.Unlock()
	}
}

// Token is the fencing token of the current (or last) hold: strictly
// increasing per lock across holders and failures, including the holds a
// program takes again from its cache. Pass it to whatever the lock
// protects so that a stale holder can be refused.
func (m *Mutex) Token() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.token
}

// Held reports whether this program still believes it holds the lock: it
// turns false when the lease could not be renewed in time, before the home
// may grant the lock to anyone else. A lock kept cached after Unlock is
// not held.
func (m *Mutex) Held(ctx context.Context) (bool, error) {
	m.mu.Lock()
	idle := m.kept && !m.inUse
	m.mu.Unlock()
	if idle {
		return false, nil
	}
	rep, err := m.r.lockCall(ctx, ctl.LockMsg{Op: ctl.LockOpHolding, Text: m.name, Client: m.client})
	return rep.Flags&ctl.LockHeld != 0, err
}

// RWMutex is a distributed reader/writer lock: readers share, a writer is
// alone, and a waiting writer stops new readers from overtaking it. The
// write side is kept cached like a Mutex; read locks are not.
type RWMutex struct {
	r    *Region
	name string
	w    *Mutex
	mu   sync.Mutex
	rd   []uint64 // clients holding a read lock
	req  uint64
}

// RWMutex returns the distributed reader/writer lock called name.
func (r *Region) RWMutex(name string) *RWMutex {
	return &RWMutex{r: r, name: name, w: r.Mutex(name)}
}

// Lock takes the lock for writing.
func (rw *RWMutex) Lock(ctx context.Context) error { return rw.w.Lock(ctx) }

// Unlock releases the write lock.
func (rw *RWMutex) Unlock() error { return rw.w.Unlock() }

// RLock takes the lock for reading. Each concurrent reader of the program
// is a holder of its own.
func (rw *RWMutex) RLock(ctx context.Context) error {
	client := rw.r.newClient()
	rw.mu.Lock()
	rw.req++
	req := rw.req
	rw.mu.Unlock()
	if _, err := rw.r.lockCall(ctx, ctl.LockMsg{Op: ctl.LockOpRLock, Text: rw.name, Client: client, Req: req}); err != nil {
		return fmt.Errorf("dsm: rlock %q: %w", rw.name, err)
	}
	rw.mu.Lock()
	rw.rd = append(rw.rd, client)
	rw.mu.Unlock()
	return nil
}

// RUnlock releases one read lock.
func (rw *RWMutex) RUnlock() error {
	rw.mu.Lock()
	if len(rw.rd) == 0 {
		rw.mu.Unlock()
		return fmt.Errorf("dsm: runlock %q: not read-locked", rw.name)
	}
	client := rw.rd[len(rw.rd)-1]
	rw.rd = rw.rd[:len(rw.rd)-1]
	rw.mu.Unlock()
	if _, err := rw.r.lockCall(context.Background(), ctl.LockMsg{Op: ctl.LockOpUnlock, Text: rw.name, Client: client}); err != nil {
		return fmt.Errorf("dsm: runlock %q: %w", rw.name, err)
	}
	return nil
}

// Barrier blocks until count participants (across all nodes) have called
// Barrier with the same name, then lets them all go. A name can be used
// again for the next phase.
func (r *Region) Barrier(ctx context.Context, name string, count int) error {
	if count < 1 || count > 1<<31 {
		return fmt.Errorf("dsm: barrier %q: count %d out of range", name, count)
	}
	r.mu.Lock()
	if r.barriers == nil {
		r.barriers = map[string]*barrierState{}
	}
	b := r.barriers[name]
	if b == nil {
		b = &barrierState{sem: make(chan struct{}, 1)}
		r.barriers[name] = b
	}
	r.mu.Unlock()
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.sem }()
	if b.client == 0 {
		b.client = r.newClient()
	}
	b.req++
	if _, err := r.lockCall(ctx, ctl.LockMsg{Op: ctl.LockOpBarrier, Text: name, Client: b.client, Req: b.req, Count: uint32(count)}); err != nil {
		return fmt.Errorf("dsm: barrier %q: %w", name, err)
	}
	return nil
}

type barrierState struct {
	sem    chan struct{}
	client uint64
	req    uint64
}

// Election is a leader election: at most one campaigner leads at a time,
// until it resigns or its program or node dies. Leadership is never kept
// cached: Resign gives it up at once.
type Election struct{ m *Mutex }

// Election returns the election called name.
func (r *Region) Election(name string) *Election {
	return &Election{m: &Mutex{r: r, name: name, client: r.newClient(), sem: make(chan struct{}, 1)}}
}

// Campaign blocks until this program leads or ctx ends.
func (e *Election) Campaign(ctx context.Context) error {
	select {
	case e.m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	return e.m.acquire(ctx, ctl.LockOpCampaign)
}

// Resign gives up the leadership.
func (e *Election) Resign() error {
	_, err := e.m.r.lockCall(context.Background(), ctl.LockMsg{Op: ctl.LockOpResign, Text: e.m.name, Client: e.m.client})
	e.m.releaseSem()
	return err
}

// Token is the leadership's fencing token.
func (e *Election) Token() uint64 { return e.m.Token() }

// Leader reports which node leads, as the node last heard (ok is false when
// no leader is known yet; ask again a little later).
func (e *Election) Leader(ctx context.Context) (leader int, ok bool, err error) {
	rep, err := e.m.r.lockCall(ctx, ctl.LockMsg{Op: ctl.LockOpLeader, Text: e.m.name})
	return int(rep.Node), rep.Flags&ctl.LockLeader != 0, err
}
