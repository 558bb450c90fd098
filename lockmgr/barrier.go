package lockmgr

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
)

// arrival is a local client's pending barrier call.
type arrival struct {
	name    string
	client  uint64
	req     uint64
	count   uint32
	home    NodeID
	gen     uint64 // the last generation the client completed here (0: none)
	next    int64
	payload []byte // for every participant of the generation
}

// Barrier makes client arrive at barrier name, which completes when count
// participants (on any nodes) have arrived in the same generation; then
// every one of them gets a BarrierDone event with that generation. A
// barrier name is reused from phase to phase: generations increase. req
// follows the rules of Lock. If the home of the barrier restarts, clients
// that completed a generation with its earlier incarnation are refused
// with ErrBarrierLost (the group must switch to a new name).
func (e *Engine) Barrier(name string, count int, client, req uint64) {
	e.BarrierWithPayload(name, count, client, req, nil)
}

// BarrierWithPayload is Barrier with a payload for the other participants:
// the BarrierDone event of every participant of the generation the arrival
// counts in carries the payloads of all its arrivals (Event.Payloads), this
// one included. Retransmissions of the arrival do not add copies. A payload
// larger than MaxPayload is refused with ErrPayloadTooLarge, and so is one
// that would take the generation's payloads past MaxBarrierPayload. The
// engine copies payload.
func (e *Engine) BarrierWithPayload(name string, count int, client, req uint64, payload []byte) {
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
	if len(payload) > MaxPayload {
		refuse(wrap(SpaceBarrier, name, fmt.Errorf("%w: %d bytes, at most %d", ErrPayloadTooLarge, len(payload), MaxPayload)))
		return
	}
	e.lastReq[client] = req
	k := localKey{lockKey{SpaceBarrier, name}, client}
	if old := e.arrivals[k]; old != nil {
		refuse(wrap(SpaceBarrier, name, fmt.Errorf("%w: request %d is still waiting", ErrBusy, old.req)))
		return
	}
	a := &arrival{name: name, client: client, req: req, count: uint32(count), home: home, gen: e.lastGen[k]}
	if len(payload) > 0 {
		a.payload = bytes.Clone(payload)
	}
	e.arrivals[k] = a
	e.sendArrive(a)
}

// sendArrive (re)transmits an arrival.
func (e *Engine) sendArrive(a *arrival) {
	a.next = e.now + e.retryDelay()
	e.send(Message{Type: MsgArrive, To: a.home, Space: SpaceBarrier, Name: a.name,
		Client: a.client, Req: a.req, Count: a.count, Gen: a.gen, Payload: a.payload})
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
	e.emit(Event{Kind: BarrierDone, Space: SpaceBarrier, Name: m.Name, Client: m.Client, Req: m.Req, Generation: m.Gen,
		Payloads: m.Payloads})
}

// homeBarrier is the home's state of a barrier.
type homeBarrier struct {
	count   uint32                // participants of the current generation
	gen     uint64                // the current generation: epoch<<32 | n
	arrived map[clientKey]arrived // arrivals of the current generation, one per client
	bytes   int                   // their payloads together
	clients map[clientKey]*bclient
}

// arrived is an arrival counted in the current generation.
type arrived struct {
	req     uint64
	payload []byte
}

// put counts the arrival of ck, replacing an older one of the client.
func (b *homeBarrier) put(ck clientKey, a arrived) {
	b.remove(ck)
	b.arrived[ck] = a
	b.bytes += len(a.payload)
}

// remove withdraws the arrival of ck, if any.
func (b *homeBarrier) remove(ck clientKey) {
	if a, ok := b.arrived[ck]; ok {
		b.bytes -= len(a.payload)
		delete(b.arrived, ck)
	}
}

// bclient is what a barrier's home remembers of a participant, so that late
// copies of its arrivals never count twice.
type bclient struct {
	lastReq  uint64   // the newest request seen (MaxUint64: the client exited)
	doneReq  uint64   // the newest request that completed
	doneGen  uint64   // ... and its generation
	donePays [][]byte // ... and its payloads, to answer copies of the request (shared by the participants)
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
		b = &homeBarrier{gen: uint64(e.epoch)<<32 | 1, arrived: make(map[clientKey]arrived), clients: make(map[clientKey]*bclient)}
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
		e.reply(m, Message{Type: MsgBarrierDone, Gen: c.doneGen, Payloads: c.donePays})
		return
	case m.Req <= c.lastReq:
		return // counted already, withdrawn, or a late copy
	}
	old := 0
	if a, ok := b.arrived[ck]; ok {
		old = len(a.payload)
	}
	if b.bytes-old+len(m.Payload) > MaxBarrierPayload {
		c.lastReq = m.Req
		e.reply(m, Message{Type: MsgRefuse, Code: CodePayloadTooLarge})
		return
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
	b.put(ck, arrived{req: m.Req, payload: m.Payload}) // replaces an older arrival of the client
	if len(b.arrived) < int(b.count) {
		return
	}
	keys := make([]clientKey, 0, len(b.arrived))
	for k := range b.arrived {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, clientKey.compare)
	// One list for all: the participants' messages share it.
	var pays [][]byte
	if b.bytes > 0 {
		pays = make([][]byte, len(keys))
		for i, k := range keys {
			pays[i] = b.arrived[k].payload
		}
		if e.cfg.payloadBug == payloadDropArrive {
			pays = pays[:len(pays)-1]
		}
	}
	for _, k := range keys {
		req := b.arrived[k].req
		p := b.client(k)
		p.doneReq, p.doneGen, p.donePays = req, b.gen, pays
		e.send(Message{Type: MsgBarrierDone, To: k.node, PeerEpoch: k.epoch, Space: SpaceBarrier, Name: m.Name,
			Client: k.client, Req: req, Gen: b.gen, Payloads: pays})
	}
	clear(b.arrived)
	b.bytes = 0
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
	if a, ok := b.arrived[ck]; ok && a.req <= m.Req {
		b.remove(ck)
	}
	final := m.Flags&FlagFinal != 0
	if m.Req == c.doneReq && m.Req != 0 && !final {
		// The generation completed before the leave arrived.
		e.reply(m, Message{Type: MsgBarrierDone, Gen: c.doneGen, Payloads: c.donePays})
		return
	}
	c.lastReq = max(c.lastReq, m.Req)
	if final {
		b.remove(ck)
		c.lastReq = math.MaxUint64
		c.donePays = nil // nobody will ask again
	}
	e.reply(m, Message{Type: MsgLeaveAck, Flags: m.Flags})
}
