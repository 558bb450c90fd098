package coherence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
)

// A real daemon under simulation (SimConfig.Daemon). The simulator plays
// the daemon's world: the node's copy of the region (SimStore, a memfd in
// the daemon), the attached programs (SimProgram, their userfaultfds) with
// their threads, the network and the clock (one step is a microsecond).
// Before each operation the daemon makes on that world, the node's threads
// may take a step, as real threads run while the daemon works; after it,
// the cluster's invariants are checked, as after every step.

// SimDaemon is a daemon the simulator drives.
type SimDaemon interface {
	// Faults serves a batch of faults of one program, as the daemon's
	// loop reads them from its userfaultfd.
	Faults(fs []SimFault)
	// Step serves a message from another node.
	Step(m *Message) error
	// Tick is the daemon's periodic tick.
	Tick(now time.Time)
	// ServeHolds ends the minimum holds that are over and returns when it
	// must be called again (zero: no hold kept). The simulator calls it
	// after every input, as the daemon's loop does after every batch.
	ServeHolds(now time.Time) time.Time
	// NextHold returns what ServeHolds last returned, or zero.
	NextHold() time.Time
}

// SimPrefetcher is a SimDaemon that also takes prefetch hints: a program
// asking for a page ahead of its access, with no thread waiting on it
// (dsm's Region.Prefetch). The simulator gives one, at random, after some
// fault batches and some ticks; the invariants hold whatever the daemon
// makes of it.
type SimPrefetcher interface {
	Prefetch(p PageID, write bool)
}

// SimFault is a fault of a simulated program: Prog is an index into
// SimWorld.Programs; WP marks a write to a page present but write
// protected; At is when the daemon read it.
type SimFault struct {
	Prog      int
	Page      PageID
	Write, WP bool
	At        time.Time
}

// SimWorld is what the simulator gives a daemon.
type SimWorld struct {
	Node     NodeID
	Nodes    int
	Engine   *Engine
	Pages    int
	PageSize int
	Store    *SimStore
	Programs []*SimProgram
	Send     func(*Message) // sends a filled message to m.To
	Now      func() time.Time
	// Fail is how the daemon says it cannot go on (a node daemon stops):
	// in a simulation, a violation.
	Fail func(error)
	// MinHold is the minimum hold the simulator holds the daemon to: a
	// page made accessible must not be write-protected or dropped sooner,
	// unless it was written.
	MinHold time.Duration
}

// ErrSimPresent is what SimProgram.Copy returns for a page present
// already (the simulator also reports it as a violation).
var ErrSimPresent = errors.New("coherence: simulated page present already")

// SimStore is a simulated node's copy of the region: present pages and
// holes.
type SimStore struct {
	s *sim
	n *simNode
}

// SimProgram is a program attached to a simulated node: its write
// protection of each page, and its threads.
type SimProgram struct {
	s  *sim
	n  *simNode
	id int
	wp []bool
}

func (s *sim) now() time.Time {
	return time.Unix(1_000_000_000, 0).Add(time.Duration(s.step) * time.Microsecond)
}

func (s *sim) pageSize() int {
	if s.cfg.PageSize == 0 {
		return 64
	}
	return s.cfg.PageSize
}

func (s *sim) startDaemon(n *simNode) error {
	progs := max(s.cfg.Programs, 1)
	for i := range progs {
		// A program attaches with the whole region write-protected.
		pr := &SimProgram{s: s, n: n, id: i, wp: make([]bool, s.cfg.Pages)}
		for p := range pr.wp {
			pr.wp[p] = true
		}
		n.progs = append(n.progs, pr)
	}
	for t := range n.threads {
		n.threads[t].prog = t % progs
	}
	w := SimWorld{
		Node: n.id, Nodes: s.cfg.Nodes, Engine: n.eng, Pages: s.cfg.Pages, PageSize: s.pageSize(),
		Store: &SimStore{s: s, n: n}, Programs: n.progs, Now: s.now,
		Send: func(m *Message) { s.daemonSend(n, m) },
		Fail: func(err error) {
			s.fail(s.violation(ViolDaemonContract, "node %d's daemon stops: %v", n.id, err))
		},
		MinHold: s.minHold(),
	}
	d, err := s.cfg.Daemon(w)
	if err != nil {
		return fmt.Errorf("node %d's daemon: %w", n.id, err)
	}
	n.d = d
	return nil
}

// minHold is the minimum hold a Daemon is held to: HoldSteps steps.
func (s *sim) minHold() time.Duration {
	if !s.cfg.Hold {
		return 0
	}
	return time.Duration(s.cfg.HoldSteps) * time.Microsecond
}

// daemonInput gives the daemon its next event, then lets it serve its
// holds, as the daemon's loop does after every batch.
func (s *sim) daemonInput(n *simNode, ev simEvent) error {
	if ev.msg == nil {
		// The daemon reads a program's faults in batches: this one and
		// up to two more of the same program that wait behind it.
		batch := []SimFault{{Prog: ev.prog, Page: ev.page, Write: ev.access == Write, WP: ev.wp, At: s.now()}}
		for more := s.rng.IntN(3); more > 0 && len(n.inbox) > 0; more-- {
			x := n.inbox[0]
			if x.msg != nil || x.endHold || x.prog != ev.prog {
				break
			}
			n.inbox = n.inbox[1:]
			batch = append(batch, SimFault{Prog: x.prog, Page: x.page, Write: x.access == Write, WP: x.wp, At: s.now()})
		}
		for _, f := range batch {
			s.tracef("node %d: fault of program %d on p%d (write %v, wp %v), in a batch of %d", n.id, f.Prog, f.Page, f.Write, f.WP, len(batch))
		}
		n.d.Faults(batch)
		if s.err == nil && s.chaos && s.rng.IntN(16) == 0 {
			s.prefetch(n)
		}
	} else {
		// As in the engine's simulator: the page aliases a buffer,
		// reused once the daemon has stepped the message, and the
		// message is the node's decoder's.
		buf := slices.Clone(ev.msg)
		m, err := n.dec.Decode(buf)
		if err != nil {
			return s.violation(ViolEngineError, "node %d: cannot decode a message: %v", n.id, err)
		}
		s.tracef("node %d: Step(%v)", n.id, m)
		err = n.d.Step(m)
		scribble(buf)
		if err != nil {
			return s.violation(ViolEngineError, "node %d: Step(%v): %v", n.id, m, err)
		}
	}
	if s.err != nil {
		return s.err
	}
	return s.daemonHolds(n)
}

// prefetch gives node n's daemon a prefetch hint for a random page, when
// it takes them.
func (s *sim) prefetch(n *simNode) {
	pf, ok := n.d.(SimPrefetcher)
	if !ok {
		return
	}
	p, write := PageID(s.rng.IntN(s.cfg.Pages)), s.rng.IntN(2) == 0
	s.tracef("node %d: prefetch of p%d (write %v)", n.id, p, write)
	s.res.Prefetches++
	pf.Prefetch(p, write)
}

func (s *sim) daemonHolds(n *simNode) error {
	if s.err != nil {
		return s.err
	}
	n.d.ServeHolds(s.now())
	return s.err
}

// daemonSend puts a message the daemon sent on the network.
func (s *sim) daemonSend(n *simNode, m *Message) {
	if s.err != nil {
		return
	}
	if m.To == n.id || int(m.To) >= len(s.nodes) || m.NeedData {
		s.err = s.violation(ViolDaemonContract, "node %d sends %v (NeedData %v)", n.id, m, m.NeedData)
		return
	}
	s.tracef("node %d: send %v", n.id, m)
	s.transmit(m.To, m.AppendBinary(nil))
}

// transmit puts b on the network for node to, losing or duplicating it in
// the chaotic phase.
func (s *sim) transmit(to NodeID, b []byte) {
	s.res.Sent++
	loss, dup := s.cfg.Loss, s.cfg.Dup
	if !s.chaos {
		loss, dup = 0, 0
	}
	if s.rng.Float64() < loss {
		s.res.Lost++
		s.tracef("lost")
		return
	}
	s.net = append(s.net, packet{at: s.step + s.rng.IntN(s.cfg.MaxDelay+1), to: to, b: b})
	if s.rng.Float64() < dup {
		s.res.Duplicated++
		s.net = append(s.net, packet{at: s.step + s.rng.IntN(s.cfg.MaxDelay+1), to: to, b: b})
	}
}

// concurrently lets the node's threads take a step or two, as real threads
// do while the daemon works, before the daemon's next operation.
func (s *sim) concurrently(n *simNode) {
	for range s.rng.IntN(3) {
		var ready []int
		for t := range n.threads {
			if th := &n.threads[t]; !th.blocked && (th.busy || th.left > 0) {
				ready = append(ready, t)
			}
		}
		if len(ready) == 0 {
			return
		}
		if err := s.access(n, &n.threads[ready[s.rng.IntN(len(ready))]]); err != nil {
			s.fail(err)
			return
		}
		s.fail(s.check(nil))
	}
}

// fail records the first violation found during a daemon's call.
func (s *sim) fail(err error) {
	if err != nil && s.err == nil {
		s.err = err
	}
}

// writableHere reports whether some program may write page p (present and
// not write-protected there).
func (n *simNode) writableHere(p PageID) bool {
	if n.pages[p].data == nil {
		return false
	}
	for _, pr := range n.progs {
		if !pr.wp[p] {
			return true
		}
	}
	return false
}

// settle brings page p's summary (pages[p].writable) up to date after an
// operation, records when it was made accessible, and checks the cluster.
func (s *sim) settle(n *simNode, p PageID, wasPresent, wasWritable bool) {
	pg := &n.pages[p]
	pg.writable = n.writableHere(p)
	if pg.data != nil && (!wasPresent || pg.writable && !wasWritable) {
		pg.madeAt, pg.madeData = s.now(), slices.Clone(pg.data)
	}
	s.fail(s.check(nil))
}

// takeAway checks the minimum hold before page p is write-protected or
// dropped: not within MinHold of being made accessible, unless written.
func (s *sim) takeAway(n *simNode, p PageID, what string) {
	pg := &n.pages[p]
	if pg.data == nil || pg.madeData == nil {
		return
	}
	if since := s.now().Sub(pg.madeAt); since < s.minHold() && slices.Equal(pg.data, pg.madeData) {
		s.fail(s.violation(ViolHold, "node %d %s page %d %v after it was made accessible, unwritten (minimum hold %v)",
			n.id, what, p, since, s.minHold()))
	}
}

func (s *sim) checkPage(n *simNode, p PageID, buf []byte) error {
	if int(p) >= len(n.pages) {
		return s.violation(ViolDaemonContract, "node %d: page %d is outside the region", n.id, p)
	}
	if buf != nil && len(buf) != s.pageSize() {
		return s.violation(ViolDaemonContract, "node %d: page %d with %d bytes, pages are %d", n.id, p, len(buf), s.pageSize())
	}
	return nil
}

// ReadPage implements the daemon's Store: a hole reads as zeros.
func (st *SimStore) ReadPage(p PageID, buf []byte) error {
	s, n := st.s, st.n
	if err := s.checkPage(n, p, buf); err != nil {
		s.fail(err)
		return err
	}
	s.concurrently(n)
	if d := n.pages[p].data; d != nil {
		copy(buf, d)
	} else {
		clear(buf)
	}
	return nil
}

// WritePage implements the daemon's Store.
func (st *SimStore) WritePage(p PageID, data []byte) error {
	s, n := st.s, st.n
	if err := s.checkPage(n, p, data); err != nil {
		s.fail(err)
		return err
	}
	s.concurrently(n)
	pg := &n.pages[p]
	was, wasW := pg.data != nil, pg.writable
	s.tracef("node %d: write p%d = %d", n.id, p, binary.LittleEndian.Uint64(data))
	pg.data = slices.Clone(data)
	s.settle(n, p, was, wasW)
	return nil
}

// Punch implements the daemon's Store.
func (st *SimStore) Punch(p PageID) error {
	s, n := st.s, st.n
	if err := s.checkPage(n, p, nil); err != nil {
		s.fail(err)
		return err
	}
	s.concurrently(n)
	s.takeAway(n, p, "drops")
	s.tracef("node %d: punch p%d", n.id, p)
	pg := &n.pages[p]
	pg.data, pg.madeData = nil, nil
	s.settle(n, p, false, false)
	return nil
}

// Copy implements the daemon's Program: the page becomes present, mapped
// in this program, and its threads waiting on it wake.
func (pr *SimProgram) Copy(p PageID, data []byte, readOnly bool) error {
	s, n := pr.s, pr.n
	if err := s.checkPage(n, p, data); err != nil {
		s.fail(err)
		return err
	}
	s.concurrently(n)
	pg := &n.pages[p]
	if pg.data != nil {
		s.fail(s.violation(ViolDaemonContract, "node %d copies page %d into program %d, which is present", n.id, p, pr.id))
		return ErrSimPresent
	}
	s.tracef("node %d: copy p%d = %d into program %d (read-only %v)", n.id, p, binary.LittleEndian.Uint64(data), pr.id, readOnly)
	pg.data = slices.Clone(data)
	pr.wp[p] = readOnly
	pr.wake(p)
	s.settle(n, p, false, false)
	return nil
}

// Protect implements the daemon's Program.
func (pr *SimProgram) Protect(p PageID, count int, protect, wake bool) error {
	s, n := pr.s, pr.n
	if count < 1 || int(p)+count > len(n.pages) {
		err := s.violation(ViolDaemonContract, "node %d protects pages %d+%d", n.id, p, count)
		s.fail(err)
		return err
	}
	s.concurrently(n)
	for q := p; q < p+PageID(count); q++ {
		pg := &n.pages[q]
		was, wasW := pg.data != nil, pg.writable
		if protect && !pr.wp[q] && pg.writable {
			// The last program that may write it is being closed.
			last := true
			for _, o := range n.progs {
				if o != pr && !o.wp[q] {
					last = false
				}
			}
			if last {
				s.takeAway(n, q, "write-protects")
			}
		}
		s.tracef("node %d: program %d protect p%d %v (wake %v)", n.id, pr.id, q, protect, wake)
		pr.wp[q] = protect
		if wake {
			pr.wake(q)
		}
		s.settle(n, q, was, wasW)
	}
	return nil
}

// Wake implements the daemon's Program.
func (pr *SimProgram) Wake(p PageID) error {
	s, n := pr.s, pr.n
	if err := s.checkPage(n, p, nil); err != nil {
		s.fail(err)
		return err
	}
	s.concurrently(n)
	s.tracef("node %d: wake program %d on p%d", n.id, pr.id, p)
	pr.wake(p)
	return nil
}

func (pr *SimProgram) wake(p PageID) {
	for t := range pr.n.threads {
		if th := &pr.n.threads[t]; th.prog == pr.id && th.blocked && th.page == p {
			th.blocked = false
		}
	}
}
