package rc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// NodeID names a node of the cluster, 0 .. Nodes-1.
type NodeID uint16

// PageID is a page of the region.
type PageID uint32

// Config configures an Engine.
type Config struct {
	ID       NodeID
	Nodes    int
	PageSize int
	// Home returns the home of a page; every node must use the same one.
	Home func(PageID) NodeID
	// InPlace, when set, names the pages whose home writes them in place
	// (see "Pages written in place" in the package doc): the home's
	// program memory is their master copy until another node asks for
	// one. Every node must use the same.
	InPlace func(PageID) bool
	// Retry is how many ticks a fetch or a diff waits for its answer
	// before it is sent again (default 3).
	Retry int
	// MaxNotices bounds the notices a node keeps of its own intervals
	// (default 4096). An acquirer that asks for older ones than it keeps
	// gets an answer marked truncated and drops every copy it has: the
	// price of bounded memory for a node that lagged far behind.
	MaxNotices int

	bugs bugs // deliberate mistakes, for the simulator's own tests
}

// bugs break the protocol on purpose, to show that the simulator's checks
// catch what they are meant to.
type bugs struct {
	noInvalidate bool // Acquire takes the clock but invalidates nothing
	noFlush      bool // Acquire does not flush the node's written pages first
	wideRuns     bool // diffs include unchanged bytes between changed ones
	arrival      bool // the home applies diffs in arrival order, ignoring priorities
	noRaces      bool // the home reports no race
	noRefresh    bool // a copy whose writes lost a race is not refreshed
	noTruncate   bool // an answer that lacks forgotten notices does not say so
	keepOwn      bool // a shared in-place page's home copy stays untracked
	trustPayload bool // an acquire takes a payload's notices even when they leave a gap
}

// Kind is a message type.
type Kind uint8

// Message kinds.
const (
	MsgFetch     Kind = iota + 1 // node -> home: send me the page
	MsgPage                      // home -> node: the page, with the clock of what it contains
	MsgDiff                      // writer -> home: the bytes it changed in one interval
	MsgDiffAck                   // home -> writer: the diff is applied
	MsgNoticeReq                 // acquirer -> writer: which pages did your intervals (Interval, Upto] write?
	MsgNotices                   // writer -> acquirer: the notices asked for, up to Upto
)

// Run is a range of changed bytes of a page.
type Run struct {
	Off  uint32
	Data []byte
}

// Message flags.
const (
	// FlagTruncated (MsgNotices): the writer no longer keeps some of the
	// notices asked for.
	FlagTruncated uint8 = 1 << iota
)

// Message is what engines send each other.
type Message struct {
	Kind     Kind
	Flags    uint8
	From, To NodeID
	Page     PageID
	// Seq is the fetch's request number (MsgFetch, MsgPage) or the
	// writer's diff number (MsgDiff, MsgDiffAck).
	Seq uint64
	// Interval (MsgDiff) is the writer's interval the diff closes.
	Interval uint64
	// Clock is the writer's clock, with Interval in its own entry
	// (MsgDiff), or, for every node, the last of its intervals applied to
	// the home's master copy (MsgPage).
	Clock clocks.Vector
	Data  []byte // MsgPage
	Runs  []Run  // MsgDiff
	// Upto (MsgNoticeReq) is the last interval asked about, 0 for every
	// closed one; (MsgNotices) the last interval the answer covers.
	Upto    uint64
	Notices []Notice // MsgNotices
}

// Notice says that a node wrote pages in one of its intervals.
type Notice struct {
	Node     NodeID
	Interval uint64
	Pages    []PageID
}

// Payload is what a release hands, through a lock or a barrier, to the
// next acquirer: the releaser's clock, and the notices of the releaser's
// latest intervals (at most maxPayloadNotices of them, naming at most
// maxPayloadPages pages in all). The acquirer asks each node whose
// intervals the clock covers and it has not seen for the pages they wrote
// (MsgNoticeReq), unless the payload's notices cover every such interval:
// a barrier-synchronous program, whose nodes see each other's every
// interval at each barrier, then acquires with no message. Every node
// keeps the notices of its own intervals, so a payload stays small however
// long the history.
type Payload struct {
	Clock   clocks.Vector
	Notices []Notice
}

// Bounds on the notices a payload carries.
const (
	maxPayloadNotices = 4
	maxPayloadPages   = 256
)

// Merge returns one payload covering all of ps: what a barrier hands every
// node that passes it.
func Merge(ps ...Payload) Payload {
	var out Payload
	for _, p := range ps {
		out.Clock = clocks.Merge(out.Clock, p.Clock)
		for _, n := range p.Notices {
			if !slices.ContainsFunc(out.Notices, func(x Notice) bool { return x.Node == n.Node && x.Interval == n.Interval }) {
				out.Notices = append(out.Notices, n)
			}
		}
	}
	return out
}

// payload returns what a release hands the next acquirer: the clock and
// the newest own notices.
func (e *Engine) payload() Payload {
	pl := Payload{Clock: e.clock.Clone()}
	pages := 0
	for i := len(e.own) - 1; i >= 0 && len(pl.Notices) < maxPayloadNotices; i-- {
		n := e.own[i]
		if pages+len(n.Pages) > maxPayloadPages {
			break
		}
		pages += len(n.Pages)
		pl.Notices = append(pl.Notices, n)
	}
	slices.Reverse(pl.Notices)
	return pl
}

// covered returns the notices of node j in ns for its intervals (lo, hi],
// and whether ns holds one for every such interval (every closed interval
// wrote pages and has a notice).
func covered(ns []Notice, j NodeID, lo, hi uint64) ([]Notice, bool) {
	var out []Notice
	for _, n := range ns {
		if n.Node == j && n.Interval > lo && n.Interval <= hi {
			out = append(out, n)
		}
	}
	return out, uint64(len(out)) == hi-lo
}

// Write identifies one interval's write of a page.
type Write struct {
	Node     NodeID
	Interval uint64
	Clock    clocks.Vector
}

// Race is a data race found by a page's home: two concurrent writes by
// different nodes changed the same bytes.
type Race struct {
	Page     PageID
	Off, Len uint32
	A, B     Write // A arrived first; the byte keeps the value of the one with the higher priority
}

// Install asks the daemon to install page data as the node's copy. Data is
// the engine's own copy of the page (its twin): the daemon copies it into
// the program's memory before it gives the engine its next input, and
// never writes it.
type Install struct {
	Page PageID
	Data []byte // nil with Own: a page of zeros
	// Own: the page is one this node is the home of and writes in place
	// (Config.InPlace): install it writable and do not track its writes
	// until Ready asks to share it.
	Own bool
}

// Done reports the end of a Release or an Acquire.
type Done struct {
	Op      uint64
	Payload *Payload // Release: what to hand the next acquirer
}

// Ready is what the engine has for the daemon.
type Ready struct {
	Messages    []Message
	Installs    []Install
	Invalidates []PageID
	Done        []Done
	Races       []Race
	// Shares are pages this node is the home of and writes in place that
	// another node asked for: write-protect each in the program's memory
	// (so that later writes are tracked as for any copy), read it, and
	// hand it to Shared.
	Shares []PageID
}

// PageData is the current contents of a page the program wrote.
type PageData struct {
	Page PageID
	Data []byte
}

// Stats count what an engine did.
type Stats struct {
	Fetches, Stale, Diffs, DiffBytes, Retransmits, Duplicates, Invalidations, Races int
	// Truncated counts acquires that dropped every copy because a writer
	// no longer kept the notices they needed.
	Truncated int
	// DiffMsgBytes counts the diff messages' encoded bytes (DiffBytes only
	// their changed bytes).
	DiffMsgBytes int
	// RemoteDiffs counts the diffs sent to another node (the others were
	// applied here, at their home).
	RemoteDiffs int
	// Shares counts the in-place pages another node first asked for
	// (Shared).
	Shares int
	// PayloadNotices counts the nodes an acquire took notices of from the
	// payload, without asking them.
	PayloadNotices int
}

// Engine is one node's side of the protocol, and the home side for the
// pages homed on it.
type Engine struct {
	cfg   Config
	clock clocks.Vector // the intervals of every node known closed; own entry: own closed intervals
	own   []Notice      // this node's closed intervals that wrote pages, in order
	// ownFloor is the last own interval whose notice was forgotten
	// (Config.MaxNotices).
	ownFloor uint64
	// need holds, per page, the latest interval of each node a notice
	// says wrote it: a copy must contain these.
	need   map[PageID]clocks.Vector
	copies map[PageID]*copyState
	homed  map[PageID]*master
	// sharing holds the fetches of in-place pages that wait for Shared.
	sharing map[PageID][]Message
	// segScratch is applyRuns' scratch.
	segScratch []seg
	// localRuns holds the runs of a release's diffs to pages homed here,
	// which the home applies before the release returns: a float page
	// changed in its low bytes is some 500 runs, 16 KiB of them, at every
	// release of a page the home writes after sharing it.
	localRuns []Run
	// fetchingSet and lostSet hold the pages whose copy is being fetched
	// and whose copy lost bytes to a race (some may have been invalidated
	// since): Tick and an acquire's end look at these, not at every copy.
	fetchingSet, lostSet map[PageID]struct{}

	fetchSeq, diffSeq, askSeq uint64
	diffs                     map[uint64]*pendingDiff
	op                        *syncOp
	now                       uint64
	rd                        Ready
	stats                     Stats
}

type copyState struct {
	valid    bool
	fetching bool
	seq      uint64 // the fetch in flight
	sentAt   uint64
	// refetch: the fetch in flight was asked before an acquire that could
	// not learn what the copy must contain: ask again when it answers.
	refetch bool
	clock   clocks.Vector // what the copy contains
	twin    []byte
	// lost: bytes this node wrote lost a race at the home, so the copy
	// differs from the master; the next acquire refreshes it.
	lost bool
	// own: the copy is the master (an in-place page no other node has
	// asked for): no twin, no diff, never invalidated.
	own bool
}

type pendingDiff struct {
	msg    Message
	sentAt uint64
}

type syncOp struct {
	id       uint64
	acquire  bool
	all      bool    // AcquireAll: every node's closed intervals
	payload  Payload // Acquire
	waiting  int     // diffs not yet acknowledged
	interval uint64  // the interval the flush closes; 0 when it wrote nothing
	pages    []PageID
	// The notices asked for (acquire, after the flush): by node, the
	// request in flight, then the answer.
	asks    map[NodeID]*noticeAsk
	pending int
}

type noticeAsk struct {
	msg    Message
	sentAt uint64
	done   bool
}

// New returns an engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Nodes < 1 || int(cfg.ID) >= cfg.Nodes || cfg.PageSize < 1 || cfg.Home == nil {
		return nil, fmt.Errorf("rc: bad config: node %d of %d, page size %d, home set %v", cfg.ID, cfg.Nodes, cfg.PageSize, cfg.Home != nil)
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 3
	}
	if cfg.MaxNotices <= 0 {
		cfg.MaxNotices = 4096
	}
	return &Engine{
		cfg:         cfg,
		clock:       clocks.NewVector(cfg.Nodes),
		need:        map[PageID]clocks.Vector{},
		copies:      map[PageID]*copyState{},
		homed:       map[PageID]*master{},
		sharing:     map[PageID][]Message{},
		fetchingSet: map[PageID]struct{}{},
		lostSet:     map[PageID]struct{}{},
		diffs:       map[uint64]*pendingDiff{},
	}, nil
}

// Clock returns a copy of the node's clock.
func (e *Engine) Clock() clocks.Vector { return e.clock.Clone() }

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats { return e.stats }

// Ready returns and forgets what the engine has for the daemon.
func (e *Engine) Ready() Ready {
	rd := e.rd
	e.rd = Ready{}
	return rd
}

// Valid reports whether the node has a copy of page p.
func (e *Engine) Valid(p PageID) bool {
	c := e.copies[p]
	return c != nil && c.valid
}

// Busy reports whether a Release or Acquire is in progress.
func (e *Engine) Busy() bool { return e.op != nil }

// Idle reports whether nothing waits for an answer.
func (e *Engine) Idle() bool {
	return e.op == nil && len(e.diffs) == 0 && len(e.fetchingSet) == 0
}

func (e *Engine) me() NodeID { return e.cfg.ID }

func (e *Engine) send(m Message) {
	m.From = e.me()
	e.rd.Messages = append(e.rd.Messages, m)
}

func (e *Engine) copyOf(p PageID) *copyState {
	c := e.copies[p]
	if c == nil {
		c = &copyState{}
		e.copies[p] = c
	}
	return c
}

// Fault asks for a copy of page p, which the program touched and the node
// has none of. The copy comes as an Install.
func (e *Engine) Fault(p PageID) error {
	home := e.cfg.Home(p)
	if int(home) >= e.cfg.Nodes {
		return fmt.Errorf("rc: page %d has home %d in a cluster of %d", p, home, e.cfg.Nodes)
	}
	c := e.copyOf(p)
	if c.valid || c.fetching {
		return nil
	}
	e.stats.Fetches++
	if home == e.me() && e.Private(p) {
		// Nothing was ever installed: the page is zeros, and the
		// program's memory is its master from now on.
		c.valid, c.own = true, true
		e.rd.Installs = append(e.rd.Installs, Install{Page: p, Own: true})
		return nil
	}
	if home == e.me() {
		m := e.master(p)
		e.install(p, c, m.applied.Clone(), slices.Clone(m.data))
		return nil
	}
	e.fetchSeq++
	c.fetching, c.seq, c.sentAt = true, e.fetchSeq, e.now
	e.fetchingSet[p] = struct{}{}
	e.send(Message{Kind: MsgFetch, To: home, Page: p, Seq: c.seq})
	return nil
}

func (e *Engine) install(p PageID, c *copyState, clock clocks.Vector, data []byte) {
	c.valid, c.fetching, c.lost = true, false, false
	delete(e.fetchingSet, p)
	c.clock = clock
	c.twin = data
	// Not copied: the daemon installs the page before the next input,
	// and only a release, which no page being installed takes part in,
	// writes a twin.
	e.rd.Installs = append(e.rd.Installs, Install{Page: p, Data: data})
}

// covers reports whether a copy with clock have contains the intervals in
// need.
func covers(have, need clocks.Vector) bool {
	for j, k := range need {
		if k > 0 && (j >= len(have) || have[j] < k) {
			return false
		}
	}
	return true
}

// Step takes a message from another engine.
func (e *Engine) Step(m *Message) error {
	if int(m.From) >= e.cfg.Nodes || m.To != e.me() {
		return fmt.Errorf("rc: message %v from %d to %d at node %d", m.Kind, m.From, m.To, e.me())
	}
	switch m.Kind {
	case MsgFetch:
		if e.cfg.Home(m.Page) != e.me() {
			return fmt.Errorf("rc: fetch of page %d from %d, whose home is %d", m.Page, m.From, e.cfg.Home(m.Page))
		}
		if e.Private(m.Page) {
			// The fetch waits for Shared; a node's fetch sent again
			// replaces its earlier one (only its latest is answered).
			q := e.sharing[m.Page]
			if len(q) == 0 {
				e.rd.Shares = append(e.rd.Shares, m.Page)
			}
			if i := slices.IndexFunc(q, func(f Message) bool { return f.From == m.From }); i >= 0 {
				q[i] = *m
			} else {
				e.sharing[m.Page] = append(q, *m)
			}
			return nil
		}
		ms := e.master(m.Page)
		e.send(Message{Kind: MsgPage, To: m.From, Page: m.Page, Seq: m.Seq, Clock: ms.applied.Clone(), Data: slices.Clone(ms.data)})
	case MsgPage:
		c := e.copies[m.Page]
		if c == nil || !c.fetching || c.seq != m.Seq {
			e.stats.Duplicates++
			return nil
		}
		if len(m.Data) != e.cfg.PageSize {
			return fmt.Errorf("rc: page %d from %d has %d bytes, want %d", m.Page, m.From, len(m.Data), e.cfg.PageSize)
		}
		if !covers(m.Clock, e.need[m.Page]) || c.refetch {
			c.refetch = false
			// The home answered before a diff a notice speaks of
			// reached it: ask again.
			e.stats.Stale++
			e.fetchSeq++
			c.seq, c.sentAt = e.fetchSeq, e.now
			e.send(Message{Kind: MsgFetch, To: m.From, Page: m.Page, Seq: c.seq})
			return nil
		}
		e.install(m.Page, c, m.Clock, m.Data)
	case MsgDiff:
		if e.cfg.Home(m.Page) != e.me() {
			return fmt.Errorf("rc: diff of page %d from %d, whose home is %d", m.Page, m.From, e.cfg.Home(m.Page))
		}
		if e.Private(m.Page) {
			return fmt.Errorf("rc: diff of page %d from %d, which no node has asked this home for", m.Page, m.From)
		}
		lost, err := e.applyDiff(m)
		if err != nil {
			return err
		}
		ack := Message{Kind: MsgDiffAck, To: m.From, Page: m.Page, Seq: m.Seq}
		if lost {
			ack.Upto = 1 // the writer's copy lost bytes to a racing write
		}
		e.send(ack)
	case MsgDiffAck:
		d := e.diffs[m.Seq]
		if d == nil {
			e.stats.Duplicates++
			return nil
		}
		delete(e.diffs, m.Seq)
		if m.Upto == 1 {
			if c := e.copies[d.msg.Page]; c != nil {
				c.lost = true
				e.lostSet[d.msg.Page] = struct{}{}
			}
		}
		e.op.waiting--
		if e.op.waiting == 0 {
			e.flushed()
		}
	case MsgNoticeReq:
		upto := m.Upto
		if upto == 0 || upto > e.clock[e.me()] {
			upto = e.clock[e.me()]
		}
		var ns []Notice
		for _, n := range e.own {
			if n.Interval > m.Interval && n.Interval <= upto {
				ns = append(ns, n)
			}
		}
		reply := Message{Kind: MsgNotices, To: m.From, Seq: m.Seq, Interval: m.Interval, Upto: upto, Notices: ns}
		if m.Interval < e.ownFloor && !e.cfg.bugs.noTruncate {
			reply.Flags |= FlagTruncated
		}
		e.send(reply)
	case MsgNotices:
		op := e.op
		if op == nil || op.asks == nil {
			e.stats.Duplicates++
			return nil
		}
		a := op.asks[m.From]
		if a == nil || a.done || a.msg.Seq != m.Seq {
			e.stats.Duplicates++
			return nil
		}
		for _, n := range m.Notices {
			if n.Node != m.From {
				return fmt.Errorf("rc: node %d answers with a notice of node %d", m.From, n.Node)
			}
		}
		a.done = true
		if m.Flags&FlagTruncated != 0 {
			e.dropAll()
		}
		e.takeNotices(m.Notices)
		if op.all {
			op.payload.Clock[m.From] = max(op.payload.Clock[m.From], m.Upto)
		}
		op.pending--
		if op.pending == 0 {
			e.finish()
		}
	default:
		return fmt.Errorf("rc: unknown message kind %d from %d", m.Kind, m.From)
	}
	return nil
}

// Tick advances the engine's time: fetches and diffs unanswered for Retry
// ticks are sent again, in page and diff order (the engine is
// deterministic: a schedule replays from its seed).
func (e *Engine) Tick() {
	e.now++
	var pages []PageID
	for p := range e.fetchingSet {
		if c := e.copies[p]; e.now-c.sentAt >= uint64(e.cfg.Retry) {
			pages = append(pages, p)
		}
	}
	slices.Sort(pages)
	for _, p := range pages {
		c := e.copies[p]
		c.sentAt = e.now
		e.stats.Retransmits++
		e.send(Message{Kind: MsgFetch, To: e.cfg.Home(p), Page: p, Seq: c.seq})
	}
	var seqs []uint64
	for seq, d := range e.diffs {
		if e.now-d.sentAt >= uint64(e.cfg.Retry) {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		d := e.diffs[seq]
		d.sentAt = e.now
		e.stats.Retransmits++
		e.send(d.msg)
	}
	if op := e.op; op != nil {
		for j := range NodeID(e.cfg.Nodes) {
			if a := op.asks[j]; a != nil && !a.done && e.now-a.sentAt >= uint64(e.cfg.Retry) {
				a.sentAt = e.now
				e.stats.Retransmits++
				e.send(a.msg)
			}
		}
	}
}

// ErrBusy reports a Release or Acquire while another is in progress.
var ErrBusy = errors.New("rc: a release or acquire is already in progress")

// Release makes the node's writes visible: dirty holds the current contents
// of every page the program wrote since the last Release or Acquire. The
// engine keeps the Data slices (its diffs are slices of them): the caller
// must not change them afterwards. When
// every home has them, Ready reports Done{Op: op} with the payload to hand
// the next acquirer.
func (e *Engine) Release(op uint64, dirty []PageData) error {
	return e.start(&syncOp{id: op}, dirty)
}

// Acquire brings the node up to date with a release that happens before
// it: p is the releaser's payload (or, at a barrier, the merge of every
// node's). dirty is as for Release: the node's own writes go to the homes
// first. Then the engine asks every node whose intervals p covers and this
// node has not seen which pages they wrote, invalidates the copies that
// lack those writes (reported in Ready before the Done) and takes p's
// clock.
func (e *Engine) Acquire(op uint64, dirty []PageData, p Payload) error {
	if len(p.Clock) > e.cfg.Nodes {
		return fmt.Errorf("rc: a payload clock of %d nodes in a cluster of %d", len(p.Clock), e.cfg.Nodes)
	}
	for _, n := range p.Notices {
		if int(n.Node) >= e.cfg.Nodes || n.Interval == 0 {
			return fmt.Errorf("rc: a payload notice of node %d, interval %d, in a cluster of %d", n.Node, n.Interval, e.cfg.Nodes)
		}
	}
	return e.start(&syncOp{id: op, acquire: true, payload: Payload{Clock: clocks.Merge(p.Clock, clocks.NewVector(e.cfg.Nodes)), Notices: p.Notices}}, dirty)
}

// AcquireAll is Acquire of every release any node finished before it
// started: it asks every other node for the notices of all its closed
// intervals. It is what a program's acquire without a lock or barrier
// (dsm's Region.Acquire) needs, after another node's Release and a signal
// through sequentially consistent memory.
func (e *Engine) AcquireAll(op uint64, dirty []PageData) error {
	return e.start(&syncOp{id: op, acquire: true, all: true, payload: Payload{Clock: clocks.NewVector(e.cfg.Nodes)}}, dirty)
}

func (e *Engine) start(op *syncOp, dirty []PageData) error {
	if e.op != nil {
		return ErrBusy
	}
	// The last release's local runs are applied: their array serves again.
	clear(e.localRuns)
	e.localRuns = e.localRuns[:0]
	if op.acquire && e.cfg.bugs.noFlush {
		dirty = nil
	}
	k := e.clock[e.me()] + 1
	wclock := e.clock.Clone()
	wclock[e.me()] = k
	var local []Message
	var remote []Message
	for _, d := range dirty {
		c := e.copies[d.Page]
		if c == nil || !c.valid {
			return fmt.Errorf("rc: page %d is written but the node has no copy of it", d.Page)
		}
		if c.own {
			continue // written in place: the master has it already
		}
		if len(d.Data) != e.cfg.PageSize {
			return fmt.Errorf("rc: page %d: %d bytes, want %d", d.Page, len(d.Data), e.cfg.PageSize)
		}
		var runs []Run
		if home := e.cfg.Home(d.Page); home == e.me() {
			at := len(e.localRuns)
			e.localRuns = appendRuns(e.localRuns, c.twin, d.Data, e.cfg.bugs.wideRuns)
			runs = e.localRuns[at:len(e.localRuns):len(e.localRuns)]
		} else {
			// Kept until the home acknowledges it (e.diffs).
			runs = diffRuns(c.twin, d.Data, e.cfg.bugs.wideRuns)
		}
		if len(runs) == 0 {
			continue
		}
		copy(c.twin, d.Data)
		c.clock = clocks.Merge(c.clock, nil)
		c.clock[e.me()] = k // the copy holds this interval's writes
		e.diffSeq++
		m := Message{Kind: MsgDiff, To: e.cfg.Home(d.Page), Page: d.Page, Seq: e.diffSeq, Interval: k, Clock: wclock, Runs: runs}
		e.stats.Diffs++
		for _, r := range runs {
			e.stats.DiffBytes += len(r.Data)
		}
		e.stats.DiffMsgBytes += m.size()
		op.pages = append(op.pages, d.Page)
		if m.To == e.me() {
			local = append(local, m)
		} else {
			remote = append(remote, m)
		}
	}
	if len(op.pages) > 0 {
		op.interval = k
	}
	e.op = op
	for i := range local {
		local[i].From = e.me()
		lost, err := e.applyDiff(&local[i])
		if err != nil {
			return err
		}
		if lost {
			e.copies[local[i].Page].lost = true
			e.lostSet[local[i].Page] = struct{}{}
		}
	}
	e.stats.RemoteDiffs += len(remote)
	for _, m := range remote {
		e.diffs[m.Seq] = &pendingDiff{msg: m, sentAt: e.now}
		op.waiting++
		e.send(m)
	}
	if op.waiting == 0 {
		e.flushed()
	}
	return nil
}

// flushed goes on once the operation's diffs are at the homes: the
// interval closes; a release is done; an acquire asks for notices.
func (e *Engine) flushed() {
	op := e.op
	if op.interval > 0 {
		e.clock[e.me()] = op.interval
		e.own = append(e.own, Notice{Node: e.me(), Interval: op.interval, Pages: op.pages})
		if len(e.own) > e.cfg.MaxNotices {
			e.ownFloor = e.own[0].Interval
			e.own = slices.Delete(e.own, 0, 1)
		}
	}
	if !op.acquire {
		e.op = nil
		pl := e.payload()
		e.rd.Done = append(e.rd.Done, Done{Op: op.id, Payload: &pl})
		return
	}
	op.asks = map[NodeID]*noticeAsk{}
	for j := range NodeID(e.cfg.Nodes) {
		if j == e.me() || (!op.all && op.payload.Clock[j] <= e.clock[j]) {
			continue
		}
		if !op.all {
			if ns, ok := covered(op.payload.Notices, j, e.clock[j], op.payload.Clock[j]); ok || e.cfg.bugs.trustPayload && len(ns) > 0 {
				// The payload holds every notice j would send.
				e.stats.PayloadNotices++
				e.takeNotices(ns)
				continue
			}
		}
		e.askSeq++
		m := Message{Kind: MsgNoticeReq, To: j, Seq: e.askSeq, Interval: e.clock[j]}
		if !op.all {
			m.Upto = op.payload.Clock[j]
		}
		op.asks[j] = &noticeAsk{msg: m, sentAt: e.now}
		op.pending++
		e.send(m)
	}
	if op.pending == 0 {
		e.finish()
	}
}

// dropAll invalidates every copy: a writer could not say which pages its
// intervals wrote. Copies being fetched are fetched again when they come,
// since their request may have left before those intervals reached the
// homes.
func (e *Engine) dropAll() {
	e.stats.Truncated++
	var ps []PageID
	for p, c := range e.copies {
		switch {
		case c.own:
			// The master itself: no other node wrote it.
		case c.valid:
			ps = append(ps, p)
		case c.fetching:
			c.refetch = true
		}
	}
	slices.Sort(ps)
	for _, p := range ps {
		c := e.copies[p]
		c.valid, c.twin, c.lost = false, nil, false
		e.stats.Invalidations++
		e.rd.Invalidates = append(e.rd.Invalidates, p)
	}
}

// takeNotices records what the notices say was written and invalidates
// the copies that lack it.
func (e *Engine) takeNotices(ns []Notice) {
	for _, n := range ns {
		for _, p := range n.Pages {
			nd := e.need[p]
			if nd == nil {
				nd = clocks.NewVector(e.cfg.Nodes)
				e.need[p] = nd
			}
			nd[n.Node] = max(nd[n.Node], n.Interval)
			c := e.copies[p]
			if c != nil && c.valid && !c.own && c.clock[n.Node] < n.Interval && !e.cfg.bugs.noInvalidate {
				c.valid = false
				c.twin = nil
				e.stats.Invalidations++
				e.rd.Invalidates = append(e.rd.Invalidates, p)
			}
		}
	}
}

// finish ends an acquire once every notice asked for has come. Copies
// whose writes lost a race at the home are refreshed too, so that every
// node ends up seeing the outcome the homes kept.
func (e *Engine) finish() {
	op := e.op
	e.op = nil
	var lost []PageID
	for p := range e.lostSet {
		if c := e.copies[p]; c.valid && c.lost && !e.cfg.bugs.noRefresh {
			lost = append(lost, p)
		}
	}
	if !e.cfg.bugs.noRefresh {
		clear(e.lostSet)
	}
	slices.Sort(lost)
	for _, p := range lost {
		c := e.copies[p]
		c.valid, c.lost, c.twin = false, false, nil
		e.stats.Invalidations++
		e.rd.Invalidates = append(e.rd.Invalidates, p)
	}
	e.clock = clocks.Merge(e.clock, op.payload.Clock)
	e.rd.Done = append(e.rd.Done, Done{Op: op.id})
}

// diffRuns returns the bytes of cur that differ from twin, as runs of
// consecutive changed bytes. The runs' Data are slices of cur, which the
// caller hands over. Equal words are skipped eight bytes at a time, and a
// word whose eight bytes all changed extends or starts a run at once; only
// words that changed in part are looked at byte by byte. (With the
// wideRuns bug, runs also take the unchanged bytes between changes at most
// 8 bytes apart: the mistake of diffing in blocks larger than what the
// program wrote.)
func diffRuns(twin, cur []byte, wide bool) []Run {
	return appendRuns(nil, twin, cur, wide)
}

// appendRuns is diffRuns appending to dst. Two passes: count the runs,
// then fill them, so that a page changed in hundreds of places (a float64
// array: the bytes that stay equal split the runs) grows dst once at most.
func appendRuns(dst []Run, twin, cur []byte, wide bool) []Run {
	var d differ
	d.scan(twin, cur, false)
	if d.count == 0 {
		return dst
	}
	d = differ{runs: slices.Grow(dst, d.count), base: len(dst), wide: wide}
	d.scan(twin, cur, true)
	return d.runs
}

// differ finds the runs of changed bytes; with fill unset it only counts
// them.
type differ struct {
	runs  []Run
	base  int // runs before this index are another page's
	count int
	start int // the run being built starts here; -1 when none
	wide  bool
}

func (d *differ) end(cur []byte, i int, fill bool) {
	if d.start < 0 {
		return
	}
	s := d.start
	d.start = -1
	if !fill {
		d.count++
		return
	}
	if d.wide && len(d.runs) > d.base {
		last := &d.runs[len(d.runs)-1]
		if int(last.Off)+len(last.Data)+8 >= s {
			last.Data = cur[last.Off:i:i]
			return
		}
	}
	d.runs = append(d.runs, Run{Off: uint32(s), Data: cur[s:i:i]})
}

func (d *differ) scan(twin, cur []byte, fill bool) {
	d.start = -1
	n := len(cur)
	i := 0
	for ; i+8 <= n; i += 8 {
		x := binary.LittleEndian.Uint64(cur[i:]) ^ binary.LittleEndian.Uint64(twin[i:])
		if x == 0 {
			if d.start >= 0 {
				d.end(cur, i, fill)
			}
			continue
		}
		// m: bit b set when byte b changed.
		hi := ((x & 0x7f7f7f7f7f7f7f7f) + 0x7f7f7f7f7f7f7f7f | x) & 0x8080808080808080
		m := uint8((hi >> 7) * 0x0102040810204080 >> 56)
		// Bits where a run starts (changed after unchanged) and ends
		// (unchanged after changed), the byte before the word included.
		var before uint8
		if d.start >= 0 {
			before = 1
		}
		prev := m<<1 | before
		for ev := m&^prev | ^m&prev; ev != 0; ev &= ev - 1 {
			b := bits.TrailingZeros8(ev)
			if m&(1<<b) != 0 {
				d.start = i + b
			} else {
				d.end(cur, i+b, fill)
			}
		}
	}
	for ; i < n; i++ {
		if cur[i] != twin[i] {
			if d.start < 0 {
				d.start = i
			}
		} else if d.start >= 0 {
			d.end(cur, i, fill)
		}
	}
	d.end(cur, n, fill)
}

// Private reports whether p is a page this node is the home of and writes
// in place, and no other node has asked for yet: the program's memory is
// its master.
func (e *Engine) Private(p PageID) bool {
	return e.cfg.InPlace != nil && e.homed[p] == nil && e.cfg.Home(p) == e.me() && e.cfg.InPlace(p)
}

// Shared takes the contents of page p, which Ready asked for in Shares:
// data is what the program's memory holds (nil when the page was never
// installed: zeros), read after the page was write-protected. The page
// gets a master copy like any other and the node's copy a twin; from now
// on the node's writes to it are diffed, and the fetches that waited are
// answered.
func (e *Engine) Shared(p PageID, data []byte) error {
	if !e.Private(p) {
		return fmt.Errorf("rc: page %d is not an in-place page of this home waiting to be shared", p)
	}
	if data != nil && len(data) != e.cfg.PageSize {
		return fmt.Errorf("rc: page %d: %d bytes, want %d", p, len(data), e.cfg.PageSize)
	}
	m := e.master(p)
	if data != nil {
		copy(m.data, data)
	}
	// The master holds every write of the node's closed intervals and
	// some of its open one: its notice, at the next release, invalidates
	// copies taken now if the node writes the page again.
	m.applied[e.me()] = e.clock[e.me()]
	e.stats.Shares++
	if c := e.copies[p]; c != nil && c.own && !e.cfg.bugs.keepOwn {
		c.own = false
		c.clock = m.applied.Clone()
		c.twin = slices.Clone(m.data)
	}
	q := e.sharing[p]
	delete(e.sharing, p)
	for _, f := range q {
		e.send(Message{Kind: MsgPage, To: f.From, Page: p, Seq: f.Seq, Clock: m.applied.Clone(), Data: slices.Clone(m.data)})
	}
	return nil
}
