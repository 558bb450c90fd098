package coherence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/dsmrt/dsm/clocks"
)

// SimConfig describes one simulated run of a cluster: N engines, a program
// per node whose threads read and write a few pages, a daemon per node that
// applies the engines' outputs the way the real one does, and a network that
// loses, duplicates, reorders and delays messages. SimConfigFor derives a
// config from a seed.
type SimConfig struct {
	Seed       uint64  // drives every random choice of the run
	Nodes      int     // 1 .. 64
	Pages      int     // pages in the region
	Threads    int     // program threads per node
	Ops        int     // accesses per thread
	WriteRatio float64 // share of accesses that are writes
	// Sequential is the probability that a thread's next access is to the
	// page after its last one (wrapping), as a scan's is; the others go to
	// a random page. It makes the runs of faults read-ahead acts on.
	Sequential float64
	Loss       float64 // probability that a message is lost (chaotic phase)
	Dup        float64 // probability that a message is delivered twice (chaotic phase)
	MaxDelay   int     // a message is delivered 0..MaxDelay steps after it is sent
	RetryTicks int     // Config.RetryTicks of every engine
	Hold       bool    // Config.Hold of every engine: the daemons run the minimum hold
	NoPipeline bool    // Config.NoPipeline of every engine
	// HoldSteps is the daemons' minimum hold: each install or upgrade draws
	// a hold of 0..HoldSteps steps from the moment it is applied, and one
	// in three is also patient, lasting until every thread it woke has made
	// its access. An ActHold is answered with EndHold once the hold has
	// passed: at once if it has already.
	HoldSteps int
	// SettleSteps bounds the reliable phase at the end: a run that does not
	// reach quiescence within it violates liveness. 0 means 200000.
	SettleSteps int
	// Trace, if set, receives one line per step.
	Trace io.Writer

	// Daemon, when set, puts a real daemon in every node's place: the
	// simulator hands it the node's engine, memory, programs and network
	// (a SimWorld), feeds it the programs' faults, the messages and the
	// ticks, and the daemon applies the engine's outputs itself, through
	// that memory. Package pager's tests give it the node daemon's page
	// logic, so that the invariants are checked on the code that runs.
	// Without it the simulator applies the outputs with a minimal daemon
	// of its own, one output per step; the tests that make a daemon
	// misbehave on purpose, or end holds by hand, use that one.
	Daemon func(SimWorld) (SimDaemon, error)
	// PageSize is the size of a page with a Daemon; 0 means 64. (The
	// simulator's own daemon keeps pages of 8 bytes.)
	PageSize int
	// Programs is how many programs are attached to each node with a
	// Daemon, 0 meaning 1; a node's threads are dealt among them.
	Programs int

	// Test hooks: deliberate bugs, to prove the checks catch them.
	bugs      bugs
	mutate    func(n NodeID, o *Output) bool // false drops the output
	earlyHold bool                           // the daemons answer ActHold at once, however young the page
	manual    bool                           // ActHolds wait until a test ends them (the message-by-message tests)
}

// SimConfigFor returns the config of the seeded schedule seed: cluster size,
// pages, threads, network faults and timing are all drawn from the seed.
func SimConfigFor(seed uint64) SimConfig {
	r := rand.New(rand.NewPCG(seed, 0x5eed5eed))
	pick := func(xs ...float64) float64 { return xs[r.IntN(len(xs))] }
	return SimConfig{
		Seed:       seed,
		Nodes:      2 + r.IntN(5),
		Pages:      1 + r.IntN(4),
		Threads:    1 + r.IntN(2),
		Ops:        2 + r.IntN(10),
		WriteRatio: pick(0.1, 0.5, 0.9),
		Loss:       pick(0, 0.05, 0.2, 0.4),
		Dup:        pick(0, 0.05, 0.2),
		MaxDelay:   int(pick(0, 2, 10, 40)),
		RetryTicks: 1 + r.IntN(8),
		Hold:       r.IntN(8) != 0,
		NoPipeline: r.IntN(5) == 0,
		HoldSteps:  int(pick(0, 3, 20)),
		Programs:   1 + r.IntN(2),
	}
}

// SimResult summarises a run.
type SimResult struct {
	Steps      int     // simulation steps taken
	Reads      int     // reads the programs completed
	Writes     int     // writes the programs completed
	Faults     int     // faults the programs raised
	Sent       int     // messages the daemons sent
	Lost       int     // messages the network lost
	Duplicated int     // messages the network delivered twice
	Holds      int     // EndHold calls the daemons made
	Prefetches int     // prefetch hints given to daemons (SimPrefetcher)
	Stats      []Stats // each engine's counters at the end
}

// Add adds o's counts to r's (not its Stats), to sum many schedules.
func (r *SimResult) Add(o SimResult) {
	r.Steps += o.Steps
	r.Reads += o.Reads
	r.Writes += o.Writes
	r.Faults += o.Faults
	r.Sent += o.Sent
	r.Lost += o.Lost
	r.Duplicated += o.Duplicated
	r.Holds += o.Holds
	r.Prefetches += o.Prefetches
}

// ErrViolation is wrapped by every *Violation.
var ErrViolation = errors.New("coherence: simulation found a violation")

// The kinds of Violation.
const (
	ViolTwoWriters     = "two writable copies"
	ViolReaderBeside   = "readable copy beside a writable one"
	ViolStaleRead      = "read did not return the latest write"
	ViolStaleCopy      = "copy does not hold the latest write"
	ViolInvalidData    = "invalid page holds data"
	ViolStateMismatch  = "engine state and page disagree"
	ViolVersion        = "page version out of order"
	ViolClock          = "page version clocks out of causal order"
	ViolDaemonContract = "output breaks the daemon contract"
	ViolHold           = "page taken away during its minimum hold"
	ViolProgress       = "woken thread faulted again before its access"
	ViolEngineError    = "engine refused an input"
	ViolAnomaly        = "engine reached an impossible state"
	ViolLiveness       = "run did not complete once the network was reliable"
)

// Violation is a broken invariant found by Simulate.
type Violation struct {
	Seed   uint64
	Step   int
	Kind   string // one of the Viol* constants
	Detail string
}

// Error says what broke, where, and in which schedule.
func (v *Violation) Error() string {
	return fmt.Sprintf("seed %d, step %d: %s: %s", v.Seed, v.Step, v.Kind, v.Detail)
}

// Unwrap returns ErrViolation.
func (v *Violation) Unwrap() error { return ErrViolation }

// Simulate runs one seeded schedule and checks the protocol after every
// step: at most one writable copy of a page, no readable copy beside a
// writable one, every copy and every read holds the latest write, Invalid
// pages hold no data, the engines' states match the pages, versions grow one
// write at a time, and every output keeps the daemon contract. With Hold it
// also checks the progress guarantee: no page is write-protected or dropped
// between the install or upgrade that answered a local fault and the
// EndHold that ends its hold, and a thread woken by an install whose hold
// is patient makes its access without faulting again. The run has a
// chaotic phase (the programs run, the network misbehaves) and a reliable
// phase (no loss or duplication) that must reach quiescence: every fault
// served, every transaction closed. The same config gives the same run.
func Simulate(cfg SimConfig) (SimResult, error) {
	s, err := newSim(cfg)
	if err != nil {
		return SimResult{}, err
	}
	err = s.run()
	s.res.Steps = s.step
	for _, n := range s.nodes {
		s.res.Stats = append(s.res.Stats, n.eng.Stats())
	}
	return s.res, err
}

func newSim(cfg SimConfig) (*sim, error) {
	if cfg.Nodes < 1 || cfg.Nodes > 64 || cfg.Pages < 1 || cfg.Threads < 1 || cfg.Ops < 0 || cfg.MaxDelay < 0 {
		return nil, fmt.Errorf("%w: simulate %d nodes, %d pages, %d threads, %d ops, delay %d: want 1..64 nodes, at least one page and thread, no negative counts",
			ErrConfig, cfg.Nodes, cfg.Pages, cfg.Threads, cfg.Ops, cfg.MaxDelay)
	}
	s := &sim{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(cfg.Seed, 0xd15c0)),
		latest: make([]uint64, cfg.Pages),
		gver:   make([]uint64, cfg.Pages),
		gclock: make([]clocks.Vector, cfg.Pages),
		chaos:  true,
	}
	for i := range cfg.Nodes {
		e, err := New(Config{ID: NodeID(i), Nodes: cfg.Nodes, Pages: cfg.Pages, RetryTicks: cfg.RetryTicks,
			Hold: cfg.Hold, NoPipeline: cfg.NoPipeline})
		if err != nil {
			return nil, err
		}
		e.bugs = cfg.bugs
		n := &simNode{id: NodeID(i), eng: e, pages: make([]simPage, cfg.Pages), threads: make([]simThread, cfg.Threads)}
		for t := range n.threads {
			n.threads[t].left = cfg.Ops
		}
		s.nodes = append(s.nodes, n)
		if cfg.Daemon != nil {
			if err := s.startDaemon(n); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

type sim struct {
	cfg    SimConfig
	rng    *rand.Rand
	step   int
	nodes  []*simNode
	net    []packet
	latest []uint64        // per page: the value of the latest write
	gver   []uint64        // per page: the version of the latest writable copy
	gclock []clocks.Vector // per page: the newest version clock installed
	value  uint64          // the last value written
	chaos  bool
	res    SimResult
	cands  []cand
	err    error // with a Daemon: the first violation found during its call
}

type simNode struct {
	id      NodeID
	eng     *Engine
	d       SimDaemon     // the daemon under test, or nil: the simulator's own
	progs   []*SimProgram // with d: the attached programs
	outq    []Output      // the rest of the batch being applied
	views   [][]byte      // buffers of messages stepped in the batch, reused at its Advance
	dec     Decoder       // decodes the messages the engine steps, as a daemon does
	inbox   []simEvent    // faults, messages and ends of holds waiting for the daemon
	holds   []simHold     // ActHolds not answered yet
	pages   []simPage
	threads []simThread
}

// simPage is a node's physical copy of a page: absent when data is nil.
type simPage struct {
	data     []byte
	writable bool

	// With a Daemon: when the copy was last made accessible (present, or
	// writable in a program where it was not writable anywhere), and its
	// content then.
	madeAt   time.Time
	madeData []byte

	// The daemon's minimum hold of the copy it last installed or upgraded.
	held      bool // in its hold: EndHold not called since
	installed int  // step of the install or upgrade
	holdLen   int  // the hold drawn for it, in steps
	patient   bool // the hold also lasts until the threads it woke made their access
}

// simHold is an ActHold the daemon has not answered yet.
type simHold struct {
	page    PageID
	due     int  // EndHold from this step
	patient bool // and once no thread is owed an access to the page
}

type simEvent struct {
	msg     []byte // a message, or else a fault or an EndHold
	page    PageID
	access  Access
	endHold bool
	prog    int  // with a Daemon: the program that faulted
	wp      bool // with a Daemon: a write to a write-protected page
}

type simThread struct {
	prog    int    // with a Daemon: the program it belongs to
	left    int    // accesses still to start
	busy    bool   // an access is under way
	blocked bool   // faulted; waits for a wake
	owed    bool   // woken by an install with a patient hold: the access must not fault
	page    PageID // the access under way
	access  Access
}

type packet struct {
	at int // deliverable from this step
	to NodeID
	b  []byte
}

type candKind uint8

const (
	cThread candKind = iota
	cApply
	cInput
	cDeliver
	cTick
	cHold
)

type cand struct {
	kind candKind
	node int
	arg  int
}

func (s *sim) violation(kind, format string, args ...any) error {
	return &Violation{Seed: s.cfg.Seed, Step: s.step, Kind: kind, Detail: fmt.Sprintf(format, args...)}
}

func (s *sim) tracef(format string, args ...any) {
	if s.cfg.Trace != nil {
		fmt.Fprintf(s.cfg.Trace, "%6d "+format+"\n", append([]any{s.step}, args...)...)
	}
}

func (s *sim) run() error {
	chaosBudget := 1000 + 300*s.cfg.Nodes*s.cfg.Threads*s.cfg.Ops
	settle := s.cfg.SettleSteps
	if settle == 0 {
		settle = 200000
	}
	for limit := chaosBudget; ; s.step++ {
		if s.chaos && (s.step >= limit || s.programsDone()) {
			s.chaos = false
			limit = s.step + settle
			s.tracef("network reliable from here")
		}
		if !s.chaos {
			if s.quiescent() {
				return s.finalChecks()
			}
			if s.step >= limit {
				return s.violation(ViolLiveness, "not quiescent after %d reliable steps: %s", settle, s.waitingFor())
			}
		}
		touched, err := s.once()
		if err != nil {
			return err
		}
		if err := s.check(touched); err != nil {
			return err
		}
	}
}

// once takes one step: a thread's access, a daemon's output or input, a
// delivery or a tick, chosen at random among those possible. It returns the
// node whose engine or pages the step may have changed.
func (s *sim) once() (*simNode, error) {
	c := s.cands[:0]
	for i, n := range s.nodes {
		for t := range n.threads {
			th := &n.threads[t]
			if !th.blocked && (th.busy || th.left > 0) {
				c = append(c, cand{cThread, i, t}, cand{cThread, i, t})
			}
		}
		if len(n.outq) > 0 {
			c = append(c, cand{cApply, i, 0}, cand{cApply, i, 0}, cand{cApply, i, 0})
		} else if len(n.inbox) > 0 {
			c = append(c, cand{cInput, i, 0}, cand{cInput, i, 0}, cand{cInput, i, 0})
		}
		for h := range n.holds {
			if s.holdOver(n, n.holds[h]) {
				c = append(c, cand{cHold, i, h})
			}
		}
		if n.d != nil {
			if at := n.d.NextHold(); !at.IsZero() && !at.After(s.now()) {
				c = append(c, cand{cHold, i, -1})
			}
		}
	}
	for i, p := range s.net {
		if p.at <= s.step {
			c = append(c, cand{cDeliver, 0, i})
		}
	}
	if s.chaos || len(c) == 0 {
		for i, n := range s.nodes {
			if len(n.outq) == 0 {
				c = append(c, cand{cTick, i, 0})
			}
		}
	}
	s.cands = c
	if len(c) == 0 {
		return nil, nil // every daemon is mid-batch with nothing to do: cannot happen
	}
	x := c[s.rng.IntN(len(c))]
	n := s.nodes[x.node]
	switch x.kind {
	case cThread:
		return n, s.access(n, &n.threads[x.arg])
	case cApply:
		o := n.outq[0]
		n.outq = n.outq[1:]
		err := s.apply(n, o)
		if len(n.outq) == 0 {
			s.advance(n) // the batch is applied
		}
		return n, err
	case cInput:
		ev := n.inbox[0]
		n.inbox = n.inbox[1:]
		if n.d != nil {
			return n, s.daemonInput(n, ev)
		}
		return n, s.input(n, ev)
	case cDeliver:
		p := s.net[x.arg]
		s.net = slices.Delete(s.net, x.arg, x.arg+1)
		s.tracef("deliver to %d", p.to)
		dst := s.nodes[p.to]
		dst.inbox = append(dst.inbox, simEvent{msg: p.b})
		return nil, nil
	case cTick:
		s.tracef("node %d: tick", n.id)
		if n.d != nil {
			n.d.Tick(s.now())
			if s.err == nil && s.chaos && s.rng.IntN(16) == 0 {
				s.prefetch(n)
			}
			return n, s.daemonHolds(n)
		}
		n.eng.Tick()
		return n, s.collect(n)
	case cHold:
		if x.arg < 0 {
			s.tracef("node %d: holds due", n.id)
			return n, s.daemonHolds(n)
		}
		h := n.holds[x.arg]
		n.holds = slices.Delete(n.holds, x.arg, x.arg+1)
		s.tracef("node %d: hold of p%d over", n.id, h.page)
		n.inbox = append(n.inbox, simEvent{page: h.page, endHold: true})
		return nil, nil
	}
	return nil, nil
}

// holdOver reports whether the daemon's hold h has passed.
func (s *sim) holdOver(n *simNode, h simHold) bool {
	if s.step < h.due {
		return false
	}
	if h.patient {
		for _, th := range n.threads {
			if th.owed && th.page == h.page {
				return false
			}
		}
	}
	return true
}

// access runs one step of a program thread: start an access and try it.
func (s *sim) access(n *simNode, th *simThread) error {
	if !th.busy {
		th.left--
		th.busy = true
		if s.cfg.Sequential > 0 && s.rng.Float64() < s.cfg.Sequential {
			th.page = (th.page + 1) % PageID(s.cfg.Pages)
		} else {
			th.page = PageID(s.rng.IntN(s.cfg.Pages))
		}
		th.access = Read
		if s.rng.Float64() < s.cfg.WriteRatio {
			th.access = Write
		}
	}
	pg := &n.pages[th.page]
	writable := pg.writable
	if n.d != nil {
		writable = pg.data != nil && !n.progs[th.prog].wp[th.page]
	}
	switch {
	case th.access == Read && pg.data != nil:
		v := binary.LittleEndian.Uint64(pg.data)
		s.tracef("node %d: read p%d = %d", n.id, th.page, v)
		if v != s.latest[th.page] {
			return s.violation(ViolStaleRead, "node %d read %d from page %d, the latest write is %d", n.id, v, th.page, s.latest[th.page])
		}
		s.res.Reads++
		th.busy, th.owed = false, false
	case th.access == Write && pg.data != nil && writable:
		s.value++
		binary.LittleEndian.PutUint64(pg.data, s.value)
		s.latest[th.page] = s.value
		s.tracef("node %d: write p%d = %d", n.id, th.page, s.value)
		s.res.Writes++
		th.busy, th.owed = false, false
	default:
		if th.owed {
			return s.violation(ViolProgress, "node %d: a thread woken for a %v of page %d faults again (the page is %v)",
				n.id, th.access, th.page, physState(pg))
		}
		s.tracef("node %d: %v fault on p%d", n.id, th.access, th.page)
		s.res.Faults++
		th.blocked = true
		n.inbox = append(n.inbox, simEvent{page: th.page, access: th.access, prog: th.prog, wp: pg.data != nil && th.access == Write})
	}
	return nil
}

// input feeds the daemon's next event to its engine.
func (s *sim) input(n *simNode, ev simEvent) error {
	if ev.endHold {
		s.tracef("node %d: EndHold(p%d)", n.id, ev.page)
		s.res.Holds++
		n.pages[ev.page].held = false
		n.eng.EndHold(ev.page)
		return s.collect(n)
	}
	if ev.msg == nil {
		s.tracef("node %d: Fault(p%d, %v)", n.id, ev.page, ev.access)
		if err := n.eng.Fault(ev.page, ev.access); err != nil {
			return s.violation(ViolEngineError, "node %d: Fault: %v", n.id, err)
		}
		return s.collect(n)
	}
	// Decoded as a daemon decodes it: the page aliases a buffer, which is
	// reused once the actions are taken, and the message is the decoder's,
	// which the next message overwrites (Step's contract).
	buf := slices.Clone(ev.msg)
	m, err := n.dec.Decode(buf)
	if err != nil {
		return s.violation(ViolEngineError, "node %d: cannot decode a message: %v", n.id, err)
	}
	s.tracef("node %d: Step(%v)", n.id, m)
	if err := n.eng.Step(m); err != nil {
		return s.violation(ViolEngineError, "node %d: Step(%v): %v", n.id, m, err)
	}
	n.views = append(n.views, buf)
	return s.collect(n)
}

// scribble overwrites a reused buffer, so that a page the engine kept a
// reference to instead of a copy shows up as garbage where it is used.
func scribble(b []byte) {
	for i := range b {
		b[i] = 0xA5
	}
}

// collect queues the engine's outputs for the daemon.
func (s *sim) collect(n *simNode) error {
	for _, o := range n.eng.Ready() {
		if s.cfg.mutate != nil && !s.cfg.mutate(n.id, &o) {
			continue
		}
		n.outq = append(n.outq, o)
	}
	if len(n.outq) == 0 {
		s.advance(n)
	}
	return nil
}

// advance tells n's engine that its batch is applied, and reuses the
// buffers of the messages stepped for it: a page the engine kept a
// reference to instead of a copy then shows up as garbage where it is
// used (Step's contract).
func (s *sim) advance(n *simNode) {
	n.eng.Advance()
	for _, b := range n.views {
		scribble(b)
	}
	n.views = n.views[:0]
}

// apply carries out one output the way the node daemon does.
func (s *sim) apply(n *simNode, o Output) error {
	s.tracef("node %d: %v", n.id, o)
	if m := o.Msg; m != nil {
		if m.To == n.id || int(m.To) >= len(s.nodes) {
			return s.violation(ViolDaemonContract, "node %d sends %v", n.id, m)
		}
		if m.NeedData {
			pg := &n.pages[m.Page]
			if pg.data == nil || pg.writable {
				return s.violation(ViolDaemonContract, "node %d: %v needs data but the page is %s",
					n.id, m, physState(pg))
			}
			m = n.eng.Fill(m, slices.Clone(pg.data), []byte{byte(n.id)})
		}
		s.transmit(m.To, m.AppendBinary(nil))
		return nil
	}
	a := o.Act
	if a == nil || int(a.Page) >= s.cfg.Pages {
		return s.violation(ViolDaemonContract, "node %d: output %v", n.id, o)
	}
	pg := &n.pages[a.Page]
	switch a.Kind {
	case ActInstall:
		if pg.data != nil {
			return s.violation(ViolDaemonContract, "node %d installs page %d, which is present", n.id, a.Page)
		}
		if err := s.checkVersion(n, a, a.Writable); err != nil {
			return err
		}
		switch {
		case a.Zero:
			pg.data = make([]byte, 8)
		case len(a.Data) == 8 && len(a.Meta) == 1 && NodeID(a.Meta[0]) == a.From:
			pg.data = slices.Clone(a.Data)
		default:
			return s.violation(ViolDaemonContract, "node %d installs page %d with %d bytes of data and meta %v from node %d",
				n.id, a.Page, len(a.Data), a.Meta, a.From)
		}
		pg.writable = a.Writable
		s.startHold(n, a.Page)
		s.wake(n, a.Page)
	case ActProtect:
		if pg.data == nil || !pg.writable {
			return s.violation(ViolDaemonContract, "node %d protects page %d, which is %s", n.id, a.Page, physState(pg))
		}
		if pg.held {
			return s.violation(ViolHold, "node %d write-protects page %d %d steps after it was made writable, before EndHold",
				n.id, a.Page, s.step-pg.installed)
		}
		pg.writable = false
	case ActUnprotect:
		if pg.data == nil || pg.writable {
			return s.violation(ViolDaemonContract, "node %d unprotects page %d, which is %s", n.id, a.Page, physState(pg))
		}
		if err := s.checkVersion(n, a, true); err != nil {
			return err
		}
		pg.writable = true
		s.startHold(n, a.Page)
		s.wake(n, a.Page)
	case ActDrop:
		if pg.data == nil {
			return s.violation(ViolDaemonContract, "node %d drops page %d, which is absent", n.id, a.Page)
		}
		if pg.held {
			return s.violation(ViolHold, "node %d drops page %d %d steps after it was installed, before EndHold",
				n.id, a.Page, s.step-pg.installed)
		}
		pg.data, pg.writable = nil, false
	case ActWake:
		s.wake(n, a.Page)
	case ActHold:
		if !s.cfg.Hold || pg.data == nil || !pg.held || slices.ContainsFunc(n.holds, func(h simHold) bool { return h.page == a.Page }) {
			return s.violation(ViolDaemonContract, "node %d: %v, the page is %s (held %v, hold config %v)",
				n.id, a, physState(pg), pg.held, s.cfg.Hold)
		}
		h := simHold{page: a.Page, due: pg.installed + pg.holdLen, patient: pg.patient}
		switch {
		case s.cfg.manual:
			h.due = math.MaxInt
		case s.cfg.earlyHold:
			h = simHold{page: a.Page}
		}
		if s.holdOver(n, h) {
			// The hold has passed: EndHold right after this batch.
			n.inbox = slices.Insert(n.inbox, 0, simEvent{page: a.Page, endHold: true})
		} else {
			n.holds = append(n.holds, h)
		}
	default:
		return s.violation(ViolDaemonContract, "node %d: unknown action %v", n.id, a)
	}
	return nil
}

// checkVersion checks that a writable copy starts the next version and a
// read copy is the current one, and that version clocks only move forward
// in causal order.
func (s *sim) checkVersion(n *simNode, a *Action, writable bool) error {
	want := s.gver[a.Page]
	if writable {
		want++
	}
	if a.Version != want {
		return s.violation(ViolVersion, "node %d: %v, the page's current version is %d", n.id, a, s.gver[a.Page])
	}
	if len(a.Clock) != s.cfg.Nodes {
		return s.violation(ViolClock, "node %d: %v carries clock %v", n.id, a, a.Clock)
	}
	if o := a.Clock.Compare(s.gclock[a.Page]); o != clocks.After && o != clocks.Equal {
		return s.violation(ViolClock, "node %d: %v has clock %v, %v the page's previous clock %v",
			n.id, a, a.Clock, o, s.gclock[a.Page])
	}
	s.gver[a.Page], s.gclock[a.Page] = want, a.Clock.Clone()
	return nil
}

func (s *sim) wake(n *simNode, p PageID) {
	for t := range n.threads {
		if th := &n.threads[t]; th.blocked && th.page == p {
			th.blocked = false
		}
	}
}

// startHold starts the daemon's minimum hold of page p, just installed or
// upgraded, and marks the threads it must let make their access.
func (s *sim) startHold(n *simNode, p PageID) {
	if !s.cfg.Hold {
		return
	}
	pg := &n.pages[p]
	pg.held, pg.installed = true, s.step
	pg.holdLen = s.rng.IntN(s.cfg.HoldSteps + 1)
	pg.patient = s.rng.IntN(3) == 0
	for t := range n.threads {
		if th := &n.threads[t]; th.busy && th.page == p {
			th.owed = pg.patient && (th.access == Read || pg.writable)
		}
	}
}

func physState(pg *simPage) State {
	switch {
	case pg.data == nil:
		return Invalid
	case pg.writable:
		return Exclusive
	}
	return Shared
}

// check verifies the invariants of the whole cluster, and that the engine
// of node touched (if any; the others did not change) agrees with its
// pages.
func (s *sim) check(touched *simNode) error {
	for p := range s.cfg.Pages {
		writer, readers := -1, 0
		for _, n := range s.nodes {
			pg := &n.pages[p]
			if pg.data == nil {
				continue
			}
			if v := binary.LittleEndian.Uint64(pg.data); v != s.latest[p] {
				return s.violation(ViolStaleCopy, "node %d holds %d in page %d (%s), the latest write is %d",
					n.id, v, p, physState(pg), s.latest[p])
			}
			if !pg.writable {
				readers++
				continue
			}
			if writer >= 0 {
				return s.violation(ViolTwoWriters, "nodes %d and %d both hold page %d writable", writer, n.id, p)
			}
			writer = int(n.id)
		}
		if writer >= 0 && readers > 0 {
			return s.violation(ViolReaderBeside, "node %d holds page %d writable while %d nodes hold it read-only", writer, p, readers)
		}
	}
	// Mid-batch the engine is ahead of the pages: compare once it is applied.
	if n := touched; n != nil && len(n.outq) == 0 {
		for p := range n.pages {
			st, ph := n.eng.State(PageID(p)), physState(&n.pages[p])
			switch {
			case st == Invalid && ph != Invalid:
				return s.violation(ViolInvalidData, "node %d: engine says page %d is invalid, the page holds data (%v)", n.id, p, ph)
			case st != ph:
				return s.violation(ViolStateMismatch, "node %d: engine says page %d is %v, the page is %v", n.id, p, st, ph)
			}
		}
	}
	return nil
}

func (s *sim) programsDone() bool {
	for _, n := range s.nodes {
		for _, th := range n.threads {
			if th.busy || th.left > 0 {
				return false
			}
		}
	}
	return true
}

func (s *sim) quiescent() bool {
	if len(s.net) > 0 || !s.programsDone() {
		return false
	}
	for _, n := range s.nodes {
		if len(n.outq) > 0 || len(n.inbox) > 0 || len(n.holds) > 0 || !n.eng.Idle() {
			return false
		}
		if n.d != nil && !n.d.NextHold().IsZero() {
			return false
		}
	}
	return true
}

// waitingFor describes what keeps a run from quiescence.
func (s *sim) waitingFor() string {
	var b []byte
	for _, n := range s.nodes {
		for t, th := range n.threads {
			if th.busy {
				b = fmt.Appendf(b, "node %d thread %d waits for a %v of page %d (blocked=%v); ", n.id, t, th.access, th.page, th.blocked)
			}
		}
		for _, h := range n.holds {
			b = fmt.Appendf(b, "node %d holds page %d until step %d (patient %v); ", n.id, h.page, h.due, h.patient)
		}
		if n.d != nil {
			if at := n.d.NextHold(); !at.IsZero() {
				b = fmt.Appendf(b, "node %d's daemon holds pages until %v; ", n.id, at.Sub(s.now()))
			}
		}
		if pend := n.eng.Pending(); pend > 0 {
			b = fmt.Appendf(b, "node %d has %d requests in flight; ", n.id, pend)
		}
		for p := range s.cfg.Pages {
			if d, ok := n.eng.DirEntry(PageID(p)); ok && (d.Busy || d.Queue > 0) {
				b = fmt.Appendf(b, "page %d's home %d is busy with node %d, %d queued; ", p, n.id, d.Requester, d.Queue)
			}
		}
		if !n.eng.Idle() {
			b = fmt.Appendf(b, "node %d not idle; ", n.id)
		}
	}
	if len(s.net) > 0 {
		b = fmt.Appendf(b, "%d messages in the network", len(s.net))
	}
	return string(b)
}

func (s *sim) finalChecks() error {
	for _, n := range s.nodes {
		if a := n.eng.Stats().Anomalies; a > 0 {
			return s.violation(ViolAnomaly, "node %d counted %d anomalies", n.id, a)
		}
	}
	return nil
}
