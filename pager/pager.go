// Package pager is the page logic of a node daemon: what the daemon does
// with the outputs of the coherence engine and with the faults of the
// programs attached to it. It keeps each page's physical state, the faults
// waiting on each page, the twins (a page's content when it became writable
// here), the minimum holds, read-ahead and the fault timelines, and it fills
// the messages that carry pages.
//
// It is a package of its own, apart from package node, so that one core is
// driven both by the daemon's event loop and by the coherence simulator:
// the pager does no I/O itself and reads no clock. It works on the world
// through three small interfaces (Store, the node's copy of the region;
// Program, an attached program's userfaultfd; Sender, the transport), and
// takes the time as an input. The node daemon implements them with a memfd,
// userfaultfd and KCP; the tests of this package implement them with the
// simulated memory and network of coherence.Simulate, which then checks the
// protocol's invariants after every step of thousands of seeded schedules
// with this very code in the daemon's place.
//
// A Pager is not safe for concurrent use: the daemon calls it under its
// lock, from its event loop or from a control connection.
package pager

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/coherence"
	dsmnet "github.com/dsmrt/dsm/net"
)

// Store is the node's copy of the region (the daemon's memfd). Every
// attached program maps it; a page absent from it (a hole) faults as
// missing in every program.
type Store interface {
	// ReadPage reads page p into buf (one page). A hole reads as zeros.
	ReadPage(p coherence.PageID, buf []byte) error
	// WritePage writes data as page p, making it present, without
	// waking or mapping anything (pwrite).
	WritePage(p coherence.PageID, data []byte) error
	// Punch makes page p a hole.
	Punch(p coherence.PageID) error
}

// Program is one attached program's view of the region: its userfaultfd.
// An error wrapping ErrGone means the program exited or unmapped the
// region; the pager then leaves it alone.
type Program interface {
	// Copy places data as page p, mapping it in this program (write
	// protected when readOnly) and waking the program's threads that
	// wait on p. An error wrapping ErrPresent means the page was present
	// already.
	Copy(p coherence.PageID, data []byte, readOnly bool) error
	// Protect sets or clears the write protection of pages [p, p+count)
	// in this program; with wake, the threads waiting on them are woken.
	Protect(p coherence.PageID, count int, protect, wake bool) error
	// Wake wakes the program's threads that wait on page p.
	Wake(p coherence.PageID) error
}

// Sender hands messages to the transport. The message is filled (its page
// data and metadata are in Data and Meta); Send must encode or copy it
// before it returns, since its page data may be the pager's scratch.
type Sender interface {
	Send(m *coherence.Message)
}

// Errors a Program reports.
var (
	ErrGone    = errors.New("pager: the program's memory is gone")
	ErrPresent = errors.New("pager: the page is present already")
)

// LockNotes tells the pager which locks the node holds as it gets write
// access to a page and when the page leaves, for the analyzer's records.
// Optional.
type LockNotes interface {
	// NoteWrite is called when page p becomes writable here.
	NoteWrite(p coherence.PageID)
	// WriteLocks returns, when page p leaves with writes, the locks noted
	// at NoteWrite and those of them still held.
	WriteLocks(p coherence.PageID) (locks, kept []string)
}

// Observer is told how the faults went, for status and metrics. Optional.
type Observer interface {
	// Waited is called for every fault resolved, with how long it waited.
	Waited(d time.Duration)
	// Resolved is called when the faults on a page (waiters of them) are
	// resolved; stages is set when the fault went to another node and
	// its stages are known (fault to request, request to answer, answer
	// to wake).
	Resolved(waiters int, stages *Stages)
}

// Stages is where a fault's time went.
type Stages struct {
	Send, Remote, Install time.Duration
}

// Config configures a Pager.
type Config struct {
	ID       coherence.NodeID
	Engine   *coherence.Engine
	Pages    int // pages in the region
	PageSize int
	Store    Store
	Sender   Sender
	// MinHold and MaxHold bound the minimum hold (hold.go); used only
	// when the engine asks for holds.
	MinHold, MaxHold time.Duration
	// ReadAhead is how many pages to ask for ahead of sequential read
	// faults; 0 or less turns read-ahead off.
	ReadAhead int
	// NoCompress sends pages uncompressed.
	NoCompress bool
	// TwinBudget is how many twins the pager keeps at most; 0 means
	// TwinBudget(Pages).
	TwinBudget int
	// Analyzer receives a record of every migration; nil keeps none.
	Analyzer *analyzer.Analyzer
	Locks    LockNotes // nil: no lock notes
	Observer Observer  // nil: nobody is told
	// Now is the clock; nil means time.Now. The simulator gives its own.
	Now func() time.Time
	// Fail stops the node: the pager cannot keep a page coherent. Nil
	// panics.
	Fail func(error)
	Log  *slog.Logger // nil: discard
}

// Counters count what the pager did.
type Counters struct {
	ReadFaults, WriteFaults, WPFaults uint64
	Installs, Drops, Holds            uint64
	ReadAheads                        uint64
	Prefetches                        uint64 // pages asked for by Prefetch
	MigrationsIn, MigrationsOut       uint64
}

// Prog is an attached program as the pager knows it.
type Prog struct {
	ID   int
	Mem  Program
	Gone bool // detaching, or its memory is gone: left alone
	ra   readAheadState
}

type waiter struct {
	p  *Prog
	wp bool
	at time.Time
}

// Waiter is a fault waiting on a page, as Waiting reports it.
type Waiter struct {
	Prog *Prog
	Page coherence.PageID
	At   time.Time // when the fault was read
}

// Pager is the page logic of one node. See the package documentation.
type Pager struct {
	cfg   Config
	eng   *coherence.Engine
	ps    int
	pages int
	log   *slog.Logger
	now   func() time.Time

	progs    []*Prog
	phys     []coherence.State
	waiting  map[coherence.PageID][]waiter
	twins    *twinStore
	holds    map[coherence.PageID]holdState // pages made accessible for a local fault
	holdAges []heldPage                     // holds in the order they were made, to forget them
	holding  []heldPage                     // holds the engine asked to end (ActHold)
	holdNext time.Time                      // when the holding must be looked at again
	holdEnds []coherence.PageID             // scratch for ServeHolds
	traces   map[coherence.PageID]faultTrace
	spareWs  [][]waiter // emptied waiting lists, for reuse
	buf      []byte     // one page, scratch
	enc      []byte     // an encoded page, scratch
	meta     []byte     // its metadata, scratch
	ranges   []analyzer.Range
	woken    []*Prog
	c        Counters
}

// TwinBudget is the default size of the twin store for a region of pages
// pages: about 1.5% of the region, and at least 256 pages.
func TwinBudget(pages int) int { return max(256, pages/64) }

// New returns a pager.
func New(cfg Config) (*Pager, error) {
	if cfg.Engine == nil || cfg.Store == nil || cfg.Sender == nil {
		return nil, errors.New("pager: Engine, Store and Sender are required")
	}
	if cfg.Pages < 1 || cfg.PageSize < 8 || cfg.PageSize%8 != 0 {
		return nil, fmt.Errorf("pager: %d pages of %d bytes: need at least one page of a multiple of 8 bytes", cfg.Pages, cfg.PageSize)
	}
	if cfg.TwinBudget == 0 {
		cfg.TwinBudget = TwinBudget(cfg.Pages)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Fail == nil {
		cfg.Fail = func(err error) { panic(err) }
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pager{
		cfg: cfg, eng: cfg.Engine, ps: cfg.PageSize, pages: cfg.Pages, log: log, now: cfg.Now,
		phys:    make([]coherence.State, cfg.Pages),
		waiting: map[coherence.PageID][]waiter{},
		twins:   newTwinStore(cfg.TwinBudget, cfg.PageSize),
		holds:   map[coherence.PageID]holdState{},
		traces:  map[coherence.PageID]faultTrace{},
		buf:     make([]byte, cfg.PageSize),
	}, nil
}

// Attach adds a program. The daemon write-protects the whole region in it
// first, so that a page Shared here is not writable there.
func (g *Pager) Attach(id int, mem Program) *Prog {
	pr := &Prog{ID: id, Mem: mem}
	g.progs = append(g.progs, pr)
	return pr
}

// Detach forgets a program; its waiting faults are dropped as they come
// up.
func (g *Pager) Detach(pr *Prog) {
	pr.Gone = true
	for i, q := range g.progs {
		if q == pr {
			g.progs = append(g.progs[:i], g.progs[i+1:]...)
			break
		}
	}
}

// Counters returns what the pager counted.
func (g *Pager) Counters() Counters { return g.c }

// Phys returns the physical state of page p.
func (g *Pager) Phys(p coherence.PageID) coherence.State { return g.phys[p] }

// PhysStates returns the physical state of every page. The slice is the
// pager's: read it, under the daemon's lock, and do not keep it.
func (g *Pager) PhysStates() []coherence.State { return g.phys }

// Waiting returns the number of faults waiting.
func (g *Pager) Waiting() int {
	k := 0
	for _, ws := range g.waiting {
		k += len(ws)
	}
	return k
}

// HasTwin reports whether page p has a twin.
func (g *Pager) HasTwin(p coherence.PageID) bool { return g.twins.has(p) }

// Twins returns how many twins are kept, and at most.
func (g *Pager) Twins() (kept, budget int) { return g.twins.len(), g.twins.max }

// Stuck returns one fault per program that has waited since before
// since, oldest first within a page.
func (g *Pager) Stuck(since time.Time) []Waiter {
	var out []Waiter
	told := map[*Prog]bool{}
	for page, ws := range g.waiting {
		for _, w := range ws {
			if w.p.Gone || told[w.p] || !w.at.Before(since) {
				continue
			}
			told[w.p] = true
			out = append(out, Waiter{Prog: w.p, Page: page, At: w.at})
		}
	}
	return out
}

// Fault serves a fault of program pr on page p (a write, or a write to a
// write-protected page when wp), read at time at.
func (g *Pager) Fault(pr *Prog, p coherence.PageID, write, wp bool, at time.Time) {
	g.fault(Fault{Prog: pr, Page: p, Write: write, WP: wp, At: at})
	g.Flush()
}

// Fault is a page fault as the daemon read it from a program's
// userfaultfd.
type Fault struct {
	Prog  *Prog
	Page  coherence.PageID
	Write bool      // the access was a write
	WP    bool      // a write to a present, write-protected page
	At    time.Time // when it was read
}

// Faults serves a batch of faults, as the daemon's loop reads them from a
// userfaultfd: the engine takes them all, then the pager applies what it
// produced, once (a fault that joins a request made by an earlier one of
// the batch costs no batch of its own).
func (g *Pager) Faults(fs []Fault) {
	for _, f := range fs {
		g.fault(f)
	}
	g.Flush()
}

func (g *Pager) fault(f Fault) {
	pr, p := f.Prog, f.Page
	if pr.Gone {
		return
	}
	g.Wait(pr, p, f.WP, f.At)
	g.traceFault(p, f.At)
	a := coherence.Read
	if f.Write || f.WP {
		a = coherence.Write
	}
	g.CountFault(a, f.WP)
	if err := g.eng.Fault(p, a); err != nil {
		g.log.Error("fault refused by the engine", "page", p, "err", err)
	}
	if a == coherence.Read {
		g.readAhead(pr, p)
	}
}

// Prefetch asks for pages [from, to) ahead of a program's accesses: as
// read copies, or writable when write. It is what a fault on each page
// would ask the engine for, with no thread waiting: a page installed
// for it is placed in the store and the programs find it present; a
// program that touches a page before it comes faults and waits on the
// same request. Pages already present with the access, and pages a fault
// already waits on, are left alone. It returns the pages it asked for.
//
// A prefetch is a hint, like read-ahead: a page asked for writable takes
// ownership from its holder as a write fault would, so a wrong hint costs
// the same migrations as a wrong guess.
func (g *Pager) Prefetch(from, to coherence.PageID, write bool) int {
	to = min(to, coherence.PageID(g.pages))
	a := coherence.Read
	if write {
		a = coherence.Write
	}
	asked := 0
	for p := from; p < to; p++ {
		if len(g.waiting[p]) > 0 {
			continue
		}
		switch st := g.eng.State(p); {
		case st == coherence.Exclusive, st == coherence.Shared && !write:
			continue
		}
		if err := g.eng.Fault(p, a); err != nil {
			g.log.Warn("prefetch refused by the engine", "page", p, "err", err)
			break
		}
		g.c.Prefetches++
		asked++
	}
	g.Flush()
	return asked
}

// Wait records a fault of pr on page p without telling the engine: for a
// page another protocol serves (the release-consistent area).
func (g *Pager) Wait(pr *Prog, p coherence.PageID, wp bool, at time.Time) {
	ws, ok := g.waiting[p]
	if !ok {
		if k := len(g.spareWs); k > 0 {
			ws, g.spareWs = g.spareWs[k-1], g.spareWs[:k-1]
		}
	}
	g.waiting[p] = append(ws, waiter{p: pr, wp: wp, at: at})
}

// CountFault counts a fault.
func (g *Pager) CountFault(a coherence.Access, wp bool) {
	switch {
	case wp:
		g.c.WPFaults++
	case a == coherence.Write:
		g.c.WriteFaults++
	default:
		g.c.ReadFaults++
	}
}

// Step gives the engine a message from another node and applies what it
// produced.
func (g *Pager) Step(m *coherence.Message) error {
	g.traceAnswer(m)
	err := g.eng.Step(m)
	g.Flush()
	return err
}

// Tick is the pager's periodic input: the engine's retransmissions, and
// forgetting hold records too old to matter.
func (g *Pager) Tick(now time.Time) {
	g.forgetHolds(now)
	g.eng.Tick()
	g.Flush()
}

// Flush applies everything the engine produced, in order, and reports
// whether there was anything.
func (g *Pager) Flush() bool {
	did := false
	for g.eng.HasReady() {
		did = true
		for _, o := range g.eng.Ready() {
			if o.Act != nil {
				g.apply(o.Act)
			} else if o.Msg != nil {
				g.send(o.Msg)
			}
		}
		g.eng.Advance()
	}
	return did
}

// apply carries out one page action on the store and in every attached
// program. The physical state (g.phys) follows the engine's state: Invalid
// is a hole, Shared is present and write-protected in every program,
// Exclusive is present and writable.
func (g *Pager) apply(a *coherence.Action) {
	p := a.Page
	if int(p) >= g.pages {
		g.log.Error("engine action on a page outside the region", "page", p)
		return
	}
	switch a.Kind {
	case coherence.ActInstall:
		g.install(a)
	case coherence.ActProtect:
		// The twin stays: the page is usually about to be sent, and what
		// this node wrote is the difference.
		g.ProtectAll(p, 1, true)
		g.phys[p] = coherence.Shared
	case coherence.ActUnprotect:
		if g.phys[p] == coherence.Invalid {
			g.log.Error("engine unprotects an absent page", "page", p)
			return
		}
		// The twin is the copy this node starts writing from: what it
		// writes is the difference when the page leaves.
		if err := g.cfg.Store.ReadPage(p, g.buf); err == nil {
			g.twins.put(p, g.buf)
		}
		g.noteWrite(p)
		g.phys[p] = coherence.Exclusive
		g.ProtectAll(p, 1, false)
		g.noteAccessible(p, true)
		g.Resolve(p, false)
	case coherence.ActDrop:
		if g.phys[p] == coherence.Exclusive {
			g.ProtectAll(p, 1, true)
		}
		g.Drop(p)
		g.twins.drop(p)
		delete(g.holds, p)
	case coherence.ActWake:
		g.Resolve(p, true)
	case coherence.ActHold:
		g.startHold(p)
	default:
		g.log.Error("unknown engine action", "kind", a.Kind, "page", p)
	}
}

// Drop makes page p a hole (Invalid). Threads waiting on it are not
// woken.
func (g *Pager) Drop(p coherence.PageID) {
	if err := g.cfg.Store.Punch(p); err != nil {
		g.log.Error("punch hole", "page", p, "err", err)
	}
	g.phys[p] = coherence.Invalid
	g.c.Drops++
}

// SetPhys sets the physical state of page p, for a protocol other than
// the engine's that changed it (the release-consistent area).
func (g *Pager) SetPhys(p coherence.PageID, s coherence.State) { g.phys[p] = s }

// ProtectAll sets or clears write protection of pages [p, p+count) in
// every attached program. Clearing wakes the threads that wait on them.
func (g *Pager) ProtectAll(p coherence.PageID, count int, protect bool) {
	for _, pr := range g.progs {
		if pr.Gone {
			continue
		}
		if err := pr.Mem.Protect(p, count, protect, !protect); err != nil {
			g.progErr(pr, "write-protect", p, err)
		}
	}
}

// progErr handles a failed operation on a program's memory. A program that
// exited or unmapped the region is detaching: it is skipped from now on
// without noise. Anything else is logged.
func (g *Pager) progErr(pr *Prog, op string, p coherence.PageID, err error) {
	if errors.Is(err, ErrGone) {
		pr.Gone = true
		return
	}
	g.log.Warn(op, "page", p, "prog", pr.ID, "err", err)
}

func (g *Pager) install(a *coherence.Action) {
	p := a.Page
	if g.phys[p] != coherence.Invalid {
		g.log.Error("engine installs a page that is present; dropping the old copy first", "page", p, "state", g.phys[p])
		g.ProtectAll(p, 1, true)
		g.cfg.Store.Punch(p)
	}
	data := g.buf
	if a.Zero || len(a.Data) == 0 {
		clear(data)
	} else if err := dsmnet.DecodePage(data, a.Data); err != nil {
		// The transport authenticated the datagram, so this is a bug, and
		// the engine already counts the page as present: stop rather than
		// install anything wrong.
		g.cfg.Fail(fmt.Errorf("page %d from node %d does not decode: %w", p, a.From, err))
		return
	}
	if a.Writable {
		g.twins.put(p, data)
		g.noteWrite(p)
	} else {
		g.twins.drop(p)
	}
	via, installed, ok := g.Place(p, data, a.Writable)
	if !ok {
		return
	}
	g.noteAccessible(p, a.Writable)
	if a.From != g.cfg.ID && !a.Zero {
		g.c.MigrationsIn++
		if an := g.cfg.Analyzer; an != nil {
			var ranges []analyzer.Range
			if len(a.Meta) > 0 {
				r, err := DecodeRanges(a.Meta, g.ps)
				if err != nil {
					g.log.Warn("bad written-ranges metadata", "page", p, "from", a.From, "err", err)
				}
				ranges = r
			}
			now := g.now()
			var cost time.Duration
			if w := g.waiting[p]; len(w) > 0 {
				cost = now.Sub(w[0].at)
			}
			an.Record(analyzer.Migration{
				Page: uint32(p), From: uint16(a.From), To: uint16(g.cfg.ID),
				Write: a.Writable, Wall: now, Clock: a.Clock,
				Written: ranges, Cost: cost,
			})
		}
	}
	g.Resolve(p, via == nil || !installed)
}

// Place puts data in the store as page p and sets its physical state:
// through a program that waits on it (Program.Copy, which also maps it
// there and wakes that program's threads), or, when none can, with
// Store.WritePage. A page that is not writable is write-protected in every
// other program first, so that none sees it writable for a moment. It
// returns the program used and whether Copy installed the page; ok is false
// when the page could not be written at all (the node then cannot go on:
// Config.Fail was called).
func (g *Pager) Place(p coherence.PageID, data []byte, writable bool) (via *Prog, installed, ok bool) {
	via = g.installVia(p)
	if !writable {
		for _, pr := range g.progs {
			if pr != via && !pr.Gone {
				if err := pr.Mem.Protect(p, 1, true, false); err != nil {
					g.progErr(pr, "write-protect", p, err)
				}
			}
		}
	}
	if via != nil {
		err := via.Mem.Copy(p, data, !writable)
		switch {
		case err == nil:
			installed = true
		case errors.Is(err, ErrPresent):
			g.log.Error("page already present at install", "page", p)
			installed = true
		default:
			g.progErr(via, "copy (writing the page to the store instead)", p, err)
		}
	}
	if !installed {
		if err := g.cfg.Store.WritePage(p, data); err != nil {
			g.cfg.Fail(fmt.Errorf("write page %d: %w", p, err))
			return via, false, false
		}
	}
	if writable {
		g.phys[p] = coherence.Exclusive
	} else {
		g.phys[p] = coherence.Shared
	}
	g.c.Installs++
	return via, installed, true
}

// installVia picks the program through which page p is installed: one
// that waits on it, or any attached program.
func (g *Pager) installVia(p coherence.PageID) *Prog {
	for _, w := range g.waiting[p] {
		if !w.p.Gone {
			return w.p
		}
	}
	for _, pr := range g.progs {
		if !pr.Gone {
			return pr
		}
	}
	return nil
}

// Resolve wakes every thread waiting on page p. wakeAll also wakes the
// program the page was installed through (its Copy already woke it
// otherwise). A write-protect fault on a page that is now writable is
// released by clearing the protection in that program.
func (g *Pager) Resolve(p coherence.PageID, wakeAll bool) {
	ws := g.waiting[p]
	if len(ws) == 0 {
		return
	}
	now := g.now()
	g.traceDone(p, len(ws), now)
	var via *Prog
	if !wakeAll {
		via = g.installVia(p)
	}
	woken := g.woken[:0]
	for _, w := range ws {
		if o := g.cfg.Observer; o != nil {
			o.Waited(now.Sub(w.at))
		}
		if w.p.Gone || containsProg(woken, w.p) {
			continue
		}
		woken = append(woken, w.p)
		if w.wp && g.phys[p] == coherence.Exclusive {
			if err := w.p.Mem.Protect(p, 1, false, true); err != nil {
				g.progErr(w.p, "unprotect", p, err)
			}
			continue
		}
		if w.p == via {
			continue
		}
		if err := w.p.Mem.Wake(p); err != nil {
			g.progErr(w.p, "wake", p, err)
		}
	}
	clear(woken)
	g.woken = woken[:0]
	delete(g.waiting, p)
	// The list is kept for the next page that waits: a fault costs no
	// allocation once the daemon has seen as many pages waiting at once.
	clear(ws)
	if len(g.spareWs) < 64 {
		g.spareWs = append(g.spareWs, ws[:0])
	}
}

func containsProg(ps []*Prog, p *Prog) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// WaitingOn reports whether a fault waits on page p.
func (g *Pager) WaitingOn(p coherence.PageID) bool { return len(g.waiting[p]) > 0 }

// send hands m to the sender; a message that carries a page gets it first,
// read now, after the outputs before it took effect (Engine.Fill).
func (g *Pager) send(m *coherence.Message) {
	if m.NeedData {
		if err := g.cfg.Store.ReadPage(m.Page, g.buf); err != nil {
			g.cfg.Fail(fmt.Errorf("read page %d to send it to node %d: %w", m.Page, m.To, err))
			return
		}
		meta := g.outgoing(m)
		// The encoded page is scratch: the engine copies what it keeps,
		// and the sender copies the message before it returns.
		var data []byte
		if g.cfg.NoCompress {
			data = dsmnet.EncodePageUncompressed(g.enc[:0], g.buf)
		} else {
			data = dsmnet.EncodePage(g.enc[:0], g.buf)
		}
		g.enc = data[:0]
		m = g.eng.Fill(m, data, meta)
	}
	g.traceSend(m.Page)
	g.cfg.Sender.Send(m)
}

// outgoing computes what this node wrote on a page it is giving away (a diff
// against the copy it received), records the migration for the analyzer and
// returns the ranges encoded for the message's metadata.
func (g *Pager) outgoing(m *coherence.Message) []byte {
	twin, ok := g.twins.get(m.Page)
	if !ok {
		return nil
	}
	// A slice, not nil, even when nothing was written: the analyzer
	// reads nil as "unknown".
	ranges := DiffRanges(g.ranges[:0], twin, g.buf)
	g.ranges = ranges
	// What was written has now been reported: the next diff starts here.
	copy(twin, g.buf)
	g.c.MigrationsOut++
	if an := g.cfg.Analyzer; an != nil {
		var locks, kept []string
		if l := g.cfg.Locks; l != nil {
			locks, kept = l.WriteLocks(m.Page)
		}
		an.Record(analyzer.Migration{
			Page: uint32(m.Page), From: uint16(g.cfg.ID), To: uint16(m.To),
			Write: true, Wall: g.now(), Clock: m.Clock, Written: ranges,
			Locks: locks, Kept: kept,
		})
	}
	// Scratch, like the page: the engine copies what it keeps.
	g.meta = EncodeRanges(g.meta[:0], ranges)
	return g.meta
}

func (g *Pager) noteWrite(p coherence.PageID) {
	if l := g.cfg.Locks; l != nil {
		l.NoteWrite(p)
	}
}
