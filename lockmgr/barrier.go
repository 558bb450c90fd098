package lockmgr

import (
	"cmp"
	"fmt"
	"math"
	"slices"
)

// arrival is a local client's pending barrier call.
type arrival struct {
	name   string
	client uint64
	req    uint64
	count  uint32
	home   NodeID
	gen    uint64 // the last generation the client completed here (0: none)
	next   int64
}

// Barrier makes client arrive at barrier name, which completes when count
// participants (on any nodes) have arrived in the same generation; then
// every one of them gets a BarrierDone event with that generation. A
// barrier name is reused from phase to phase: generations increase. req
// follows the rules of Lock. If the home of the barrier restarts, clients
// that completed a generation with its earlier incarnation are refused
// with ErrBarrierLost (the group must switch to a new name).
func (e *Engine) Barrier(name string, count int, client, req uint64) {
	defer e.drain()
	refuse := func(err error) {
		e.emit(Event{Kind: Refused, Space: SpaceBarrier, Name: name, Client: client, Req: req, Err: err})
	}
	home, err := e.checkRequest(SpaceBarrier, name, client, req)
	if err != nil {
		refuse(err)
		return
	}
	if count < 1 || count > math.MaxUint32 {
		refuse(wrap(SpaceBarrier, name, fmt.Errorf("%w: count %d, want at least 1", ErrInvalid, count)))
		return
	}
	e.lastReq[client] = req
	k := localKey{lockKey{SpaceBarrier, name}, client}
	if old := e.arrivals[k]; old != nil {
		refuse(wrap(SpaceBarrier, name, fmt.Errorf("%w: request %d is still waiting", ErrBusy, old.req)))
		return
	}
	a := &arrival{name: name, client: client, req: req, count: uint32(count), home: home, gen: e.lastGen[k]}
	e.arrivals[k] = a
	e.sendArrive(a)
}

// sendArrive (re)transmits an arrival.
func (e *Engine) sendArrive(a *arrival) {
	a.next = e.now + e.retryDelay()
	e.send(Message{Type: MsgArrive, To: a.home, Space: SpaceBarrier, Name: a.name,
		Client: a.client, Req: a.req, Count: a.count, Gen: a.gen})
}

// tickArrivals retransmits arrivals.
func (e *Engine) tickArrivals() {
	var due []localKey
	for k, a := range e.arrivals {
		if e.now >= a.next {
			due = append(due, k)
		}
	}
	slices.SortFunc(due, localKey.compare)
	for _, k := range due {
		e.sendArrive(e.arrivals[k])
	}
}

// onBarrierDone handles the completion of a generation at a participant.
func (e *Engine) onBarrierDone(m *Message) {
	k := localKey{lockKey{SpaceBarrier, m.Name}, m.Client}
	delete(e.pending, opKey{k, m.Req, 0})
	if _, live := e.lastReq[m.Client]; live && m.Gen > e.lastGen[k] {
		// Also when the call was canceled meanwhile: the client did take
		// part in this generation.
		e.lastGen[k] = m.Gen
	}
	a := e.arrivals[k]
	if a == nil || a.req != m.Req || a.home != m.From {
		return
	}
	delete(e.arrivals, k)
	e.emit(Event{Kind: BarrierDone, Space: SpaceBarrier, Name: m.Name, Client: m.Client, Req: m.Req, Generation: m.Gen})
}

// homeBarrier is the home's state of a barrier.
type homeBarrier struct {
	count   uint32               // participants of the current generation
	gen     uint64               // the current generation: epoch<<32 | n
	arrived map[clientKey]uint64 // arrivals of the current generation: request ids
	clients map[clientKey]*bclient
}

// bclient is what a barrier's home remembers of a participant, so that late
// copies of its arrivals never count twice.
type bclient struct {
	lastReq uint64 // the newest request seen (MaxUint64: the client exited)
	doneReq uint64 // the newest request that completed
	doneGen uint64 // ... and its generation
}

func (ck clientKey) compare(o clientKey) int {
	if c := cmp.Compare(ck.node, o.node); c != 0 {
		return c
	}
	if c := cmp.Compare(ck.epoch, o.epoch); c != 0 {
		return c
	}
	return cmp.Compare(ck.client, o.client)
}

// barrier returns the home state of barrier name, created on first use.
func (e *Engine) barrier(name string) *homeBarrier {
	b := e.barriers[name]
	if b == nil {
		b = &homeBarrier{gen: uint64(e.epoch)<<32 | 1, arrived: make(map[clientKey]uint64), clients: make(map[clientKey]*bclient)}
		e.barriers[name] = b
	}
	return b
}

func (b *homeBarrier) client(ck clientKey) *bclient {
	c := b.clients[ck]
	if c == nil {
		c = &bclient{}
		b.clients[ck] = c
	}
	return c
}

// hArrive handles an arrival at the barrier's home.
func (e *Engine) hArrive(m *Message) {
	if !e.isHome(m.Name) {
		e.reply(m, Message{Type: MsgRefuse, Code: CodeNotHome})
		return
	}
	if m.Count == 0 {
		e.reply(m, Message{Type: MsgRefuse, Code: CodeInvalid})
		return
	}
	if m.Gen != 0 && uint32(m.Gen>>32) != e.epoch {
		// The client completed a generation this incarnation never saw.
		e.reply(m, Message{Type: MsgRefuse, Code: CodeBarrierLost})
		return
	}
	b := e.barrier(m.Name)
	ck := clientKey{m.From, m.Epoch, m.Client}
	c := b.client(ck)
	switch {
	case m.Req == c.doneReq && m.Req != 0:
		e.reply(m, Message{Type: MsgBarrierDone, Gen: c.doneGen})
		return
	case m.Req <= c.lastReq:
		return // counted already, withdrawn, or a late copy
	}
	if len(b.arrived) > 0 && m.Count != b.count {
		c.lastReq = m.Req // late copies must not count later
		e.reply(m, Message{Type: MsgRefuse, Code: CodeCountMismatch})
		return
	}
	if uint32(b.gen) == math.MaxUint32 {
		c.lastReq = m.Req
		e.reply(m, Message{Type: MsgRefuse, Code: CodeTokensExhausted})
		return
	}
	if len(b.arrived) == 0 {
		b.count = m.Count
	}
	c.lastReq = m.Req
	b.arrived[ck] = m.Req // replaces an older arrival of the client
	if len(b.arrived) < int(b.count) {
		return
	}
	keys := make([]clientKey, 0, len(b.arrived))
	for k := range b.arrived {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, clientKey.compare)
	for _, k := range keys {
		req := b.arrived[k]
		p := b.client(k)
		p.doneReq, p.doneGen = req, b.gen
		e.send(Message{Type: MsgBarrierDone, To: k.node, PeerEpoch: k.epoch, Space: SpaceBarrier, Name: m.Name,
			Client: k.client, Req: req, Gen: b.gen})
	}
	clear(b.arrived)
	b.gen++
}

// hLeave withdraws an arrival, or forgets an exited client.
func (e *Engine) hLeave(m *Message) {
	if !e.isHome(m.Name) {
		e.reply(m, Message{Type: MsgLeaveAck})
		return
	}
	b := e.barrier(m.Name)
	ck := clientKey{m.From, m.Epoch, m.Client}
	c := b.client(ck)
	if req, ok := b.arrived[ck]; ok && req <= m.Req {
		delete(b.arrived, ck)
	}
	final := m.Flags&FlagFinal != 0
	if m.Req == c.doneReq && m.Req != 0 && !final {
		// The generation completed before the leave arrived.
		e.reply(m, Message{Type: MsgBarrierDone, Gen: c.doneGen})
		return
	}
	c.lastReq = max(c.lastReq, m.Req)
	if final {
		delete(b.arrived, ck)
		c.lastReq = math.MaxUint64
	}
	e.reply(m, Message{Type: MsgLeaveAck, Flags: m.Flags})
}
