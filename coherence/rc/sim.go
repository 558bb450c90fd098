package rc

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"

	"github.com/dsmrt/dsm/clocks"
)

// SimConfig describes one simulated schedule: a cluster whose programs take
// locks, pass barriers, and read and write words of shared pages, over a
// network that loses, duplicates, delays and reorders messages.
//
// Words of a page have roles: the last word of every page is racy (when
// Racy is set: written by any node without synchronisation), the one before
// it is a phase word (written by one node, its owner, in even barrier
// phases and read by every node in odd ones), the one before that a mailbox
// (written once a phase by its owner, which then releases without a lock
// and signals; the others wait for the signal, acquire with AcquireAll and
// read it: the pattern of Region.Release and Region.Acquire with a flag in
// sequentially consistent memory) and the others are guarded by a lock each
// (word index modulo Locks), so every page holds data of several locks and
// several writers: false sharing, which release consistency is for.
type SimConfig struct {
	Seed     uint64
	Nodes    int
	Pages    int
	PageSize int // a multiple of 8, at least 24
	Locks    int
	Phases   int // barrier phases
	Blocks   int // lock blocks per node per phase
	Racy     bool
	Loss     float64 // probability a message is lost
	Dup      float64 // probability a message is duplicated
	MaxDelay int     // steps a message may wait before it can be delivered
	// MaxNotices is the engines' Config.MaxNotices (0: the default).
	MaxNotices int
	// InPlace: the even pages are written in place by their home
	// (Config.InPlace) until another node asks for them.
	InPlace bool
	// Trace, when set, gets a line per event.
	Trace io.Writer

	bugs bugs
}

// SimConfigFor derives a schedule's shape from its seed.
func SimConfigFor(seed uint64) SimConfig {
	rng := rand.New(rand.NewPCG(seed, 0x7263))
	c := SimConfig{
		Seed:     seed,
		Nodes:    2 + rng.IntN(3),
		Pages:    1 + rng.IntN(3),
		PageSize: 8 * (3 + rng.IntN(6)),
		Locks:    1 + rng.IntN(3),
		Phases:   1 + rng.IntN(3),
		Blocks:   1 + rng.IntN(4),
		Racy:     rng.IntN(3) == 0,
		MaxDelay: rng.IntN(6),
	}
	if rng.IntN(2) == 0 {
		c.Loss = 0.15 * rng.Float64()
	}
	if rng.IntN(2) == 0 {
		c.Dup = 0.15 * rng.Float64()
	}
	if rng.IntN(3) == 0 {
		c.MaxNotices = 1 + rng.IntN(3) // nodes forget their old notices
	}
	c.InPlace = rng.IntN(2) == 0
	return c
}

// SimResult counts what a schedule did.
type SimResult struct {
	Steps, Reads, Writes, Checked, Sent, Lost, Duplicated int
	Releases, Acquires, Races, RacyWords                  int
	// InPlaceWrites counts the writes a home made in place to a page no
	// other node had asked for.
	InPlaceWrites int
	Stats         []Stats
}

// Add adds o's counts to r's (not its Stats), to sum many schedules.
func (r *SimResult) Add(o SimResult) {
	r.Steps += o.Steps
	r.Reads += o.Reads
	r.Writes += o.Writes
	r.Checked += o.Checked
	r.Sent += o.Sent
	r.Lost += o.Lost
	r.Duplicated += o.Duplicated
	r.Releases += o.Releases
	r.Acquires += o.Acquires
	r.Races += o.Races
	r.RacyWords += o.RacyWords
	r.InPlaceWrites += o.InPlaceWrites
}

// Violation is an invariant a schedule broke.
type Violation struct {
	Seed uint64
	Step int
	What string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("rc simulator, seed %d, step %d: %s", v.Seed, v.Step, v.What)
}

type simOpKind uint8

const (
	simLock simOpKind = iota
	simUnlock
	simRead
	simWrite
	simBarrier
	simSignal // release, then tell the waiters
	simWait   // wait for node lock's signal number word, then AcquireAll
)

type simOp struct {
	kind simOpKind
	lock int // simLock, simUnlock; simWait: the node waited for
	word int // simRead, simWrite; simWait: the signal count waited for
}

type simNode struct {
	id       int
	eng      *Engine
	ops      []simOp
	pc       int
	mem      map[PageID][]byte
	dirty    map[PageID]bool
	faulting bool
	fault    PageID
	blocked  bool // a lock, a release, an acquire or a barrier
	clock    clocks.Vector
}

type simLockState struct {
	holder  int
	queue   []int
	payload Payload
	clock   clocks.Vector
}

type inflight struct {
	m  Message
	at int
}

type racyWrite struct {
	node  int
	clock clocks.Vector
	// inPlace: the home wrote its page in place while no other node had
	// a copy; no diff records it, so races with it go unreported (see
	// the package doc).
	inPlace bool
}

type sim struct {
	cfg     SimConfig
	rng     *rand.Rand
	nodes   []*simNode
	locks   []*simLockState
	net     []inflight
	step    int
	shadow  []uint64
	racy    [][]racyWrite // per word, when racy
	nextVal uint64
	nextOp  uint64
	done    map[uint64]func(Done)
	races   []Race
	barrier struct {
		arrived  int
		payloads []Payload
		clock    clocks.Vector
	}
	signals      []int           // per node, signals sent
	signalClocks []clocks.Vector // per node, its clock at its last signal
	// lastRelease is each node's clock at its last finished release, and
	// answered, per node, what the nodes that answered its AcquireAll had
	// released by then: AcquireAll orders the acquirer after those.
	lastRelease []clocks.Vector
	answered    []clocks.Vector
	res         SimResult
	err         *Violation
}

const (
	roleLock = iota
	rolePhase
	roleRacy
	roleMailbox
)

func (s *sim) role(w int) int {
	per := s.cfg.PageSize / 8
	switch {
	case w%per == per-1 && s.cfg.Racy:
		return roleRacy
	case w%per == per-2:
		return rolePhase
	case w%per == per-3 && per >= 4:
		return roleMailbox
	}
	return roleLock
}

func (s *sim) pageOf(w int) (PageID, int) {
	per := s.cfg.PageSize / 8
	return PageID(w / per), (w % per) * 8
}

func (s *sim) words() int { return s.cfg.Pages * s.cfg.PageSize / 8 }

func (s *sim) phaseOwner(w int) int { return (w / (s.cfg.PageSize / 8)) % s.cfg.Nodes }

func (s *sim) mailboxOwner(w int) int { return (w/(s.cfg.PageSize/8) + 1) % s.cfg.Nodes }

func (s *sim) lockOf(w int) int { return w % s.cfg.Locks }

// Simulate runs one schedule and checks the protocol's invariants.
func Simulate(cfg SimConfig) (SimResult, error) {
	if cfg.Nodes < 1 || cfg.Pages < 1 || cfg.PageSize < 24 || cfg.PageSize%8 != 0 || cfg.Locks < 1 || cfg.Phases < 1 {
		return SimResult{}, fmt.Errorf("rc: bad simulator config %+v", cfg)
	}
	s := &sim{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x5e1)), done: map[uint64]func(Done){}}
	s.shadow = make([]uint64, s.words())
	s.racy = make([][]racyWrite, s.words())
	home := func(p PageID) NodeID { return NodeID(int(p) % cfg.Nodes) }
	var inPlace func(PageID) bool
	if cfg.InPlace {
		inPlace = func(p PageID) bool { return p%2 == 0 }
	}
	for i := 0; i < cfg.Nodes; i++ {
		eng, err := New(Config{ID: NodeID(i), Nodes: cfg.Nodes, PageSize: cfg.PageSize, Home: home, InPlace: inPlace, Retry: 2 + cfg.MaxDelay, MaxNotices: cfg.MaxNotices, bugs: cfg.bugs})
		if err != nil {
			return s.res, err
		}
		n := &simNode{id: i, eng: eng, mem: map[PageID][]byte{}, dirty: map[PageID]bool{}, clock: clocks.NewVector(cfg.Nodes)}
		n.ops = s.program(i)
		s.nodes = append(s.nodes, n)
	}
	for range cfg.Locks {
		s.locks = append(s.locks, &simLockState{holder: -1, clock: clocks.NewVector(cfg.Nodes)})
	}
	s.signals = make([]int, cfg.Nodes)
	s.signalClocks = make([]clocks.Vector, cfg.Nodes)
	s.lastRelease = make([]clocks.Vector, cfg.Nodes)
	s.answered = make([]clocks.Vector, cfg.Nodes)
	s.run()
	for _, n := range s.nodes {
		s.res.Stats = append(s.res.Stats, n.eng.Stats())
	}
	if s.err != nil {
		return s.res, s.err
	}
	return s.res, nil
}

// program is what node id does: per phase, lock blocks with reads and
// writes of the lock's words, writes (even phases) or reads (odd phases)
// of phase words, racy writes, a barrier; at the end, reads of every word.
func (s *sim) program(id int) []simOp {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, uint64(id)+1))
	byLock := make([][]int, s.cfg.Locks)
	var phase, racy, mailbox []int
	for w := 0; w < s.words(); w++ {
		switch s.role(w) {
		case roleMailbox:
			mailbox = append(mailbox, w)
		case roleLock:
			byLock[s.lockOf(w)] = append(byLock[s.lockOf(w)], w)
		case rolePhase:
			phase = append(phase, w)
		case roleRacy:
			racy = append(racy, w)
		}
	}
	var ops []simOp
	for ph := 0; ph < s.cfg.Phases; ph++ {
		var body [][]simOp
		for range s.cfg.Blocks {
			l := rng.IntN(s.cfg.Locks)
			if len(byLock[l]) == 0 {
				continue
			}
			blk := []simOp{{kind: simLock, lock: l}}
			for range 1 + rng.IntN(4) {
				k := simRead
				if rng.IntN(2) == 0 {
					k = simWrite
				}
				blk = append(blk, simOp{kind: k, word: byLock[l][rng.IntN(len(byLock[l]))]})
			}
			body = append(body, append(blk, simOp{kind: simUnlock, lock: l}))
		}
		for _, w := range phase {
			switch {
			case ph%2 == 0 && s.phaseOwner(w) == id && rng.IntN(3) > 0:
				body = append(body, []simOp{{kind: simWrite, word: w}})
			case ph%2 == 1 && rng.IntN(2) == 0:
				body = append(body, []simOp{{kind: simRead, word: w}})
			}
		}
		if len(racy) > 0 {
			for range rng.IntN(3) {
				body = append(body, []simOp{{kind: simWrite, word: racy[rng.IntN(len(racy))]}})
			}
		}
		rng.Shuffle(len(body), func(i, j int) { body[i], body[j] = body[j], body[i] })
		// Mailboxes: this node's first (write, release, signal), the
		// others' last (wait, acquire, read), so that no node waits for a
		// signal sent after its own wait.
		var mine, theirs []simOp
		waited := map[int]bool{}
		for _, w := range mailbox {
			o := s.mailboxOwner(w)
			if o == id {
				mine = append(mine, simOp{kind: simWrite, word: w})
			} else if rng.IntN(2) == 0 {
				if !waited[o] {
					waited[o] = true
					theirs = append(theirs, simOp{kind: simWait, lock: o, word: ph + 1})
				}
				theirs = append(theirs, simOp{kind: simRead, word: w})
			}
		}
		if len(mailbox) > 0 {
			// Every owner signals once a phase, written or not, so the
			// waiters' counts line up with phases.
			mine = append(mine, simOp{kind: simSignal})
		}
		ops = append(ops, mine...)
		for _, b := range body {
			ops = append(ops, b...)
		}
		ops = append(ops, theirs...)
		ops = append(ops, simOp{kind: simBarrier})
	}
	for w := 0; w < s.words(); w++ {
		if s.role(w) != roleRacy {
			ops = append(ops, simOp{kind: simRead, word: w})
		}
	}
	return ops
}

func (s *sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = &Violation{Seed: s.cfg.Seed, Step: s.step, What: fmt.Sprintf(format, args...)}
	}
}

func (s *sim) trace(format string, args ...any) {
	if s.cfg.Trace != nil {
		fmt.Fprintf(s.cfg.Trace, "%6d "+format+"\n", append([]any{s.step}, args...)...)
	}
}

const simMaxSteps = 400_000

func (s *sim) run() {
	for s.err == nil {
		s.step++
		if s.step > simMaxSteps {
			s.fail("stuck: %s", s.state())
			return
		}
		var deliverable []int
		for i, f := range s.net {
			if f.at <= s.step {
				deliverable = append(deliverable, i)
			}
		}
		var runnable []*simNode
		finished := true
		for _, n := range s.nodes {
			if n.pc < len(n.ops) {
				finished = false
				if !n.blocked && !n.faulting {
					runnable = append(runnable, n)
				}
			}
		}
		if finished && len(s.net) == 0 && s.idle() {
			break
		}
		x := s.rng.Float64()
		switch {
		case len(deliverable) > 0 && (x < 0.5 || len(runnable) == 0 && x < 0.85):
			i := deliverable[s.rng.IntN(len(deliverable))]
			f := s.net[i]
			s.net = append(s.net[:i], s.net[i+1:]...)
			n := s.nodes[f.m.To]
			s.trace("deliver %v %d->%d page %d seq %d", f.m.Kind, f.m.From, f.m.To, f.m.Page, f.m.Seq)
			if f.m.Kind == MsgNoticeReq && f.m.Upto == 0 {
				s.answered[f.m.From] = clocks.Merge(s.answered[f.m.From], s.lastRelease[f.m.To])
			}
			s.engine(n, n.eng.Step(&f.m))
		case len(runnable) > 0 && x < 0.88:
			s.advance(runnable[s.rng.IntN(len(runnable))])
		case x < 0.9:
			// Another thread of the program (or the daemon's
			// read-ahead) touches a page the node has no copy of, at any
			// time, even while the node releases or acquires.
			n := s.nodes[s.rng.IntN(len(s.nodes))]
			p := PageID(s.rng.IntN(s.cfg.Pages))
			if n.mem[p] == nil {
				s.trace("node %d prefetches page %d", n.id, p)
				s.engine(n, n.eng.Fault(p))
			}
		default:
			n := s.nodes[s.rng.IntN(len(s.nodes))]
			n.eng.Tick()
			s.engine(n, nil)
		}
	}
	if s.err == nil {
		s.finalChecks()
	}
}

func (s *sim) idle() bool {
	for _, n := range s.nodes {
		if !n.eng.Idle() {
			return false
		}
	}
	return true
}

func (s *sim) state() string {
	out := ""
	for _, n := range s.nodes {
		op := "done"
		if n.pc < len(n.ops) {
			op = fmt.Sprintf("op %d/%d %+v", n.pc, len(n.ops), n.ops[n.pc])
		}
		out += fmt.Sprintf("[node %d: %s, blocked %v, faulting %v page %d, engine idle %v busy %v] ", n.id, op, n.blocked, n.faulting, n.fault, n.eng.Idle(), n.eng.Busy())
	}
	return out + fmt.Sprintf("%d messages in flight", len(s.net))
}

// engine takes the error of a call to n's engine and what it has ready.
func (s *sim) engine(n *simNode, err error) {
	if err != nil {
		s.fail("node %d: %v", n.id, err)
		return
	}
	rd := n.eng.Ready()
	for _, m := range rd.Messages {
		s.res.Sent++
		if s.rng.Float64() < s.cfg.Loss {
			s.res.Lost++
			continue
		}
		s.net = append(s.net, inflight{m, s.step + s.rng.IntN(s.cfg.MaxDelay+1)})
		if s.rng.Float64() < s.cfg.Dup {
			s.res.Duplicated++
			s.net = append(s.net, inflight{m, s.step + s.rng.IntN(s.cfg.MaxDelay+1)})
		}
	}
	for _, in := range rd.Installs {
		if n.dirty[in.Page] {
			s.fail("node %d: page %d installed over the program's unreleased writes", n.id, in.Page)
		}
		if in.Own && in.Data == nil {
			in.Data = make([]byte, s.cfg.PageSize)
		}
		// Copied, as a daemon copies it into the program's memory: the
		// engine's twin may be Data itself.
		n.mem[in.Page] = slices.Clone(in.Data)
		if n.faulting && n.fault == in.Page {
			n.faulting = false
		}
		s.trace("node %d installs page %d", n.id, in.Page)
	}
	for _, p := range rd.Invalidates {
		if n.dirty[p] {
			s.fail("node %d: page %d invalidated with the program's unreleased writes", n.id, p)
		}
		delete(n.mem, p)
		s.trace("node %d invalidates page %d", n.id, p)
	}
	s.races = append(s.races, rd.Races...)
	for _, p := range rd.Shares {
		// The daemon write-protects the page, so that writes from now
		// on are tracked (here every write marks the page dirty, and
		// the engine diffs against the twin it takes now), then reads it.
		s.trace("node %d shares page %d", n.id, p)
		var data []byte
		if n.mem[p] != nil {
			data = slices.Clone(n.mem[p])
		}
		s.engine(n, n.eng.Shared(p, data))
	}
	for _, d := range rd.Done {
		f := s.done[d.Op]
		if f == nil {
			s.fail("node %d: done for unknown op %d", n.id, d.Op)
			continue
		}
		delete(s.done, d.Op)
		f(d)
	}
}

func (s *sim) dirtyData(n *simNode) []PageData {
	var out []PageData
	for p := range n.dirty {
		out = append(out, PageData{Page: p, Data: slices.Clone(n.mem[p])})
	}
	slices.SortFunc(out, func(a, b PageData) int { return int(a.Page) - int(b.Page) })
	clear(n.dirty)
	return out
}

// acquire starts n's engine on an acquire of payload pl and unblocks n
// when it ends.
func (s *sim) acquire(n *simNode, pl Payload, clock clocks.Vector) {
	s.nextOp++
	id := s.nextOp
	n.blocked = true
	s.res.Acquires++
	s.answered[n.id] = nil
	s.done[id] = func(Done) {
		n.clock = clocks.Merge(n.clock, clock)
		if pl.Clock == nil {
			n.clock = clocks.Merge(n.clock, s.answered[n.id])
		}
		n.blocked = false
	}
	if pl.Clock == nil {
		s.engine(n, n.eng.AcquireAll(id, s.dirtyData(n)))
		return
	}
	s.engine(n, n.eng.Acquire(id, s.dirtyData(n), pl))
}

// release starts n's engine on a release; then is called with its payload.
func (s *sim) release(n *simNode, then func(Payload)) {
	s.nextOp++
	id := s.nextOp
	n.blocked = true
	s.res.Releases++
	n.clock[n.id]++
	s.done[id] = func(d Done) {
		if d.Payload == nil {
			s.fail("node %d: release without payload", n.id)
			return
		}
		s.lastRelease[n.id] = n.clock.Clone()
		then(*d.Payload)
	}
	s.engine(n, n.eng.Release(id, s.dirtyData(n)))
}

func (s *sim) advance(n *simNode) {
	op := n.ops[n.pc]
	switch op.kind {
	case simRead, simWrite:
		p, off := s.pageOf(op.word)
		data := n.mem[p]
		if data == nil {
			n.faulting, n.fault = true, p
			s.trace("node %d faults on page %d", n.id, p)
			s.engine(n, n.eng.Fault(p))
			return
		}
		n.pc++
		if op.kind == simRead {
			s.res.Reads++
			got := binary.LittleEndian.Uint64(data[off:])
			if s.role(op.word) != roleRacy {
				s.res.Checked++
				if want := s.shadow[op.word]; got != want {
					s.fail("node %d read word %d (page %d +%d) = %d, but the last write that happens before the read wrote %d", n.id, op.word, p, off, got, want)
				}
			}
			return
		}
		s.res.Writes++
		s.nextVal++
		v := mix(s.nextVal) // unique (mix is a bijection), and every byte is likely to change
		binary.LittleEndian.PutUint64(data[off:], v)
		n.dirty[p] = true
		if n.eng.Private(p) {
			s.res.InPlaceWrites++
		}
		s.shadow[op.word] = v
		if s.role(op.word) == roleRacy {
			s.racy[op.word] = append(s.racy[op.word], racyWrite{n.id, n.clock.Clone(), n.eng.Private(p)})
		}
		s.trace("node %d writes word %d = %d", n.id, op.word, v)
	case simLock:
		n.pc++
		l := s.locks[op.lock]
		if l.holder >= 0 {
			l.queue = append(l.queue, n.id)
			n.blocked = true
			return
		}
		s.grant(op.lock, n)
	case simUnlock:
		n.pc++
		s.release(n, func(pl Payload) {
			l := s.locks[op.lock]
			l.payload, l.clock = pl, n.clock.Clone()
			l.holder = -1
			n.blocked = false
			if len(l.queue) > 0 {
				next := s.nodes[l.queue[0]]
				l.queue = l.queue[1:]
				s.grant(op.lock, next)
			}
		})
	case simSignal:
		n.pc++
		s.release(n, func(Payload) {
			s.signals[n.id]++
			s.signalClocks[n.id] = n.clock.Clone()
			n.blocked = false
		})
	case simWait:
		if s.signals[op.lock] < op.word {
			return // not yet: the node spins
		}
		n.pc++
		s.acquire(n, Payload{}, s.signalClocks[op.lock])
	case simBarrier:
		n.pc++
		s.release(n, func(pl Payload) {
			b := &s.barrier
			b.arrived++
			b.payloads = append(b.payloads, pl)
			b.clock = clocks.Merge(b.clock, n.clock)
			if b.arrived < len(s.nodes) {
				return
			}
			merged, clock := Merge(b.payloads...), b.clock
			b.arrived, b.payloads, b.clock = 0, nil, nil
			for _, m := range s.nodes {
				s.acquire(m, merged, clock)
			}
		})
	}
}

func (s *sim) grant(lock int, n *simNode) {
	l := s.locks[lock]
	l.holder = n.id
	s.trace("node %d takes lock %d", n.id, lock)
	s.acquire(n, l.payload, l.clock)
}

// finalChecks: the homes lost no byte; every racing word was reported and
// no other.
func (s *sim) finalChecks() {
	// Every copy a node still has agrees with the homes, racy bytes too:
	// the nodes converge on the outcome the homes kept.
	for _, n := range s.nodes {
		for p, data := range n.mem {
			if want := s.master(p); !slices.Equal(data, want) {
				s.fail("after the last barrier node %d's copy of page %d differs from its home's: %x, home %x", n.id, p, data, want)
				return
			}
		}
	}
	for w := 0; w < s.words(); w++ {
		p, off := s.pageOf(w)
		got := binary.LittleEndian.Uint64(s.master(p)[off:])
		reported := s.reportedOn(p, off)
		if s.role(w) != roleRacy {
			if got != s.shadow[w] {
				s.fail("the home of page %d holds %d in word %d, but the last write was %d: a diff was lost", p, got, w, s.shadow[w])
			}
			if reported {
				s.fail("a race reported on word %d (page %d +%d), which the programs only access without races", w, p, off)
			}
			continue
		}
		racing := false
		ws := s.racy[w]
		for i := range ws {
			for j := i + 1; j < len(ws); j++ {
				if ws[i].node != ws[j].node && ws[i].clock.Compare(ws[j].clock) == clocks.Concurrent && !ws[i].inPlace && !ws[j].inPlace {
					racing = true
				}
			}
		}
		if racing {
			s.res.RacyWords++
			if !reported {
				s.fail("word %d (page %d +%d) was written by concurrent writes %v, and no race was reported", w, p, off, ws)
			}
		}
	}
	s.res.Races = len(s.races)
	s.res.Steps = s.step
}

// master returns the master copy of page p: the home's program memory
// while the page is written in place and private.
func (s *sim) master(p PageID) []byte {
	home := s.nodes[int(p)%len(s.nodes)]
	if home.eng.Private(p) {
		if m := home.mem[p]; m != nil {
			return m
		}
		return make([]byte, s.cfg.PageSize)
	}
	return home.eng.Master(p)
}

func (s *sim) reportedOn(p PageID, off int) bool {
	for _, r := range s.races {
		if r.Page == p && int(r.Off) < off+8 && int(r.Off+r.Len) > off {
			return true
		}
	}
	return false
}

// mix is splitmix64's finaliser: a bijection that spreads a counter over
// all 64 bits.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}
