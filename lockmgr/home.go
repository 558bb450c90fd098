package lockmgr

import (
	"math"
	"slices"
)

// clientKey names a client of one incarnation of a node, at a home.
type clientKey struct {
	node   NodeID
	epoch  uint32
	client uint64
}

// holder is a granted request at the home.
type holder struct {
	ck      clientKey
	req     uint64
	token   uint64
	mode    Mode
	expires int64  // the home drops the holder when now reaches it
	cached  bool   // FlagCache: the client keeps the lock until recalled
	limit   uint64 // the largest token the client may use by itself (token if not cached)
}

// waiter is a queued request at the home.
type waiter struct {
	ck      clientKey
	req     uint64
	mode    Mode
	stamp   int64 // the largest requester stamp received
	expires int64 // dropped unless retransmitted before now reaches it
	cached  bool  // FlagCache
}

// hlock is the home's state of one lock or election: holders in grant
// order and the FIFO queue of waiters.
type hlock struct {
	holders []*holder
	queue   []*waiter
}

// keptPayload is what a home hands on with every grant of a lock: the
// payload of the exclusive release with the largest token it received.
// Tokens order the holds of a lock, so that is the latest hold released
// with a payload, and a late or duplicated copy of an earlier release
// cannot replace it. It is kept while the lock is free too, for as long as
// the home runs: the next holder may come much later.
type keptPayload struct {
	token   uint64
	payload []byte
}

// doneKey names a finished request, so that late copies of it are ignored.
type doneKey struct {
	lk  lockKey
	ck  clientKey
	req uint64
}

type doneEntry struct {
	key   doneKey
	until int64
}

// isHome reports whether this node is the home of name.
func (e *Engine) isHome(name string) bool { return e.cfg.Home(name) == e.id }

// reply sends an answer to the sender of m.
func (e *Engine) reply(m *Message, r Message) {
	r.To, r.PeerEpoch = m.From, m.Epoch
	r.Space, r.Name, r.Client, r.Req = m.Space, m.Name, m.Client, m.Req
	e.send(r)
}

// markDone remembers for a while that a request finished, so that late
// copies of it are ignored. Copies later than that are granted and given
// back by the requester at once: remembering is an optimisation, and
// bounded by the rate of requests times 2*HomeLeaseTicks.
func (e *Engine) markDone(k doneKey) {
	if _, ok := e.done[k]; ok {
		return
	}
	until := e.now + 2*int64(e.cfg.HomeLeaseTicks)
	e.done[k] = until
	e.doneQ = append(e.doneQ, doneEntry{k, until})
}

// hLock handles a lock request (or its retransmission) at the home.
func (e *Engine) hLock(m *Message) {
	lk := lockKey{m.Space, m.Name}
	if m.Space == SpaceBarrier || m.Mode == 0 || (m.Space == SpaceElection && m.Mode != Exclusive) {
		e.reply(m, Message{Type: MsgRefuse, Code: CodeInvalid})
		return
	}
	if !e.isHome(m.Name) {
		e.reply(m, Message{Type: MsgRefuse, Code: CodeNotHome})
		return
	}
	ck := clientKey{m.From, m.Epoch, m.Client}
	if _, ok := e.done[doneKey{lk, ck, m.Req}]; ok {
		return
	}
	l := e.locks[lk]
	if l == nil {
		l = &hlock{}
		e.locks[lk] = l
	}
	for i, h := range l.holders {
		if h.ck != ck {
			continue
		}
		switch {
		case h.req == m.Req:
			// The grant was lost or this is a late copy: the request
			// travelled after m.Stamp, so it renews like a MsgRenew.
			h.expires = max(h.expires, e.now+int64(e.cfg.HomeLeaseTicks))
			g := e.grantMsg(lk, h, l)
			g.Stamp = m.Stamp
			e.reply(m, g)
			return
		case h.req > m.Req:
			return
		}
		// A newer request of the client: it has given the old one up.
		l.holders = slices.Delete(l.holders, i, i+1)
		e.dropHolder(lk, h, 0)
		break
	}
	for i, w := range l.queue {
		if w.ck != ck {
			continue
		}
		switch {
		case w.req == m.Req:
			w.stamp = max(w.stamp, m.Stamp)
			w.expires = e.now + int64(e.cfg.HomeLeaseTicks)
			e.tellLeader(m, l)
			e.recall(lk, l)
			return
		case w.req > m.Req:
			return
		}
		l.queue = slices.Delete(l.queue, i, i+1)
		e.markDone(doneKey{lk, ck, w.req})
		break
	}
	l.queue = append(l.queue, &waiter{ck: ck, req: m.Req, mode: m.Mode, stamp: m.Stamp,
		expires: e.now + int64(e.cfg.HomeLeaseTicks),
		cached:  m.Flags&FlagCache != 0 && m.Space == SpaceLock && m.Mode == Exclusive})
	e.grant(lk, l)
	if len(l.queue) > 0 && l.queue[len(l.queue)-1].ck == ck {
		e.tellLeader(m, l)
		e.recall(lk, l)
	}
}

// DefaultCacheTokens is the default of Config.CacheTokens.
const DefaultCacheTokens = 1 << 16

// grantMsg is the grant of holder h of lock lk, to send or send again: a
// cached grant carries its token limit in Gen, and FlagRecall when others
// wait. Every copy carries the payload kept now, which a late release may
// have replaced since the first copy: the requester takes the one it has
// when it tells its client.
func (e *Engine) grantMsg(lk lockKey, h *holder, l *hlock) Message {
	msg := Message{Type: MsgGrant, Mode: h.mode, Token: h.token}
	if h.cached {
		msg.Gen = h.limit
		if len(l.queue) > 0 {
			msg.Flags = FlagRecall
		}
	}
	if lk.space == SpaceLock {
		k := e.kept[lk]
		msg.Payload = k.payload
		if !e.cfg.FreshStart && uint32(k.token>>32) != e.epoch {
			// Only a payload released under a token of this
			// incarnation is known to be newer than any an earlier
			// one kept.
			msg.Flags |= FlagPayloadLost
		}
	}
	return msg
}

// keep records the payload of release m of lock lk (h is the holder it
// ended, nil if the home no longer lists it) if it is the latest the home
// has seen. A release that comes after the holder's lease ran out counts
// too: its token still orders it among the holds, and the requester had no
// way to know it was late. Only exclusive holds hand payloads on: readers
// write nothing under the lock (the requester does not send theirs).
func (e *Engine) keep(lk lockKey, m *Message, h *holder) {
	if len(m.Payload) == 0 || m.Mode != Exclusive || lk.space != SpaceLock || (h != nil && h.mode != Exclusive) ||
		!e.isHome(lk.name) {
		return
	}
	// A token this home never granted (from a confused or future peer)
	// must not block every later payload.
	ep, n := uint32(m.Token>>32), uint32(m.Token)
	if n == 0 || ep == 0 || ep > e.epoch || ep == e.epoch && n > e.counter {
		return
	}
	k, ok := e.kept[lk]
	switch e.cfg.payloadBug {
	case payloadKeepFirst:
		if ok {
			return
		}
	case payloadKeepStale:
	default:
		if m.Token <= k.token {
			return // a copy of this release, or an older one
		}
	}
	e.kept[lk] = keptPayload{token: m.Token, payload: m.Payload}
}

// recall asks the cached holders of l to give it back when others wait.
// It is called whenever a waiter's request arrives, so the waiters'
// retransmissions retransmit the recall too.
func (e *Engine) recall(lk lockKey, l *hlock) {
	if len(l.queue) == 0 {
		return
	}
	for _, h := range l.holders {
		if h.cached {
			e.send(Message{Type: MsgRecall, To: h.ck.node, PeerEpoch: h.ck.epoch, Space: lk.space, Name: lk.name,
				Client: h.ck.client, Req: h.req, Token: h.token})
		}
	}
}

// dropHolder forgets holder h of lk, which the caller removed from the
// lock. last is the last token the holder said it used (0: unknown); the
// token counter moves past it, or past the whole range a cached holder was
// allowed when it did not say, so that the next grant is larger than any
// token the holder's client gave itself.
func (e *Engine) dropHolder(lk lockKey, h *holder, last uint64) {
	e.markDone(doneKey{lk, h.ck, h.req})
	top := h.limit
	if last >= h.token && last <= h.limit {
		top = last
	}
	if top>>32 == uint64(e.epoch) && !e.cfg.ignoreLastToken {
		e.counter = max(e.counter, uint32(top))
	}
}

// tellLeader tells a waiting campaigner who leads.
func (e *Engine) tellLeader(m *Message, l *hlock) {
	if m.Space == SpaceElection {
		e.send(leaderMsg(m, l))
	}
}

// leaderMsg answers m with the leader of election l.
func leaderMsg(m *Message, l *hlock) Message {
	r := Message{Type: MsgLeader, To: m.From, PeerEpoch: m.Epoch, Space: SpaceElection, Name: m.Name}
	if l != nil && len(l.holders) > 0 {
		h := l.holders[0]
		r.Holder, r.Client, r.Token = h.ck.node, h.ck.client, h.token
	}
	return r
}

// grant grants the head of the queue for as long as it is compatible with
// the holders: readers share, a writer waits for all holders to leave, and
// a waiting writer keeps later readers behind it.
func (e *Engine) grant(lk lockKey, l *hlock) {
	if e.now < e.graceUntil {
		return
	}
	for len(l.queue) > 0 {
		w := l.queue[0]
		if w.expires <= e.now {
			l.queue = slices.Delete(l.queue, 0, 1)
			continue
		}
		if len(l.holders) > 0 && (w.mode == Exclusive || l.holders[0].mode == Exclusive) {
			return
		}
		l.queue = slices.Delete(l.queue, 0, 1)
		msg := Message{To: w.ck.node, PeerEpoch: w.ck.epoch, Space: lk.space, Name: lk.name,
			Mode: w.mode, Client: w.ck.client, Req: w.req, Stamp: w.stamp}
		if e.counter == math.MaxUint32 {
			msg.Type, msg.Code = MsgRefuse, CodeTokensExhausted
			e.markDone(doneKey{lk, w.ck, w.req})
			e.send(msg)
			continue
		}
		e.counter++
		h := &holder{ck: w.ck, req: w.req, mode: w.mode, expires: e.now + int64(e.cfg.HomeLeaseTicks),
			token: uint64(e.epoch)<<32 | uint64(e.counter), cached: w.cached}
		h.limit = h.token
		if h.cached {
			h.limit = min(h.token+uint64(e.cfg.CacheTokens)-1, uint64(e.epoch)<<32|math.MaxUint32)
		}
		l.holders = append(l.holders, h)
		// A cached grant is exclusive, so whoever is still queued waits
		// for it: the grant says so (FlagRecall).
		gm := e.grantMsg(lk, h, l)
		msg.Type, msg.Token, msg.Gen, msg.Flags, msg.Payload = gm.Type, gm.Token, gm.Gen, gm.Flags, gm.Payload
		e.send(msg)
	}
}

// hRenew extends the lease of a holder.
func (e *Engine) hRenew(m *Message) {
	ck := clientKey{m.From, m.Epoch, m.Client}
	if l := e.locks[lockKey{m.Space, m.Name}]; l != nil {
		for _, h := range l.holders {
			if h.ck == ck && h.token == m.Token {
				h.expires = max(h.expires, e.now+int64(e.cfg.HomeLeaseTicks))
				e.reply(m, Message{Type: MsgRenewAck, Token: m.Token, Stamp: m.Stamp})
				return
			}
		}
	}
	e.reply(m, Message{Type: MsgRenewAck, Token: m.Token, Code: CodeLeaseExpired})
}

// hRelease releases a holder or withdraws a waiter. Older requests of the
// same client go too: a client sends a new request only after it is done
// with the previous one.
func (e *Engine) hRelease(m *Message) {
	lk := lockKey{m.Space, m.Name}
	ck := clientKey{m.From, m.Epoch, m.Client}
	var ended *holder // the hold m releases, if still listed
	if l := e.locks[lk]; l != nil {
		l.holders = slices.DeleteFunc(l.holders, func(h *holder) bool {
			gone := h.ck == ck && (h.req < m.Req || h.req == m.Req && (m.Token == 0 || h.token == m.Token))
			if gone {
				var last uint64
				if h.req == m.Req && h.token == m.Token {
					last = m.Gen
					ended = h
				}
				e.dropHolder(lk, h, last)
			}
			return gone
		})
		// Before granting: the next holder gets this payload.
		e.keep(lk, m, ended)
		l.queue = slices.DeleteFunc(l.queue, func(w *waiter) bool {
			gone := w.ck == ck && w.req <= m.Req
			if gone {
				e.markDone(doneKey{lk, ck, w.req})
			}
			return gone
		})
		e.grant(lk, l)
		e.gcLock(lk, l)
	} else {
		e.keep(lk, m, nil)
	}
	e.markDone(doneKey{lk, ck, m.Req})
	e.reply(m, Message{Type: MsgReleaseAck, Token: m.Token})
}

// hQuery answers who leads an election.
func (e *Engine) hQuery(m *Message) {
	if m.Space == SpaceElection && e.isHome(m.Name) {
		e.send(leaderMsg(m, e.locks[lockKey{m.Space, m.Name}]))
	}
}

// gcLock forgets an idle lock.
func (e *Engine) gcLock(lk lockKey, l *hlock) {
	if len(l.holders) == 0 && len(l.queue) == 0 {
		delete(e.locks, lk)
	}
}

// tickHome expires holders and waiters at the home and grants what that
// frees.
func (e *Engine) tickHome() {
	graceEnds := e.now == e.graceUntil
	var due []lockKey
	for lk, l := range e.locks {
		if graceEnds || l.expiring(e.now) {
			due = append(due, lk)
		}
	}
	slices.SortFunc(due, lockKey.compare)
	for _, lk := range due {
		l := e.locks[lk]
		l.holders = slices.DeleteFunc(l.holders, func(h *holder) bool {
			if h.expires <= e.now {
				e.dropHolder(lk, h, 0)
				return true
			}
			return false
		})
		l.queue = slices.DeleteFunc(l.queue, func(w *waiter) bool { return w.expires <= e.now })
		e.grant(lk, l)
		e.gcLock(lk, l)
	}
	for len(e.doneQ) > 0 && e.doneQ[0].until <= e.now {
		delete(e.done, e.doneQ[0].key)
		e.doneQ[0] = doneEntry{}
		e.doneQ = e.doneQ[1:]
	}
}

func (l *hlock) expiring(now int64) bool {
	for _, h := range l.holders {
		if h.expires <= now {
			return true
		}
	}
	for _, w := range l.queue {
		if w.expires <= now {
			return true
		}
	}
	return false
}

// purgeNode drops what the home keeps for node n: with down set (PeerDown)
// its waiters and barrier arrivals; otherwise (n restarted as epoch) all
// that belongs to its older incarnations.
func (e *Engine) purgeNode(n NodeID, epoch uint32, down bool) {
	gone := func(ck clientKey) bool { return ck.node == n && (down || ck.epoch < epoch) }
	var touched []lockKey
	for lk, l := range e.locks {
		nh, nq := len(l.holders), len(l.queue)
		if !down {
			l.holders = slices.DeleteFunc(l.holders, func(h *holder) bool {
				if gone(h.ck) {
					// A restarted node's clients are gone; the
					// counter moves past what they may have used.
					e.dropHolder(lk, h, 0)
					return true
				}
				return false
			})
		}
		l.queue = slices.DeleteFunc(l.queue, func(w *waiter) bool { return gone(w.ck) })
		if len(l.holders) != nh || len(l.queue) != nq {
			touched = append(touched, lk)
		}
	}
	slices.SortFunc(touched, lockKey.compare)
	for _, lk := range touched {
		l := e.locks[lk]
		e.grant(lk, l)
		e.gcLock(lk, l)
	}
	for _, b := range e.barriers {
		for ck, a := range b.arrived {
			if gone(ck) {
				b.remove(ck)
				if c := b.clients[ck]; c != nil && down {
					// Count the arrival again if the node was alive
					// after all and sends it again.
					c.lastReq = a.req - 1
				}
			}
		}
		if !down {
			for ck := range b.clients {
				if gone(ck) {
					delete(b.clients, ck)
				}
			}
		}
	}
}
