package lockmgr

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
)

// reqState is where a local request stands.
type reqState uint8

const (
	waiting reqState = iota + 1 // sent, not granted yet
	held                        // granted by the home
)

// request is a local client's lock or campaign request.
type request struct {
	lk        lockKey
	client    uint64
	req       uint64
	mode      Mode
	home      NodeID
	state     reqState
	token     uint64
	announced bool   // Granted was emitted
	cached    bool   // LockCached: the client may keep it and re-grant locally
	limit     uint64 // cached: the largest token the client may use
	recalled  bool   // cached: the home wants it back (told, or to be told with Granted)
	payload   []byte // the payload of the grant, for the Granted event
	lost      bool   // ... and its FlagPayloadLost
	believed  int64  // the lease as the holder believes it: held while now < believed
	confirmBy int64  // an unannounced grant is given up at this tick
	next      int64  // next retransmission or renewal
}

// op is a release or barrier leave that is retransmitted until acknowledged.
type op struct {
	msg    Message
	home   NodeID
	next   int64
	giveUp int64
}

// opKey identifies an op by the ack that ends it.
type opKey struct {
	lk    localKey
	req   uint64
	token uint64
}

func (a opKey) compare(b opKey) int {
	if c := a.lk.compare(b.lk); c != 0 {
		return c
	}
	if c := cmp.Compare(a.req, b.req); c != 0 {
		return c
	}
	return cmp.Compare(a.token, b.token)
}

// Lock asks for lock name in mode for client. req identifies the request:
// it must be larger than every request id the client used before (allocate
// them from a counter). The answer is a Granted or Refused event.
func (e *Engine) Lock(name string, mode Mode, client, req uint64) {
	e.acquire(SpaceLock, name, mode, client, req, false)
	e.drain()
}

// LockCached asks for lock name, exclusively, for a client that keeps it
// after use. Once Granted, the client may take and release the lock again
// by itself, without the engine, giving each hold a token of its own:
// Event.Token+1, Event.Token+2, ... up to Event.Limit. The engine renews
// the lease meanwhile, as for any hold. When another request comes, the
// home recalls the lock (a Recalled event, or Event.Recall on the grant);
// the client then stops re-granting and releases it with UnlockCached,
// passing the last token it used, as soon as it is not in use. A Lost
// event ends the cache at once. The home's next grant of the lock is
// larger than every token the client could have used, whether the release
// told it the last one or the holder vanished (a lease that ran out,
// ReleaseClient, a restarted node).
func (e *Engine) LockCached(name string, client, req uint64) {
	e.acquire(SpaceLock, name, Exclusive, client, req, true)
	e.drain()
}

// UnlockCached releases lock name held by client under LockCached; last
// is the last token the client used (the grant's, or its last re-grant's).
// A last outside the range the grant allowed is taken as the top of the
// range, which is always safe. It hands no payload on (see
// UnlockWithPayload).
func (e *Engine) UnlockCached(name string, client, last uint64) error {
	err := e.release(SpaceLock, name, client, last, nil)
	e.drain()
	return err
}

// UnlockWithPayload releases lock name held by client, like Unlock (or
// UnlockCached, with last, for a hold from LockCached; last is ignored
// otherwise), and hands payload to the lock's next holders: the home keeps
// the payload of the latest exclusive hold released with one, and every
// later grant of the lock carries it (Event.Payload) until a later release
// replaces it. The payload of a shared hold is dropped, since readers write
// nothing under the lock that the next holders would need to learn of; an
// empty payload leaves the kept one as it is. A payload larger than
// MaxPayload is refused with ErrPayloadTooLarge and the lock stays held.
// The engine copies payload.
func (e *Engine) UnlockWithPayload(name string, client, last uint64, payload []byte) error {
	if len(payload) > MaxPayload {
		return wrap(SpaceLock, name, fmt.Errorf("%w: %d bytes, at most %d", ErrPayloadTooLarge, len(payload), MaxPayload))
	}
	err := e.release(SpaceLock, name, client, last, payload)
	e.drain()
	return err
}

// Campaign asks for leadership of election name for client: an exclusive
// lock in the election namespace, held until Resign, ReleaseClient or the
// loss of the lease. The answer is a Granted (elected) or Refused event.
func (e *Engine) Campaign(name string, client, req uint64) {
	e.acquire(SpaceElection, name, Exclusive, client, req, false)
	e.drain()
}

// Unlock releases lock name held by client. It fails with ErrNotHeld if the
// client does not hold it (it may have been Lost; Cancel withdraws a
// request that is still waiting). It hands no payload on, and leaves the
// one the home keeps for the lock as it is (see UnlockWithPayload).
func (e *Engine) Unlock(name string, client uint64) error {
	err := e.release(SpaceLock, name, client, 0, nil)
	e.drain()
	return err
}

// Resign gives up the leadership of election name held by client.
func (e *Engine) Resign(name string, client uint64) error {
	err := e.release(SpaceElection, name, client, 0, nil)
	e.drain()
	return err
}

// Holding reports whether client still believes it holds lock name and
// with which fencing token. It turns false as soon as the lease the holder
// believes in runs out, which is before the home can grant the lock to
// anyone else.
func (e *Engine) Holding(name string, client uint64) (token uint64, ok bool) {
	return e.holding(lockKey{SpaceLock, name}, client)
}

// BeliefLeft reports how many ticks client may still believe it holds lock
// name (zero, false when it does not hold it). A program that re-grants a
// cached lock by itself must stop before this runs out.
func (e *Engine) BeliefLeft(name string, client uint64) (ticks int64, ok bool) {
	if _, held := e.holding(lockKey{SpaceLock, name}, client); !held {
		return 0, false
	}
	return e.reqs[localKey{lockKey{SpaceLock, name}, client}].believed - e.now, true
}

func (e *Engine) holding(lk lockKey, client uint64) (uint64, bool) {
	r := e.reqs[localKey{lk, client}]
	if r == nil || r.state != held || !r.announced || e.now >= r.believed {
		return 0, false
	}
	return r.token, true
}

// Cancel withdraws request req of client for name (a lock, campaign or
// barrier arrival), as when the caller's context is canceled. A waiting
// request is Refused with ErrCanceled. If the grant won the race and was
// already reported, the lock is released and reported Lost with
// ErrCanceled. The home is told, and a grant still in flight is released
// when it arrives, so no ghost holder remains. Cancel of a finished request
// does nothing.
func (e *Engine) Cancel(name string, client, req uint64) {
	defer e.drain()
	for _, sp := range [...]Space{SpaceLock, SpaceElection} {
		r := e.reqs[localKey{lockKey{sp, name}, client}]
		if r != nil && r.req == req {
			e.finish(r, ErrCanceled)
			e.track(r.home, Message{Type: MsgRelease, To: r.home, Space: sp, Name: name, Client: client, Req: req, Token: r.token})
			return
		}
	}
	k := localKey{lockKey{SpaceBarrier, name}, client}
	if a := e.arrivals[k]; a != nil && a.req == req {
		delete(e.arrivals, k)
		e.emit(Event{Kind: Refused, Space: SpaceBarrier, Name: name, Client: client, Req: req, Err: wrap(SpaceBarrier, name, ErrCanceled)})
		e.track(a.home, Message{Type: MsgLeave, To: a.home, Space: SpaceBarrier, Name: name, Client: client, Req: req})
	}
}

// ReleaseClient forgets client, whose program exited: its locks and
// leaderships are released and its waiting requests and barrier arrivals
// withdrawn, all without events.
func (e *Engine) ReleaseClient(client uint64) {
	defer e.drain()
	for _, k := range sortedKeys(e.reqs) {
		if k.client != client {
			continue
		}
		r := e.reqs[k]
		delete(e.reqs, k)
		e.track(r.home, Message{Type: MsgRelease, To: r.home, Space: k.lk.space, Name: k.lk.name, Client: client, Req: r.req, Token: r.token})
	}
	// Every barrier the client ever used is told that it is gone, so that
	// no late copy of its arrivals can count.
	names := make(map[string]struct{})
	for k := range e.arrivals {
		if k.client == client {
			names[k.lk.name] = struct{}{}
		}
	}
	for k := range e.lastGen {
		if k.client == client {
			names[k.lk.name] = struct{}{}
			delete(e.lastGen, k)
		}
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	slices.Sort(sorted)
	last := e.lastReq[client]
	for _, name := range sorted {
		delete(e.arrivals, localKey{lockKey{SpaceBarrier, name}, client})
		home, err := e.home(name)
		if err != nil {
			continue
		}
		e.track(home, Message{Type: MsgLeave, To: home, Space: SpaceBarrier, Name: name, Client: client, Req: last, Flags: FlagFinal})
	}
	delete(e.lastReq, client)
}

// checkRequest validates the common arguments of a request and returns the
// home of name.
func (e *Engine) checkRequest(sp Space, name string, client, req uint64) (NodeID, error) {
	if name == "" || len(name) > MaxNameLen {
		return 0, wrap(sp, name, fmt.Errorf("%w: name of %d bytes, want 1 to %d", ErrInvalid, len(name), MaxNameLen))
	}
	if req == 0 || req <= e.lastReq[client] {
		return 0, wrap(sp, name, fmt.Errorf("%w: request id %d of client %d is not above its last one, %d",
			ErrInvalid, req, client, e.lastReq[client]))
	}
	home, err := e.home(name)
	if err != nil {
		return 0, wrap(sp, name, err)
	}
	return home, nil
}

// acquire starts a lock or campaign request.
func (e *Engine) acquire(sp Space, name string, mode Mode, client, req uint64, cached bool) {
	refuse := func(err error) {
		e.emit(Event{Kind: Refused, Space: sp, Name: name, Client: client, Req: req, Err: err})
	}
	home, err := e.checkRequest(sp, name, client, req)
	if err != nil {
		refuse(err)
		return
	}
	if mode != Exclusive && mode != SharedMode {
		refuse(wrap(sp, name, fmt.Errorf("%w: mode %d, want Exclusive or SharedMode", ErrInvalid, mode)))
		return
	}
	e.lastReq[client] = req
	k := localKey{lockKey{sp, name}, client}
	if old := e.reqs[k]; old != nil {
		state := "waiting"
		if old.state == held {
			state = "held"
		}
		refuse(wrap(sp, name, fmt.Errorf("%w: request %d of client %d is still %s", ErrBusy, old.req, client, state)))
		return
	}
	r := &request{lk: k.lk, client: client, req: req, mode: mode, home: home, state: waiting, cached: cached}
	e.reqs[k] = r
	e.sendLock(r)
}

// sendLock (re)transmits a waiting request.
func (e *Engine) sendLock(r *request) {
	r.next = e.now + e.retryDelay()
	var flags uint8
	if r.cached {
		flags = FlagCache
	}
	e.send(Message{Type: MsgLock, To: r.home, Space: r.lk.space, Name: r.lk.name, Mode: r.mode,
		Client: r.client, Req: r.req, Stamp: e.now, Flags: flags})
}

// sendRenew sends a renewal of a granted request.
func (e *Engine) sendRenew(r *request) {
	r.next = e.now + e.retryDelay()
	e.send(Message{Type: MsgRenew, To: r.home, Space: r.lk.space, Name: r.lk.name,
		Client: r.client, Req: r.req, Token: r.token, Stamp: e.now})
}

// release ends a hold announced to the client. last is the last token a
// cached hold used (0: not known); payload goes to the next holders of an
// exclusive lock.
func (e *Engine) release(sp Space, name string, client, last uint64, payload []byte) error {
	k := localKey{lockKey{sp, name}, client}
	r := e.reqs[k]
	if r == nil || r.state != held || !r.announced {
		return wrap(sp, name, fmt.Errorf("%w by client %d", ErrNotHeld, client))
	}
	delete(e.reqs, k)
	if !r.cached {
		last = 0
	}
	msg := Message{Type: MsgRelease, To: r.home, Space: sp, Name: name, Client: client, Req: r.req, Token: r.token, Gen: last}
	if len(payload) > 0 && r.mode == Exclusive && sp == SpaceLock {
		// Retransmissions resend it: the caller's slice may change.
		msg.Mode, msg.Payload = Exclusive, bytes.Clone(payload)
	}
	e.track(r.home, msg)
	return nil
}

// finish ends a request with err: Lost if its grant was announced, Refused
// otherwise.
func (e *Engine) finish(r *request, err error) {
	delete(e.reqs, localKey{r.lk, r.client})
	ev := Event{Kind: Refused, Space: r.lk.space, Name: r.lk.name, Client: r.client, Req: r.req, Err: wrap(r.lk.space, r.lk.name, err)}
	if r.announced {
		ev.Kind, ev.Token = Lost, r.token
	}
	e.emit(ev)
}

// track sends msg now and again until it is acknowledged, the home is
// declared down, or long enough has passed that the home has cleaned up by
// itself.
func (e *Engine) track(home NodeID, msg Message) {
	k := opKey{localKey{lockKey{msg.Space, msg.Name}, msg.Client}, msg.Req, msg.Token}
	o := &op{msg: msg, home: home, next: e.now + e.retryDelay(), giveUp: e.now + 4*int64(e.cfg.HomeLeaseTicks)}
	if msg.Type == MsgLeave {
		// A barrier arrival has no lease at the home: try harder.
		o.giveUp = e.now + 16*int64(e.cfg.HomeLeaseTicks)
	}
	e.pending[k] = o
	e.send(msg)
}

// onGrant handles a grant at the requester.
func (e *Engine) onGrant(m *Message) {
	lk := lockKey{m.Space, m.Name}
	if m.Space == SpaceBarrier {
		return
	}
	r := e.reqs[localKey{lk, m.Client}]
	if r == nil || r.req != m.Req || r.home != m.From || (r.state == held && r.token != m.Token) {
		// A grant for a request that was canceled, released or
		// superseded (or a second grant after a home restart): give it
		// back so that no ghost holder blocks the lock.
		if _, ok := e.pending[opKey{localKey{lk, m.Client}, m.Req, m.Token}]; !ok {
			rel := Message{Type: MsgRelease, To: m.From, Space: m.Space, Name: m.Name, Client: m.Client, Req: m.Req, Token: m.Token}
			if m.Gen > m.Token && r != nil && r.req == m.Req {
				// The request lives on with another token or home, so
				// nobody used this cached grant: its own token was the
				// last. Otherwise the grant may be a late copy of one
				// the client used, and gave itself tokens from, before
				// its hold ended (a PeerDown drops the release that
				// would have said so): the home must assume the whole
				// range was used (Gen 0).
				rel.Gen = m.Token
			}
			e.track(m.From, rel)
		}
		return
	}
	if !r.announced {
		// Copies of the grant carry the payload kept when each was
		// sent; the client gets the latest that arrived.
		r.payload, r.lost = m.Payload, m.Flags&FlagPayloadLost != 0
	}
	if r.state == waiting {
		r.state, r.token, r.limit = held, m.Token, m.Token
		r.confirmBy = e.now + int64(e.cfg.HolderLeaseTicks)
		if r.cached && m.Gen > m.Token && m.Gen>>32 == m.Token>>32 {
			r.limit = m.Gen
		}
	}
	if r.cached && m.Flags&FlagRecall != 0 && !r.recalled {
		r.recalled = true
		if r.announced {
			e.emit(Event{Kind: Recalled, Space: r.lk.space, Name: r.lk.name, Client: r.client, Req: r.req, Token: r.token})
		}
	}
	e.extend(r, m.Stamp)
	if !r.announced {
		// The grant answered a request sent too long ago to prove a
		// live lease: confirm with a renewal before telling the client.
		e.sendRenew(r)
	}
}

// extend applies evidence that the home granted or renewed r's lease after
// this node's clock read stamp: the home keeps the holder for
// HomeLeaseTicks from a moment no earlier than stamp, so believing until
// stamp+HolderLeaseTicks is safe.
func (e *Engine) extend(r *request, stamp int64) {
	b := stamp + int64(e.cfg.HolderLeaseTicks)
	if b <= r.believed || b <= e.now {
		return
	}
	r.believed = b
	r.next = max(stamp+int64(e.cfg.RenewTicks), e.now)
	if !r.announced {
		r.announced = true
		ev := Event{Kind: Granted, Space: r.lk.space, Name: r.lk.name, Client: r.client, Req: r.req, Token: r.token, Mode: r.mode,
			Payload: r.payload, PayloadLost: r.lost}
		r.payload = nil // the client has it; the request may live long
		if r.cached {
			ev.Limit, ev.Recall = r.limit, r.recalled
		}
		e.emit(ev)
		if r.lk.space == SpaceElection {
			e.leaders[r.lk.name] = &leaderEntry{info: LeaderInfo{Node: e.id, Client: r.client, Token: r.token}, learned: e.now}
		}
	}
}

// onRecall handles a recall of a cached hold: the client is told once.
// A recall that arrives before the grant is dropped; the waiter's next
// retransmission brings another.
func (e *Engine) onRecall(m *Message) {
	r := e.reqs[localKey{lockKey{m.Space, m.Name}, m.Client}]
	if r == nil || !r.cached || r.state != held || r.req != m.Req || r.token != m.Token || r.home != m.From || r.recalled {
		return
	}
	r.recalled = true
	if r.announced {
		e.emit(Event{Kind: Recalled, Space: r.lk.space, Name: r.lk.name, Client: r.client, Req: r.req, Token: r.token})
	}
}

// onRenewAck handles the answer to a renewal.
func (e *Engine) onRenewAck(m *Message) {
	r := e.reqs[localKey{lockKey{m.Space, m.Name}, m.Client}]
	if r == nil || r.state != held || r.token != m.Token || r.home != m.From {
		return
	}
	if m.Code != CodeOK {
		e.finish(r, ErrLeaseExpired)
		return
	}
	e.extend(r, m.Stamp)
}

// onRefuse handles a refusal from the home.
func (e *Engine) onRefuse(m *Message) {
	err := m.Code.Err()
	if err == nil {
		err = ErrInvalid
	}
	k := localKey{lockKey{m.Space, m.Name}, m.Client}
	if m.Space == SpaceBarrier {
		if a := e.arrivals[k]; a != nil && a.req == m.Req && a.home == m.From {
			delete(e.arrivals, k)
			e.emit(Event{Kind: Refused, Space: SpaceBarrier, Name: m.Name, Client: m.Client, Req: m.Req, Err: wrap(SpaceBarrier, m.Name, err)})
		}
		return
	}
	if r := e.reqs[k]; r != nil && r.req == m.Req && r.state == waiting && r.home == m.From {
		e.finish(r, err)
	}
}

// tickRequester runs the requester's timers.
func (e *Engine) tickRequester() {
	var due []localKey
	for k, r := range e.reqs {
		if e.now >= r.next || (r.state == held && (e.now >= r.believed && r.announced || e.now >= r.confirmBy && !r.announced)) {
			due = append(due, k)
		}
	}
	slices.SortFunc(due, localKey.compare)
	for _, k := range due {
		r := e.reqs[k]
		switch {
		case r.state == waiting:
			e.sendLock(r)
		case r.announced && e.now >= r.believed, !r.announced && e.now >= r.confirmBy:
			e.finish(r, ErrLeaseExpired)
			e.track(r.home, Message{Type: MsgRelease, To: r.home, Space: k.lk.space, Name: k.lk.name, Client: r.client, Req: r.req, Token: r.token})
		default:
			e.sendRenew(r)
		}
	}
	e.tickArrivals()
	var ops []opKey
	for k, o := range e.pending {
		if e.now >= o.next || e.now >= o.giveUp {
			ops = append(ops, k)
		}
	}
	slices.SortFunc(ops, opKey.compare)
	for _, k := range ops {
		o := e.pending[k]
		if e.now >= o.giveUp {
			delete(e.pending, k)
			continue
		}
		o.next = e.now + e.retryDelay()
		e.send(o.msg)
	}
}
