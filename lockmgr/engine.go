package lockmgr

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
)

// EventKind says what an Event reports.
type EventKind uint8

// The event kinds. Every request (Lock, Campaign, Barrier) gets exactly one
// Granted, BarrierDone or Refused, unless its client was released with
// ReleaseClient. A Granted may later be followed by one Lost.
const (
	// Granted: Req of Client holds Name with Token (fencing token) and
	// Mode. Payload carries what the lock's last releaser handed on.
	Granted EventKind = iota + 1
	// Lost: Client no longer holds Name (Token, Req): its lease ran out
	// (Err is ErrLeaseExpired), the home is down (ErrHomeDown) or Cancel
	// released it after the grant won the race (ErrCanceled). Stop using
	// what the lock protects.
	Lost
	// BarrierDone: Req of Client completed barrier Name in Generation.
	// Payloads carry what the participants handed on.
	BarrierDone
	// Refused: Req of Client will not be granted; Err says why.
	Refused
	// Recalled: others wait for Name, which Req of Client holds with
	// Token and keeps cached (LockCached): stop re-granting it locally and
	// release it (UnlockCached) as soon as it is not in use. Reported at
	// most once per grant; a grant that is already contended says so in
	// Event.Recall instead.
	Recalled
)

// String returns the name of the event kind.
func (k EventKind) String() string {
	switch k {
	case Granted:
		return "Granted"
	case Lost:
		return "Lost"
	case BarrierDone:
		return "BarrierDone"
	case Refused:
		return "Refused"
	case Recalled:
		return "Recalled"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is something the daemon must tell a local client.
type Event struct {
	Kind   EventKind
	Space  Space
	Name   string
	Client uint64
	Req    uint64
	Token  uint64 // Granted, Lost, Recalled
	Mode   Mode   // Granted
	// Limit (Granted, cached requests) is the largest token the client may
	// use for re-grants of its own while it keeps the lock cached: Token+1,
	// Token+2, ... up to Limit. Equal to Token when it may not re-grant.
	Limit uint64
	// Recall (Granted, cached requests): others already wait; release the
	// lock after this use instead of keeping it.
	Recall     bool
	Generation uint64 // BarrierDone
	Err        error  // Lost, Refused; wraps one of the Err values

	// Payload (Granted, lock space) is the payload of the latest release
	// of the lock that carried one (UnlockWithPayload of an exclusive
	// hold) that its home received, whether or not the lock was free in
	// between; nil if none. Holds that ended otherwise (Unlock, a lost
	// lease, Cancel, ReleaseClient) and shared holds hand nothing on and
	// leave it as it was.
	Payload []byte
	// PayloadLost (Granted): the home of the lock restarted and may have
	// forgotten a newer payload than Payload; it is set until the home
	// keeps one released under a token of its new incarnation. Act as if
	// anything may have been written under the lock.
	PayloadLost bool
	// Payloads (BarrierDone) are the payloads of the arrivals of the
	// generation (BarrierWithPayload), one per participant, ordered by
	// node, then incarnation, then client; nil entries for arrivals
	// without one, and nil altogether when none had one. Every
	// participant gets the same list.
	Payloads [][]byte
}

// String formats the event for logs and test failures.
func (ev Event) String() string {
	return fmt.Sprintf("%v %v %q c%d r%d t%#x g%#x %v limit %#x recall %v payload %dB lost %v payloads %d err=%v",
		ev.Kind, ev.Space, ev.Name, ev.Client, ev.Req, ev.Token, ev.Generation, ev.Mode, ev.Limit, ev.Recall,
		len(ev.Payload), ev.PayloadLost, len(ev.Payloads), ev.Err)
}

// Engine is the lock manager of one node: the requester side for the
// node's clients and the home side for the names homed on the node. It is a
// pure state machine: call its input methods (Lock, Step, Tick, ...) from
// one goroutine, then Ready for the messages to send and the events to
// deliver.
type Engine struct {
	cfg        Config
	id         NodeID
	epoch      uint32
	rng        *rand.Rand
	now        int64
	graceUntil int64

	msgs   []Message
	events []Event
	loop   []Message // messages to this node, handled before an input returns

	// requester side
	reqs     map[localKey]*request
	arrivals map[localKey]*arrival
	lastGen  map[localKey]uint64 // last barrier generation a client completed
	lastReq  map[uint64]uint64   // highest request id per client
	pending  map[opKey]*op       // releases and leaves awaiting their ack
	leaders  map[string]*leaderEntry

	// home side
	locks     map[lockKey]*hlock
	kept      map[lockKey]keptPayload // the latest release payload of each lock
	done      map[doneKey]int64       // recently finished requests (dedup)
	doneQ     []doneEntry
	barriers  map[string]*homeBarrier
	nodeEpoch []uint32 // the latest epoch heard from each node
	counter   uint32   // token counter of this epoch
}

// lockKey names a lock or election (or barrier).
type lockKey struct {
	space Space
	name  string
}

func (a lockKey) compare(b lockKey) int {
	if c := cmp.Compare(a.space, b.space); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}

// localKey names a local client's request slot for a name.
type localKey struct {
	lk     lockKey
	client uint64
}

func (a localKey) compare(b localKey) int {
	if c := a.lk.compare(b.lk); c != 0 {
		return c
	}
	return cmp.Compare(a.client, b.client)
}

// New returns an engine for cfg, or an error wrapping ErrConfig.
func New(cfg Config) (*Engine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.CacheTokens == 0 {
		cfg.CacheTokens = DefaultCacheTokens
	}
	rng := cfg.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(uint64(cfg.ID), uint64(cfg.Epoch)))
	}
	e := &Engine{
		cfg: cfg, id: cfg.ID, epoch: cfg.Epoch, rng: rng,
		reqs:      make(map[localKey]*request),
		arrivals:  make(map[localKey]*arrival),
		lastGen:   make(map[localKey]uint64),
		lastReq:   make(map[uint64]uint64),
		pending:   make(map[opKey]*op),
		leaders:   make(map[string]*leaderEntry),
		locks:     make(map[lockKey]*hlock),
		kept:      make(map[lockKey]keptPayload),
		done:      make(map[doneKey]int64),
		barriers:  make(map[string]*homeBarrier),
		nodeEpoch: make([]uint32, cfg.Nodes),
	}
	if !cfg.FreshStart {
		e.graceUntil = int64(cfg.HomeLeaseTicks)
	}
	return e, nil
}

// Ready returns the messages to send and the events to deliver since the
// last call, in order, and forgets them. Their payloads are shared with the
// engine, which keeps them for later grants: read them, never modify them.
func (e *Engine) Ready() (msgs []Message, events []Event) {
	msgs, events = e.msgs, e.events
	e.msgs, e.events = nil, nil
	return msgs, events
}

// HasReady reports whether Ready has something to return.
func (e *Engine) HasReady() bool { return len(e.msgs) > 0 || len(e.events) > 0 }

// Now returns the number of ticks since New.
func (e *Engine) Now() int64 { return e.now }

// Tick advances the engine's clock by one tick: retransmissions, renewals,
// lease expiry at both ends.
func (e *Engine) Tick() {
	e.now++
	e.tickRequester()
	e.tickHome()
	e.drain()
}

// Step handles a message from a peer (or from this node). Stale and
// duplicate messages are ignored; an error means the message was malformed
// or misrouted and was dropped. The engine may keep m's payloads: the
// caller must not modify them afterwards.
func (e *Engine) Step(m *Message) error {
	if m == nil {
		return fmt.Errorf("%w: nil message", ErrBadMessage)
	}
	if err := m.checkEnums(); err != nil {
		return err
	}
	if m.To != e.id {
		return fmt.Errorf("%w: message for node %d delivered to node %d", ErrBadMessage, m.To, e.id)
	}
	if int(m.From) >= e.cfg.Nodes {
		return fmt.Errorf("%w: sender %d is not below Nodes %d", ErrBadMessage, m.From, e.cfg.Nodes)
	}
	if len(m.Name) > MaxNameLen || m.Name == "" {
		return fmt.Errorf("%w: name of %d bytes", ErrBadMessage, len(m.Name))
	}
	if m.Stamp < 0 {
		return fmt.Errorf("%w: negative stamp %d", ErrBadMessage, m.Stamp)
	}
	if err := m.checkPayloads(); err != nil {
		return err
	}
	e.step(m)
	e.drain()
	return nil
}

// step dispatches a checked message.
func (e *Engine) step(m *Message) {
	if !e.admit(m) {
		return
	}
	switch m.Type {
	case MsgLock:
		e.hLock(m)
	case MsgRenew:
		e.hRenew(m)
	case MsgRelease:
		e.hRelease(m)
	case MsgArrive:
		e.hArrive(m)
	case MsgLeave:
		e.hLeave(m)
	case MsgQuery:
		e.hQuery(m)
	case MsgGrant:
		e.onGrant(m)
	case MsgRefuse:
		e.onRefuse(m)
	case MsgRenewAck:
		e.onRenewAck(m)
	case MsgReleaseAck, MsgLeaveAck:
		delete(e.pending, opKey{localKey{lockKey{m.Space, m.Name}, m.Client}, m.Req, m.Token})
	case MsgBarrierDone:
		e.onBarrierDone(m)
	case MsgLeader:
		e.onLeader(m)
	case MsgRecall:
		e.onRecall(m)
	}
}

// admit keeps track of the incarnations of the peers. It drops messages
// from an older incarnation than one already heard from, and replies meant
// for another incarnation of this node. A newer incarnation of a peer means
// its daemon restarted and its clients are gone: their holds, waits and
// barrier arrivals are dropped.
func (e *Engine) admit(m *Message) bool {
	if m.PeerEpoch != 0 && m.PeerEpoch != e.epoch {
		return false
	}
	known := e.nodeEpoch[m.From]
	switch {
	case m.Epoch < known:
		return false
	case m.Epoch > known:
		e.nodeEpoch[m.From] = m.Epoch
		if known != 0 {
			e.purgeNode(m.From, m.Epoch, false)
		}
	}
	return true
}

// PeerDown tells the engine that the failure detector declared node n dead
// or unreachable. Requests and barrier arrivals waiting on names homed on n
// are refused with ErrHomeDown, and local holders of locks homed on n are
// told Lost at once (they could not renew anyway). As a home, the engine
// drops n's waiting requests and barrier arrivals; it keeps n's holders
// until their leases run out, since the verdict may be wrong and only the
// lease makes it safe to move on. Later requests are sent to n as usual.
func (e *Engine) PeerDown(n NodeID) {
	if n == e.id || int(n) >= e.cfg.Nodes {
		return
	}
	for _, k := range sortedKeys(e.reqs) {
		r := e.reqs[k]
		if r.home != n {
			continue
		}
		e.finish(r, ErrHomeDown)
		e.send(Message{Type: MsgRelease, To: n, Space: r.lk.space, Name: r.lk.name, Client: r.client, Req: r.req, Token: r.token})
	}
	for _, k := range sortedKeys(e.arrivals) {
		a := e.arrivals[k]
		if a.home != n {
			continue
		}
		delete(e.arrivals, k)
		e.emit(Event{Kind: Refused, Space: SpaceBarrier, Name: a.name, Client: a.client, Req: a.req,
			Err: wrap(SpaceBarrier, a.name, ErrHomeDown)})
	}
	for k, o := range e.pending {
		if o.home == n {
			delete(e.pending, k)
		}
	}
	e.purgeNode(n, 0, true)
	e.drain()
}

// emit records an event.
func (e *Engine) emit(ev Event) { e.events = append(e.events, ev) }

// send queues a message; messages to this node are handled before the
// current input returns.
func (e *Engine) send(m Message) {
	m.From, m.Epoch = e.id, e.epoch
	if m.To == e.id {
		e.loop = append(e.loop, m)
		return
	}
	e.msgs = append(e.msgs, m)
}

// drain handles the messages this node sent itself.
func (e *Engine) drain() {
	for i := 0; i < len(e.loop); i++ {
		m := e.loop[i]
		e.step(&m)
	}
	e.loop = e.loop[:0]
}

// retryDelay is the delay before a retransmission, with jitter.
func (e *Engine) retryDelay() int64 {
	return int64(e.cfg.RetryTicks + e.rng.IntN(e.cfg.RetryTicks/2+1))
}

// home returns the home of name, checked.
func (e *Engine) home(name string) (NodeID, error) {
	h := e.cfg.Home(name)
	if int(h) >= e.cfg.Nodes {
		return 0, fmt.Errorf("%w: Config.Home(%q) = %d, not below Nodes %d", ErrConfig, name, h, e.cfg.Nodes)
	}
	return h, nil
}

// comparable keys with a total order, so that maps are walked
// deterministically wherever the walk produces output.
type ordered[K any] interface {
	comparable
	compare(K) int
}

// sortedKeys returns the keys of m in order.
func sortedKeys[K ordered[K], V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b K) int { return a.compare(b) })
	return keys
}
