package dsm

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/dsmrt/dsm/internal/ctl"
)

// lockCall sends one lock-manager request to the daemon. A request that
// waits (lock, barrier, campaign) is withdrawn when ctx ends, so that no
// ghost holder remains.
func (r *Region) lockCall(ctx context.Context, a ctl.LockArgs) (ctl.LockReply, error) {
	args, err := json.Marshal(a)
	if err != nil {
		return ctl.LockReply{}, err
	}
	var rep ctl.LockReply
	err = r.call(ctx, ctl.Request{Op: ctl.OpLock, Args: args}, &rep)
	if err != nil && ctx.Err() != nil && a.Req != 0 {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c := ctl.LockArgs{Kind: "cancel", Name: a.Name, Client: a.Client, Req: a.Req}
		b, _ := json.Marshal(c)
		r.call(cctx, ctl.Request{Op: ctl.OpLock, Args: b}, nil)
	}
	return rep, err
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
type Mutex struct {
	r      *Region
	name   string
	client uint64
	sem    chan struct{} // one goroutine of this program at a time
	mu     sync.Mutex
	req    uint64
	token  uint64
}

// Mutex returns the distributed mutex called name.
func (r *Region) Mutex(name string) *Mutex {
	return &Mutex{r: r, name: name, client: r.newClient(), sem: make(chan struct{}, 1)}
}

// Lock blocks until the lock is held or ctx ends.
func (m *Mutex) Lock(ctx context.Context) error { return m.acquire(ctx, "lock") }

// acquire takes the lock (kind "lock") or the leadership ("campaign").
func (m *Mutex) acquire(ctx context.Context, kind string) error {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	m.req++
	req := m.req
	m.mu.Unlock()
	rep, err := m.r.lockCall(ctx, ctl.LockArgs{Kind: kind, Name: m.name, Client: m.client, Req: req})
	if err != nil {
		<-m.sem
		return fmt.Errorf("dsm: %s %q: %w", kind, m.name, err)
	}
	m.mu.Lock()
	m.token = rep.Token
	m.mu.Unlock()
	return nil
}

// Unlock releases the lock.
func (m *Mutex) Unlock() error {
	_, err := m.r.lockCall(context.Background(), ctl.LockArgs{Kind: "unlock", Name: m.name, Client: m.client})
	select {
	case <-m.sem:
	default:
	}
	if err != nil {
		return fmt.Errorf("dsm: unlock %q: %w", m.name, err)
	}
	return nil
}

// Token is the fencing token of the current (or last) hold: strictly
// increasing per lock across holders and failures. Pass it to whatever the
// lock protects so that a stale holder can be refused.
func (m *Mutex) Token() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.token
}

// Held reports whether this program still believes it holds the lock: it
// turns false when the lease could not be renewed in time, before the home
// may grant the lock to anyone else.
func (m *Mutex) Held(ctx context.Context) (bool, error) {
	rep, err := m.r.lockCall(ctx, ctl.LockArgs{Kind: "holding", Name: m.name, Client: m.client})
	return rep.Held, err
}

// RWMutex is a distributed reader/writer lock: readers share, a writer is
// alone, and a waiting writer stops new readers from overtaking it.
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
	if _, err := rw.r.lockCall(ctx, ctl.LockArgs{Kind: "rlock", Name: rw.name, Client: client, Req: req}); err != nil {
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
	if _, err := rw.r.lockCall(context.Background(), ctl.LockArgs{Kind: "unlock", Name: rw.name, Client: client}); err != nil {
		return fmt.Errorf("dsm: runlock %q: %w", rw.name, err)
	}
	return nil
}

// Barrier blocks until count participants (across all nodes) have called
// Barrier with the same name, then lets them all go. A name can be used
// again for the next phase.
func (r *Region) Barrier(ctx context.Context, name string, count int) error {
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
	if _, err := r.lockCall(ctx, ctl.LockArgs{Kind: "barrier", Name: name, Client: b.client, Req: b.req, Count: count}); err != nil {
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
// until it resigns or its program or node dies.
type Election struct{ m *Mutex }

// Election returns the election called name.
func (r *Region) Election(name string) *Election { return &Election{m: r.Mutex(name)} }

// Campaign blocks until this program leads or ctx ends.
func (e *Election) Campaign(ctx context.Context) error { return e.m.acquire(ctx, "campaign") }

// Resign gives up the leadership.
func (e *Election) Resign() error {
	_, err := e.m.r.lockCall(context.Background(), ctl.LockArgs{Kind: "resign", Name: e.m.name, Client: e.m.client})
	select {
	case <-e.m.sem:
	default:
	}
	return err
}

// Token is the leadership's fencing token.
func (e *Election) Token() uint64 { return e.m.Token() }

// Leader reports which node leads, as the node last heard (ok is false when
// no leader is known yet; ask again a little later).
func (e *Election) Leader(ctx context.Context) (leader int, ok bool, err error) {
	rep, err := e.m.r.lockCall(ctx, ctl.LockArgs{Kind: "leader", Name: e.m.name})
	return rep.LeaderNode, rep.Leader, err
}
