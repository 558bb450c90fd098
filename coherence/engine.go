package coherence

import (
	"errors"
	"fmt"
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// DefaultRetryTicks is the number of ticks a node waits for an answer before
// it sends a request (or a confirmation) again, when Config.RetryTicks is 0.
const DefaultRetryTicks = 5

// Config configures an Engine.
type Config struct {
	ID    NodeID // this node, 0 <= ID < Nodes
	Nodes int    // the number of nodes in the cluster, 1 .. 65536
	Pages int    // the number of pages in the shared region
	// Home returns the home node of a page. It must be deterministic and
	// agree on every node. Nil means page mod Nodes.
	Home func(PageID) NodeID
	// RetryTicks is how many calls of Tick a node waits for an answer
	// before it retransmits. 0 means DefaultRetryTicks.
	RetryTicks int
	// ReqBase is where request ids start (the first is ReqBase+1). Homes
	// ignore a request whose id is not above the last one they saw from
	// the node, so a daemon that restarts under the same ID must pass a
	// value above every id of its previous run (its start time in
	// nanoseconds, say).
	ReqBase uint64
	// Hold turns on the minimum hold and, with it, pipelining at the home.
	// A page this node installs or upgrades for a local fault is then in
	// its hold until the daemon calls EndHold: a forwarded request that
	// would take it away (hand it over, or write-protect it for a reader)
	// and an invalidation of it wait in the engine, which asks for EndHold
	// with ActHold. The home of a page forwards the next queued request to
	// the pending owner as soon as it grants a write, without waiting for
	// the confirmation (see the package documentation). Without Hold the
	// engine never emits ActHold and the home runs one transaction per
	// page at a time: a pipelined forward would take a page away the
	// moment it arrived, before the faulting thread could use it. Every
	// node of a cluster should use the same setting.
	Hold bool
	// NoPipeline keeps the minimum hold of Hold but makes the home wait for
	// each transaction's confirmation before it starts the next one, as
	// without Hold. It exists to measure what pipelining buys.
	NoPipeline bool
}

// Errors returned (wrapped) by New, Fault and Step. Check them with
// errors.Is. A message that is stale or a duplicate is not an error: the
// engine ignores it (and counts it in Stats.Stale).
var (
	// ErrConfig means the Config cannot work; the message says which field.
	ErrConfig = errors.New("coherence: invalid configuration")
	// ErrBadFault means Fault was called with a page outside the region or
	// an unknown access.
	ErrBadFault = errors.New("coherence: invalid fault")
	// ErrNotForNode means Step got a message addressed to another node.
	ErrNotForNode = errors.New("coherence: message is not addressed to this node")
	// ErrNotHome means a message that only the page's home may receive
	// reached another node, or a message that only the home may send came
	// from another node. The nodes disagree on Config.Home.
	ErrNotHome = errors.New("coherence: message and page home disagree")
)

// Stats counts what an engine did. Every counter only grows.
type Stats struct {
	ReadFaults    uint64 `json:"read_faults"`    // Fault(Read) calls
	WriteFaults   uint64 `json:"write_faults"`   // Fault(Write) calls on an Invalid page
	UpgradeFaults uint64 `json:"upgrade_faults"` // Fault(Write) calls on a Shared page
	Wakes         uint64 `json:"wakes"`          // faults answered at once with ActWake
	Coalesced     uint64 `json:"coalesced"`      // faults folded into a request already pending

	Requests    uint64 `json:"requests"`    // requests sent (first transmissions)
	Retransmits uint64 `json:"retransmits"` // requests, confirmations, page hand-overs and queries sent again

	Installs   uint64 `json:"installs"`   // ActInstall emitted
	Upgrades   uint64 `json:"upgrades"`   // Shared -> Exclusive without data (ActUnprotect)
	Downgrades uint64 `json:"downgrades"` // Exclusive -> Shared to serve a reader (ActProtect)

	InvalidationsSent    uint64 `json:"invalidations_sent"`    // home: MsgInval sent (first transmissions)
	InvalidationsApplied uint64 `json:"invalidations_applied"` // copies dropped on MsgInval

	MigrationsIn  uint64 `json:"migrations_in"`  // pages received with ownership and data
	MigrationsOut uint64 `json:"migrations_out"` // pages handed to another node with ownership
	CopiesOut     uint64 `json:"copies_out"`     // read copies sent to other nodes

	Transactions uint64 `json:"transactions"` // home: transactions completed
	Redrives     uint64 `json:"redrives"`     // home: current transaction driven again by a retried request
	Pipelined    uint64 `json:"pipelined"`    // home: transactions started before the previous one was confirmed

	Holds     uint64 `json:"holds"`      // ActHold emitted: a request waited for the minimum hold
	EarlyFwds uint64 `json:"early_fwds"` // forwards that arrived before the page they ask for, kept until it came

	Stale     uint64 `json:"stale"`     // messages ignored as stale or duplicate
	Anomalies uint64 `json:"anomalies"` // situations the protocol rules out, survived (a bug if non-zero)
}

// Engine is the coherence protocol of one node: the requester side for the
// pages this node uses and the directory for the pages homed on it.
//
// An Engine is a pure state machine. It never blocks, starts no goroutine,
// reads no clock and does no I/O: Fault, Step, Tick and EndHold feed it
// inputs, and Ready hands back what it decided, as a batch of Outputs. It is
// not safe for concurrent use; one goroutine (the daemon's event loop)
// drives it.
//
// The daemon must apply every Output of a batch, in order, before it calls
// Fault, Step, Tick or EndHold again: the engine's idea of which pages are
// present is only true once the batch is applied.
type Engine struct {
	id    NodeID
	n     int
	pages int
	home  func(PageID) NodeID
	retry uint64
	hold  bool // Config.Hold
	pipe  bool // Config.Hold && !Config.NoPipeline: the home pipelines

	clock clocks.Vector // this node's vector clock
	// snap is a copy of clock, made when first needed after clock last
	// changed: the messages and page versions of one input share it.
	// Clocks handed out are never changed in place by anybody.
	snap clocks.Vector
	// The messages the engine does not keep come from a pool and go back
	// to it at Advance, with their clocks, which share clockBuf: msgSnap
	// is clock in clockBuf, made when first needed after clock last
	// changed. A fault then costs the engine no allocation for them.
	msgFree  []*Message
	msgOut   []*Message // pooled messages handed out since the last Advance
	clockBuf []uint64
	msgSnap  clocks.Vector
	// Requests and transactions that ended go back to their free lists at
	// the next Advance, when no input is under way that might still hold
	// them.
	reqFree, reqDead []*request
	txnFree, txnDead []*txn
	zero             clocks.Vector     // see zeroClock
	floors           map[PageID]uint64 // floors too far above their page's version (aboveBig)
	now              uint64            // ticks so far
	lastReq          uint64            // the last request id used

	local localTable
	dirs  dirTable
	timed map[PageID]struct{} // pages with a request, a confirmation, a kept hand-over or a message waiting: the ones with a pageBusy
	tbuf  []PageID
	// spareBusy are pageBusy values of pages that went idle, for reuse.
	spareBusy []*pageBusy
	// spareDirBusy are dirBusy values of homed pages that went idle, for
	// reuse with the arrays of their queue and open slices.
	spareDirBusy []*dirBusy
	// solo holds NodeID(i) at index i: solo[i:i+1:i+1] is the copy set of
	// a page whose only copy is node i's, shared by every such page and
	// never changed in place.
	solo []NodeID

	out []Output
	// The Outputs and Actions of the batch being produced, and of the one
	// Ready handed out last, which the daemon may still be applying: each
	// Ready hands out one pair and takes the other for the next batch, so
	// that a batch costs no allocation once the buffers are grown.
	spareOut  []Output
	acts      []Action
	spareActs []Action
	loop      []*Message // messages to this node itself, handled before returning
	stats     Stats
	// applying is set from Ready to Advance: the daemon applies the batch
	// and may give no input but Fill. unfilled counts the batch's messages
	// marked NeedData that Fill has not seen.
	applying bool
	unfilled int

	bugs bugs // deliberate protocol bugs; set only by tests to prove the simulator's checks
}

// bugs are deliberate protocol errors. Only tests set them.
type bugs struct {
	skipInval bool // the home grants writes without invalidating the other copies
	noProtect bool // an Exclusive owner sends its page to a reader without write-protecting it
	noRetry   bool // Tick retransmits nothing
	noHold    bool // forwards and invalidations take a page at once, during its hold
	pipeRead  bool // the home pipelines behind a read too, forgetting the new reader's copy
}

// localPage is this node's view of one page, kept in the engine's
// localTable: 24 bytes, since there is one for every page the node touched.
// What the page waits for, if anything, is its pageBusy, in the table too.
type localPage struct {
	version uint64  // the version held (or last held, when Invalid)
	clockP  *uint64 // that version's vector clock (clock)
	// above is how far the floor, the version below which this node never
	// installs a copy (invalidated), lies above version (floor).
	above  uint32
	clockN uint16 // the clock's length - 1, when clockP is set
	state  State
	flags  pageFlags
}

// pageFlags are the minimum hold's (Config.Hold) part of a localPage.
type pageFlags uint8

const (
	pageHold  pageFlags = 1 << iota // made accessible for a local fault; EndHold has not come since
	pageAsked                       // ActHold emitted for this hold
)

// aboveBig in localPage.above says that the floor is too far above the
// version for 32 bits and lives in Engine.floors. Versions differ by that
// much only after billions of writes to a page while this node did not
// look; the floor is exact all the same.
const aboveBig = ^uint32(0)

func (lp *localPage) hold() bool { return lp.flags&pageHold != 0 }

func (lp *localPage) asked() bool { return lp.flags&pageAsked != 0 }

// setHold sets whether the page is in its hold and whether ActHold was
// emitted for it.
func (lp *localPage) setHold(hold, asked bool) {
	lp.flags = 0
	if hold {
		lp.flags |= pageHold
	}
	if asked {
		lp.flags |= pageAsked
	}
}

// floor returns the version below which this node never installs a copy of
// page p, or its version if that is higher: the two checks that use the
// floor (onData, onGrant) come to the same with either, since a valid copy
// is never replaced by an older one and an Invalid page's floor is above
// the version it dropped. Keeping the higher of the two is what makes it
// fit in 32 bits above the version.
func (e *Engine) floor(p PageID, lp *localPage) uint64 {
	if lp.above == aboveBig {
		return e.floors[p]
	}
	return lp.version + uint64(lp.above)
}

// raiseFloor makes f the floor of page p if it is higher.
func (e *Engine) raiseFloor(p PageID, lp *localPage, f uint64) {
	e.setFloor(p, lp, max(e.floor(p, lp), f))
}

// setVersion makes v, which is not below the page's version, the version
// this node holds of page p.
func (e *Engine) setVersion(p PageID, lp *localPage, v uint64) {
	f := e.floor(p, lp)
	lp.version = v
	e.setFloor(p, lp, max(f, v))
}

// setFloor stores floor f >= lp.version.
func (e *Engine) setFloor(p PageID, lp *localPage, f uint64) {
	if lp.above == aboveBig {
		delete(e.floors, p)
	}
	if d := f - lp.version; d < uint64(aboveBig) {
		lp.above = uint32(d)
		return
	}
	if e.floors == nil {
		e.floors = map[PageID]uint64{}
	}
	lp.above, e.floors[p] = aboveBig, f
}

// pageBusy is the part of a page's state that only a page in flight has:
// the pages with one are the engine's timed set, and it is recycled when
// the page waits for nothing again (untime).
type pageBusy struct {
	req    *request // the request in flight or awaiting MsgDone
	xfer   *Message // a page handed over, kept until the home releases it
	xferAt uint64   // tick of the last hand-over or query

	// The messages that wait for the minimum hold or for a copy.
	held  *Message // a forward for the copy this node holds, waiting for the hold to end
	early *Message // a forward for the copy this node's request will bring (pipelined)
	inval *Message // an invalidation that waits for the hold to end
}

// spareBusyMax bounds the recycled pageBusy values an engine keeps.
const spareBusyMax = 64

// clock returns the clock of the version the page holds (or last held).
func (lp *localPage) clock() clocks.Vector {
	if lp.clockP == nil {
		return nil
	}
	return clockOf(lp.clockP, uint32(lp.clockN)+1)
}

// setClock makes c the clock of the page's version. Its length is at most
// Nodes (Step checks it), so length - 1 fits in 16 bits.
func (lp *localPage) setClock(c clocks.Vector) {
	p, n := clockPtr(c)
	lp.clockP, lp.clockN = p, uint16(n-1)
}

// The fields of a pageBusy that may be nil (the page waits for nothing).

func (x *pageBusy) request() *request {
	if x == nil {
		return nil
	}
	return x.req
}

func (x *pageBusy) handedOver() *Message {
	if x == nil {
		return nil
	}
	return x.xfer
}

func (x *pageBusy) waitingInval() *Message {
	if x == nil {
		return nil
	}
	return x.inval
}

// pending reports whether x has a request in flight (not confirming).
func (x *pageBusy) pending() bool {
	r := x.request()
	return r != nil && !r.confirming
}

// request is a fault this node is resolving.
type request struct {
	id         uint64
	access     Access
	confirming bool   // installed; MsgConfirm sent, waiting for MsgDone
	sentAt     uint64 // tick of the last transmission
	wantWrite  bool   // a write fault came while a read was pending
	deferred   *Message
	dropped    bool // MsgDropped received: the old owner no longer holds a copy
}

// New returns the engine of node cfg.ID, with every page Invalid.
func New(cfg Config) (*Engine, error) {
	if cfg.Nodes < 1 || cfg.Nodes > 1<<16 {
		return nil, fmt.Errorf("%w: Nodes is %d, want 1..65536", ErrConfig, cfg.Nodes)
	}
	if int(cfg.ID) >= cfg.Nodes {
		return nil, fmt.Errorf("%w: ID %d is not below Nodes (%d)", ErrConfig, cfg.ID, cfg.Nodes)
	}
	if cfg.Pages < 1 || uint64(cfg.Pages) > 1<<32 {
		return nil, fmt.Errorf("%w: Pages is %d, want 1..2^32", ErrConfig, cfg.Pages)
	}
	if cfg.RetryTicks < 0 {
		return nil, fmt.Errorf("%w: RetryTicks is %d, want >= 0 (0 for the default %d)",
			ErrConfig, cfg.RetryTicks, DefaultRetryTicks)
	}
	e := &Engine{
		id:      cfg.ID,
		n:       cfg.Nodes,
		pages:   cfg.Pages,
		home:    cfg.Home,
		retry:   uint64(cfg.RetryTicks),
		hold:    cfg.Hold,
		pipe:    cfg.Hold && !cfg.NoPipeline,
		lastReq: cfg.ReqBase,
		clock:   clocks.NewVector(cfg.Nodes),
		local:   localTable{pages: cfg.Pages},
		timed:   map[PageID]struct{}{},
		solo:    make([]NodeID, cfg.Nodes),
	}
	for i := range e.solo {
		e.solo[i] = NodeID(i)
	}
	if e.retry == 0 {
		e.retry = DefaultRetryTicks
	}
	if e.home == nil {
		n := cfg.Nodes
		e.home = func(p PageID) NodeID { return NodeID(int(p) % n) }
	}
	e.dirs = newDirTable(cfg.ID, cfg.Nodes, cfg.Pages, e.home)
	return e, nil
}

// checkHome returns the home of page p, or an error if Config.Home returns
// a node outside the cluster.
func (e *Engine) checkHome(p PageID) (NodeID, error) {
	h := e.home(p)
	if int(h) >= e.n {
		return 0, fmt.Errorf("%w: Home(%d) returned node %d, the cluster has %d nodes", ErrConfig, p, h, e.n)
	}
	return h, nil
}

// Fault tells the engine that a local program faulted on page p with access
// a. If the page's state already allows the access, the answer is ActWake;
// if a request for the page is already pending the fault joins it;
// otherwise the engine sends a request to the page's home. A write fault on
// a Shared page is an upgrade.
func (e *Engine) Fault(p PageID, a Access) error {
	e.input("Fault")
	if int(p) >= e.pages {
		return fmt.Errorf("%w: page %d is outside the region (%d pages)", ErrBadFault, p, e.pages)
	}
	if a != Read && a != Write {
		return fmt.Errorf("%w: access %d, want Read or Write", ErrBadFault, a)
	}
	if _, err := e.checkHome(p); err != nil {
		return err
	}
	e.tick()
	lp := e.local.at(p)
	switch {
	case a == Read:
		e.stats.ReadFaults++
	case lp.state == Shared:
		e.stats.UpgradeFaults++
	default:
		e.stats.WriteFaults++
	}
	switch {
	case lp.state == Exclusive || (a == Read && lp.state == Shared):
		e.stats.Wakes++
		e.act(Action{Kind: ActWake, Page: p, Version: lp.version, Clock: lp.clock()})
	case e.local.busy(p).pending():
		e.stats.Coalesced++
		if r := e.local.busy(p).req; a == Write && r.access == Read {
			// Ask for ownership as soon as the read copy is in.
			r.wantWrite = true
		}
	default:
		// A request awaiting MsgDone is replaced: the home takes a newer
		// request from this node as the confirmation of the older one.
		e.newRequest(p, lp, a)
	}
	e.drain()
	return nil
}

// Step hands the engine a message that arrived for this node. It returns
// an error, and changes nothing, for a message that is malformed or not for
// this node. Step keeps no reference to m, its Data or its Meta past the
// outputs it makes (an ActInstall's Data may be m's): they may be reused
// once the caller has applied those outputs and called Advance (see
// UnmarshalMessageView, Decoder); a message it must keep waiting is
// copied. It only reads m's Clock, and may keep m's PageClock, which nobody
// may change then. So one engine's output may be stepped into another
// directly, before the first one's Advance.
func (e *Engine) Step(m *Message) error {
	e.input("Step")
	if err := e.check(m); err != nil {
		return err
	}
	e.clock.Merge(m.Clock)
	e.tick()
	e.dispatch(m)
	e.drain()
	return nil
}

// check validates a message against the protocol's structure.
func (e *Engine) check(m *Message) error {
	if m == nil {
		return fmt.Errorf("%w: nil message", ErrMalformed)
	}
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return fmt.Errorf("%w: unknown message type %d", ErrMalformed, m.Type)
	}
	if m.To != e.id {
		return fmt.Errorf("%w: %v is for node %d, this is node %d", ErrNotForNode, m.Type, m.To, e.id)
	}
	if int(m.From) >= e.n || int(m.Requester) >= e.n {
		return fmt.Errorf("%w: %v from node %d for requester %d, the cluster has %d nodes",
			ErrMalformed, m.Type, m.From, m.Requester, e.n)
	}
	if int(m.Page) >= e.pages {
		return fmt.Errorf("%w: %v for page %d, the region has %d pages", ErrMalformed, m.Type, m.Page, e.pages)
	}
	if len(m.Clock) > e.n || len(m.PageClock) > e.n {
		return fmt.Errorf("%w: %v carries a clock of %d entries (page clock %d), the cluster has %d nodes",
			ErrMalformed, m.Type, len(m.Clock), len(m.PageClock), e.n)
	}
	if m.NeedData {
		return fmt.Errorf("%w: %v still has NeedData set: the sender's daemon did not fill it", ErrMalformed, m.Type)
	}
	home, err := e.checkHome(m.Page)
	if err != nil {
		return err
	}
	switch m.Type {
	case MsgRequest, MsgInvalAck, MsgConfirm, MsgXferQuery:
		if home != e.id {
			return fmt.Errorf("%w: %v for page %d reached node %d, its home is node %d",
				ErrNotHome, m.Type, m.Page, e.id, home)
		}
		if m.Type == MsgRequest && m.Access != Read && m.Access != Write {
			return fmt.Errorf("%w: request with access %d", ErrMalformed, m.Access)
		}
	case MsgFwdRead, MsgFwdWrite, MsgInval, MsgGrant, MsgDone, MsgRelease:
		if m.From != home {
			return fmt.Errorf("%w: %v for page %d came from node %d, its home is node %d",
				ErrNotHome, m.Type, m.Page, m.From, home)
		}
	}
	return nil
}

// Tick tells the engine that time passed. Requests, confirmations and
// hand-over queries that got no answer within Config.RetryTicks ticks are
// sent again.
func (e *Engine) Tick() {
	e.input("Tick")
	e.now++
	if e.bugs.noRetry || len(e.timed) == 0 {
		return
	}
	e.tbuf = e.tbuf[:0]
	for p := range e.timed {
		e.tbuf = append(e.tbuf, p)
	}
	slices.Sort(e.tbuf) // deterministic output order
	for _, p := range e.tbuf {
		lp, x := e.local.get(p), e.local.busy(p)
		if r := x.request(); r != nil && e.now-r.sentAt >= e.retry {
			r.sentAt = e.now
			e.stats.Retransmits++
			if r.confirming {
				e.sendConfirm(p, lp, r)
			} else {
				e.sendRequest(p, lp, r)
			}
		}
		if h := x.handedOver(); h != nil && e.now-x.xferAt >= e.retry {
			x.xferAt = e.now
			e.stats.Retransmits++
			e.post(Message{Type: MsgXferQuery, To: e.home(p), Page: p, Version: h.Version})
		}
	}
	e.drain()
}

// Ready returns the outputs produced since the last Advance, in the order
// the daemon must apply them. The daemon applies every one, calling Fill
// for each message marked NeedData as it reaches it, then calls Advance;
// until then it may give the engine no other input (Fault, Step, Tick and
// EndHold panic, as does Ready). The outputs, and the Actions they point
// to, are the engine's and stay valid until the next call of Ready. The
// messages and their clocks stay valid until Advance: most are reused
// after it, so a caller that keeps one longer (to send it later) must copy
// it (Message.Clone). The clocks of Actions are not reused.
func (e *Engine) Ready() []Output {
	if e.applying {
		panic("coherence: Ready called again before Advance: apply the batch, then call Advance")
	}
	out := e.out
	e.out, e.spareOut = e.spareOut[:0], out
	e.acts, e.spareActs = e.spareActs[:0], e.acts
	e.applying = true
	e.unfilled = 0
	for _, o := range out {
		if o.Msg != nil && o.Msg.NeedData {
			e.unfilled++
		}
	}
	return out
}

// Fill gives the engine the page that message m carries: m is an output of
// the batch being applied, marked NeedData, and data is the node's copy of
// m.Page as the daemon read it when it reached m (after the outputs before
// m took effect), encoded as the daemon sends pages, with the daemon's
// metadata in meta. It returns m filled, to be sent at once: data and meta
// may be the daemon's scratch, which it reuses once the message is handed
// to the transport. The engine copies them when it keeps m to send it
// again once the node's copy is gone (a page handed over is dropped right
// after it is sent), so that a read copy costs no allocation here. Fill is
// the one call the daemon makes while it applies a batch.
func (e *Engine) Fill(m *Message, data, meta []byte) *Message {
	if !e.applying || !m.NeedData {
		// Not a message of this batch waiting for its page: the daemon
		// broke the contract. The message goes out as it was filled.
		e.stats.Anomalies++
	} else {
		e.unfilled--
	}
	if e.local.busy(m.Page).handedOver() == m {
		data, meta = slices.Clone(data), slices.Clone(meta)
	}
	m.Data, m.Meta, m.NeedData = data, meta, false
	return m
}

// Advance tells the engine that the daemon applied the batch Ready
// returned. A message of the batch that needed its page and was not
// filled counts as an anomaly: it was never sent.
func (e *Engine) Advance() {
	if !e.applying {
		panic("coherence: Advance without Ready")
	}
	if e.unfilled > 0 {
		e.stats.Anomalies += uint64(e.unfilled)
	}
	e.applying, e.unfilled = false, 0
	e.recycle()
}

// input checks that no batch is being applied when an input comes.
func (e *Engine) input(name string) {
	if e.applying {
		panic("coherence: " + name + " called while a Ready batch is applied: call Advance first")
	}
}

// HasReady reports whether Ready has outputs to return.
func (e *Engine) HasReady() bool { return len(e.out) > 0 }

// State returns the local state of page p (Invalid for a page outside the
// region).
func (e *Engine) State(p PageID) State {
	if lp := e.local.get(p); lp != nil {
		return lp.state
	}
	return Invalid
}

// Version returns the version of page p this node holds and its vector
// clock; for an Invalid page, the version it last held (0 and nil if none).
func (e *Engine) Version(p PageID) (uint64, clocks.Vector) {
	if lp := e.local.get(p); lp != nil {
		return lp.version, lp.clock().Clone()
	}
	return 0, nil
}

// Pending returns the number of pages with a fault in flight (a request
// sent and not yet answered).
func (e *Engine) Pending() int {
	n := 0
	for p := range e.timed {
		if e.local.busy(p).pending() {
			n++
		}
	}
	return n
}

// Idle reports whether the engine waits for nothing: no request in flight,
// no confirmation unacknowledged, no handed-over page kept, no forward or
// invalidation waiting (for a page or for EndHold), and no transaction open
// or queued at this node's directory.
func (e *Engine) Idle() bool {
	if len(e.timed) > 0 {
		return false
	}
	idle := true
	e.dirs.allBusy(func(x *dirBusy) bool {
		idle = len(x.open) == 0 && len(x.queue) == 0
		return idle
	})
	return idle
}

// EndHold tells the engine that the minimum hold of page p has passed: the
// local program had its chance at the copy the engine last installed or
// upgraded (ActInstall, ActUnprotect), and the requests from other nodes
// that wait for it may take it now. The daemon calls it in answer to
// ActHold, once per ActHold; a call without an ActHold outstanding for p
// is ignored.
func (e *Engine) EndHold(p PageID) {
	e.input("EndHold")
	lp := e.local.get(p)
	if lp == nil || !lp.asked() {
		return
	}
	e.tick()
	lp.setHold(false, false)
	e.settle(p, lp)
	e.drain()
}

// Clock returns a copy of the node's vector clock.
func (e *Engine) Clock() clocks.Vector { return e.clock.Clone() }

// tick records an input event in the node's clock.
func (e *Engine) tick() {
	e.clock.Tick(int(e.id))
	e.snap, e.msgSnap = nil, nil
}

// clockNow returns the node's clock as a vector nobody changes.
func (e *Engine) clockNow() clocks.Vector {
	if e.snap == nil {
		e.snap = e.clock.Clone()
	}
	return e.snap
}

// zeroClock returns the clock of a page never written: all zeros, one
// vector shared by every such page (nobody changes a clock in place).
func (e *Engine) zeroClock() clocks.Vector {
	if e.zero == nil {
		e.zero = clocks.NewVector(e.n)
	}
	return e.zero
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats { return e.stats }

// busy returns page p's pageBusy, making it if it has none (from the ones
// recycled, if any), and puts page p in the timed set.
func (e *Engine) busy(p PageID) *pageBusy {
	x := e.local.busy(p)
	if x == nil {
		if k := len(e.spareBusy); k > 0 {
			x, e.spareBusy = e.spareBusy[k-1], e.spareBusy[:k-1]
		} else {
			x = &pageBusy{}
		}
		e.local.setBusy(p, x)
		e.timed[p] = struct{}{}
	}
	return x
}

// act queues a page action. Its Clock is shared, not copied: a page's clock
// is replaced, never changed in place, whenever its version changes.
func (e *Engine) act(a Action) {
	e.acts = append(e.acts, a)
	e.out = append(e.out, Output{Act: &e.acts[len(e.acts)-1]})
}

// msgFreeMax bounds the recycled messages an engine keeps.
const msgFreeMax = 256

// post sends m, which the engine does not keep. It comes from the pool
// and, with its clock, is reused after the next Advance (Ready's
// contract). One for this node is handled before that, within the input
// that sent it, and a handler that keeps a message copies it (Step's
// contract).
func (e *Engine) post(m Message) {
	var p *Message
	if k := len(e.msgFree); k > 0 {
		p, e.msgFree = e.msgFree[k-1], e.msgFree[:k-1]
	} else {
		p = new(Message)
	}
	*p = m
	p.From = e.id
	if e.msgSnap == nil {
		start := len(e.clockBuf)
		e.clockBuf = append(e.clockBuf, e.clock...)
		e.msgSnap = clocks.Vector(e.clockBuf[start:len(e.clockBuf):len(e.clockBuf)])
	}
	p.Clock = e.msgSnap
	e.msgOut = append(e.msgOut, p)
	e.queue(p)
}

// recycle takes back the pooled messages and clocks of the batch just
// applied. They are scribbled over first, so that a caller that kept one
// past Advance (against Ready's contract) sees garbage where it uses it:
// an unknown message type and clocks of all ones.
func (e *Engine) recycle() {
	for i, m := range e.msgOut {
		*m = Message{Type: msgTypeEnd, Page: ^PageID(0)}
		if len(e.msgFree) < msgFreeMax {
			e.msgFree = append(e.msgFree, m)
		}
		e.msgOut[i] = nil
	}
	e.msgOut = e.msgOut[:0]
	for i := range e.clockBuf {
		e.clockBuf[i] = ^uint64(0)
	}
	e.clockBuf, e.msgSnap = e.clockBuf[:0], nil
	for i, r := range e.reqDead {
		*r = request{}
		if len(e.reqFree) < msgFreeMax {
			e.reqFree = append(e.reqFree, r)
		}
		e.reqDead[i] = nil
	}
	e.reqDead = e.reqDead[:0]
	for i, t := range e.txnDead {
		*t = txn{waiting: t.waiting[:0]}
		if len(e.txnFree) < msgFreeMax {
			e.txnFree = append(e.txnFree, t)
		}
		e.txnDead[i] = nil
	}
	e.txnDead = e.txnDead[:0]
}

// send stamps m with this node's identity and clock and queues it. The
// engine may keep m (a page handed over, which it may send again); post
// sends the others.
func (e *Engine) send(m *Message) {
	m.From = e.id
	m.Clock = e.clockNow()
	e.queue(m)
}

// queue queues a stamped message: as an Output for another node,
// internally for this node.
func (e *Engine) queue(m *Message) {
	if m.To == e.id {
		if m.NeedData {
			// The protocol never sends a page to the node that holds it.
			e.stats.Anomalies++
			return
		}
		e.loop = append(e.loop, m)
		return
	}
	e.out = append(e.out, Output{Msg: m})
}

// drain handles the messages this node sent itself.
func (e *Engine) drain() {
	// By index, so that the array is kept for the next input: a handler
	// may append to e.loop as it goes.
	for i := 0; i < len(e.loop); i++ {
		m := e.loop[i]
		e.loop[i] = nil
		e.dispatch(m)
	}
	e.loop = e.loop[:0]
}

func (e *Engine) dispatch(m *Message) {
	switch m.Type {
	case MsgRequest:
		e.onRequest(m)
	case MsgInvalAck:
		e.onInvalAck(m)
	case MsgConfirm:
		e.onConfirm(m)
	case MsgXferQuery:
		e.onXferQuery(m)
	case MsgFwdRead, MsgFwdWrite:
		e.onForward(m)
	case MsgInval:
		e.onInval(m)
	case MsgData:
		e.onData(m)
	case MsgGrant:
		e.onGrant(m)
	case MsgDropped:
		e.onDropped(m)
	case MsgDone:
		e.onDone(m)
	case MsgRelease:
		e.onRelease(m)
	}
}

func (e *Engine) stale() { e.stats.Stale++ }

// untime takes page p out of the timed set and recycles its pageBusy if it
// waits for nothing any more. Callers do not use the page's pageBusy, nor
// its request, after it.
func (e *Engine) untime(p PageID) {
	x := e.local.busy(p)
	if x == nil || x.req != nil || x.xfer != nil || x.held != nil || x.early != nil || x.inval != nil {
		return
	}
	delete(e.timed, p)
	e.local.setBusy(p, nil)
	if len(e.spareBusy) < spareBusyMax {
		*x = pageBusy{}
		e.spareBusy = append(e.spareBusy, x)
	}
}

// Requester side.

func (e *Engine) newRequest(p PageID, lp *localPage, a Access) {
	e.lastReq++
	var r *request
	if k := len(e.reqFree); k > 0 {
		r, e.reqFree = e.reqFree[k-1], e.reqFree[:k-1]
	} else {
		r = new(request)
	}
	*r = request{id: e.lastReq, access: a, sentAt: e.now}
	e.busy(p).req = r
	e.stats.Requests++
	e.sendRequest(p, lp, r)
}

func (e *Engine) sendRequest(p PageID, lp *localPage, r *request) {
	m := Message{Type: MsgRequest, To: e.home(p), Page: p, Req: r.id, Requester: e.id, Access: r.access}
	if lp.state != Invalid {
		m.Have, m.HaveVersion = true, lp.version
	}
	e.post(m)
}

func (e *Engine) sendConfirm(p PageID, lp *localPage, r *request) {
	e.post(Message{Type: MsgConfirm, To: e.home(p), Page: p, Req: r.id, Requester: e.id,
		Version: lp.version, PageClock: lp.clock()})
}

// inFlight returns the page's request if m answers it.
func (e *Engine) inFlight(m *Message) (*localPage, *request) {
	lp := e.local.at(m.Page)
	r := e.local.busy(m.Page).request()
	if r == nil || r.confirming || r.id != m.Req || m.Requester != e.id {
		return lp, nil
	}
	return lp, r
}

func (e *Engine) onData(m *Message) {
	lp, r := e.inFlight(m)
	if r == nil || m.Version < e.floor(m.Page, lp) || (lp.state != Invalid && m.Version < lp.version) {
		e.stale()
		return
	}
	if m.Writable != (r.access == Write) {
		e.stats.Anomalies++
		return
	}
	if m.Writable && !m.SenderDropped && !r.dropped {
		// The old owner still holds a read-only copy until its MsgDropped
		// arrives; writing now would put a writer beside a reader.
		// Kept past this Step: with its own copy of the page, since
		// the caller may reuse m's (Step's contract).
		d := *m
		d.Data, d.Meta = slices.Clone(m.Data), slices.Clone(m.Meta)
		r.deferred = &d
		return
	}
	e.install(m.Page, lp, r, m)
}

func (e *Engine) onDropped(m *Message) {
	lp, r := e.inFlight(m)
	if r == nil || r.access != Write {
		e.stale()
		return
	}
	r.dropped = true
	if d := r.deferred; d != nil && d.Version == m.Version {
		e.install(m.Page, lp, r, d)
	}
}

func (e *Engine) install(p PageID, lp *localPage, r *request, m *Message) {
	if lp.state != Invalid {
		// Cannot happen: a node asks for data only without a copy.
		e.stats.Anomalies++
		e.act(Action{Kind: ActDrop, Page: p, Version: lp.version, Clock: lp.clock()})
	}
	var c clocks.Vector
	switch {
	case m.Writable:
		c = e.clockNow() // a new version starts here
	case m.PageClock != nil:
		// Shared, not copied: nobody changes a message once it is out
		// (Step's contract), and neither does the engine.
		c = m.PageClock
	default:
		c = e.zeroClock()
	}
	e.setVersion(p, lp, m.Version)
	lp.setClock(c)
	lp.state = Shared
	if m.Writable {
		lp.state = Exclusive
		if !m.Zero {
			e.stats.MigrationsIn++
		}
	}
	e.stats.Installs++
	e.act(Action{Kind: ActInstall, Page: p, Writable: m.Writable, Zero: m.Zero, Data: m.Data, Meta: m.Meta,
		From: m.From, Version: m.Version, Clock: c})
	lp.setHold(e.hold, false)
	e.complete(p, lp, r)
	e.settle(p, lp)
}

func (e *Engine) onGrant(m *Message) {
	lp, r := e.inFlight(m)
	if r == nil {
		e.stale()
		return
	}
	switch {
	case m.Writable && r.access == Write && lp.state == Shared && lp.version+1 == m.Version && m.Version >= e.floor(m.Page, lp):
		lp.state = Exclusive
		e.setVersion(m.Page, lp, m.Version)
		lp.setClock(e.clockNow())
		e.stats.Upgrades++
		e.act(Action{Kind: ActUnprotect, Page: m.Page, Writable: true, Version: lp.version, Clock: lp.clock()})
		lp.setHold(e.hold, false)
	case lp.state != Invalid && lp.version == m.Version && (!m.Writable || lp.state == Exclusive):
		// The directory says this node already holds what it asked for.
		e.act(Action{Kind: ActWake, Page: m.Page, Version: lp.version, Clock: lp.clock()})
	default:
		e.stale()
		return
	}
	e.complete(m.Page, lp, r)
	e.settle(m.Page, lp)
}

// complete finishes request r after the page was installed or upgraded.
func (e *Engine) complete(p PageID, lp *localPage, r *request) {
	if r.wantWrite && lp.state == Shared {
		// The new request tells the home that r completed.
		e.newRequest(p, lp, Write)
		return
	}
	r.confirming, r.deferred, r.sentAt = true, nil, e.now
	e.sendConfirm(p, lp, r)
}

func (e *Engine) onDone(m *Message) {
	x := e.local.busy(m.Page)
	r := x.request()
	if r == nil || !r.confirming || r.id != m.Req || m.Requester != e.id {
		e.stale()
		return
	}
	x.req = nil
	e.reqDead = append(e.reqDead, r)
	e.untime(m.Page)
}

// Holder side.

// onInval drops the copy older than the invalidated version and
// acknowledges; during the page's hold the invalidation waits for EndHold.
func (e *Engine) onInval(m *Message) {
	lp := e.local.at(m.Page)
	e.raiseFloor(m.Page, lp, m.Version)
	if lp.hold() && !e.bugs.noHold && lp.state != Invalid && lp.version < m.Version {
		if w := e.local.busy(m.Page).waitingInval(); w != nil && w.Version > m.Version {
			// Cannot be current: the newer one's transaction started after
			// this one was acknowledged. No acknowledgement while the copy
			// is here.
			e.stale()
			return
		}
		e.busy(m.Page).inval = m.Clone()
		e.askHold(m.Page, lp)
		return
	}
	e.applyInval(m.Page, lp, m)
}

func (e *Engine) applyInval(p PageID, lp *localPage, m *Message) {
	if lp.state != Invalid && lp.version < m.Version {
		lp.state = Invalid
		e.stats.InvalidationsApplied++
		e.act(Action{Kind: ActDrop, Page: p, Version: lp.version, Clock: lp.clock()})
	} else {
		e.stale() // already gone or newer; acknowledge again all the same
	}
	e.post(Message{Type: MsgInvalAck, To: m.From, Page: p, Req: m.Req, Requester: m.Requester, Version: m.Version})
}

// seal write-protects an Exclusive page before its content leaves the node:
// the version's content is final from here on, and its clock is the clock
// of this moment.
func (e *Engine) seal(p PageID, lp *localPage) {
	if lp.state != Exclusive {
		return
	}
	lp.state = Shared
	lp.setClock(e.clockNow())
	e.stats.Downgrades++
	if e.bugs.noProtect {
		return
	}
	e.act(Action{Kind: ActProtect, Page: p, Version: lp.version, Clock: lp.clock()})
}

// servable reports whether this node holds the copy forward m asks for: the
// version a reader gets, or the version before the one a writer gets.
func (lp *localPage) servable(m *Message) bool {
	if lp.state == Invalid {
		return false
	}
	if m.Type == MsgFwdWrite {
		return lp.version+1 == m.Version
	}
	return lp.version == m.Version
}

// takes reports whether serving forward m takes access away from this
// node: a hand-over drops the page, a read copy write-protects an
// Exclusive one. A read copy of a Shared page takes nothing.
func (lp *localPage) takes(m *Message) bool {
	return m.Type == MsgFwdWrite || lp.state == Exclusive
}

// onForward handles MsgFwdRead and MsgFwdWrite. The home sends a forward
// to the page's owner or, pipelining, to its pending owner: a node whose
// request for the page is granted but whose copy may not have arrived.
// Such a forward waits here until the copy comes (early), and a forward
// that would take the page during its hold waits for EndHold (held). A
// node can have one of each: the owner of a Shared copy whose own write
// request was pipelined behind the hand-over of that copy.
func (e *Engine) onForward(m *Message) {
	lp := e.local.at(m.Page)
	if x := e.local.busy(m.Page).handedOver(); m.Type == MsgFwdWrite && x != nil && x.Req == m.Req && x.Requester == m.Requester && x.Version == m.Version {
		// The hand-over was lost: send the kept copy again.
		if x.NeedData {
			e.stats.Anomalies++ // the daemon did not Fill it
			return
		}
		c := x.Clone()
		c.SenderDropped = true
		e.stats.Retransmits++
		e.send(c)
		return
	}
	if m.Requester == e.id {
		e.stats.Anomalies++
		return
	}
	switch {
	case lp.servable(m):
		e.hand(m.Page, lp, m)
	case e.local.busy(m.Page).pending():
		// The page may be on its way: the home granted this node's
		// request and forwarded the next one without waiting. Keep the
		// newest such forward; the copy the request brings decides
		// whether it is current (settle).
		x := e.local.busy(m.Page)
		if w := x.early; w != nil && w.Version > m.Version {
			e.stale()
			return
		}
		if x.early == nil {
			e.stats.EarlyFwds++
		}
		x.early = m.Clone()
	default:
		e.stale()
	}
}

// hand serves forward m, which asks for the copy this node holds, or keeps
// it until EndHold if serving it would take the page during its hold.
func (e *Engine) hand(p PageID, lp *localPage, m *Message) {
	if lp.hold() && lp.takes(m) && !e.bugs.noHold {
		e.busy(p).held = m.Clone()
		e.askHold(p, lp)
		return
	}
	if x := e.local.busy(p); x != nil {
		x.held = nil
	}
	e.serve(p, lp, m)
	e.untime(p)
}

// serve answers forward m, which lp can serve.
func (e *Engine) serve(p PageID, lp *localPage, m *Message) {
	e.seal(p, lp)
	if m.Type == MsgFwdRead {
		e.stats.CopiesOut++
		e.post(Message{Type: MsgData, To: m.Requester, Page: p, Req: m.Req, Requester: m.Requester,
			Version: lp.version, PageClock: lp.clock(), NeedData: true})
		return
	}
	d := &Message{Type: MsgData, To: m.Requester, Page: p, Req: m.Req, Requester: m.Requester,
		Version: m.Version, PageClock: lp.clock(), NeedData: true, Writable: true}
	e.send(d)
	lp.state = Invalid
	e.raiseFloor(p, lp, m.Version)
	e.act(Action{Kind: ActDrop, Page: p, Version: lp.version, Clock: lp.clock()})
	e.post(Message{Type: MsgDropped, To: m.Requester, Page: p, Req: m.Req, Requester: m.Requester, Version: m.Version})
	x := e.busy(p)
	x.xfer, x.xferAt = d, e.now
	e.stats.MigrationsOut++
}

// askHold asks the daemon for EndHold, once per hold.
func (e *Engine) askHold(p PageID, lp *localPage) {
	if lp.asked() {
		return
	}
	lp.flags |= pageAsked
	e.stats.Holds++
	e.act(Action{Kind: ActHold, Page: p, Version: lp.version, Clock: lp.clock()})
}

// settle handles the messages that wait on page p after its state or its
// hold changed: an invalidation applies once the hold is over; a forward
// is served if this node now holds what it asks for (after the hold, if it
// takes the page), an early one is kept while this node's request may
// still bring that, and the others are dropped as stale.
func (e *Engine) settle(p PageID, lp *localPage) {
	x := e.local.busy(p)
	if x == nil {
		return // nothing waits
	}
	// x stays the page's until untime: hand and serve only add to it.
	if m := x.inval; m != nil && !lp.hold() {
		x.inval = nil
		e.applyInval(p, lp, m)
	}
	if m := x.held; m != nil {
		if lp.servable(m) {
			e.hand(p, lp, m)
			if x = e.local.busy(p); x == nil {
				return // hand served it and the page waits for nothing else
			}
		} else {
			x.held = nil
			e.stale()
		}
	}
	if m := x.early; m != nil && x.held == nil {
		switch {
		case lp.servable(m):
			x.early = nil
			e.hand(p, lp, m)
		case x.pending():
			// Still on its way.
		default:
			x.early = nil
			e.stale()
		}
	}
	e.untime(p)
}

func (e *Engine) onRelease(m *Message) {
	x := e.local.busy(m.Page)
	if h := x.handedOver(); h == nil || h.Version > m.Version {
		e.stale()
		return
	}
	x.xfer = nil
	e.untime(m.Page)
}
