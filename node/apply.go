package node

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/coherence"
	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/uffd"
)

// apply carries out one page action on the memfd and on the userfaultfd of
// every attached program. The physical state (n.phys) follows the engine's
// state: Invalid is a hole, Shared is present and write-protected, Exclusive
// is present and writable.
func (n *Node) apply(a *coherence.Action) {
	p := a.Page
	if int(p) >= n.pages {
		n.log.Error("engine action on a page outside the region", "page", p)
		return
	}
	switch a.Kind {
	case coherence.ActInstall:
		n.install(a)
	case coherence.ActProtect:
		// The twin stays: the page is usually about to be sent, and what
		// this node wrote is the difference.
		n.protectAll(p, true)
		n.phys[p] = coherence.Shared
	case coherence.ActUnprotect:
		if n.phys[p] == coherence.Invalid {
			n.log.Error("engine unprotects an absent page", "page", p)
			return
		}
		// The twin is the copy this node starts writing from: what it
		// writes is the difference when the page leaves.
		if err := n.readPage(p); err == nil {
			n.twins.put(p, n.buf)
		}
		n.noteWriteLocks(p)
		n.phys[p] = coherence.Exclusive
		n.protectAll(p, false)
		n.noteAccessible(p, true)
		n.resolved(p, false)
	case coherence.ActDrop:
		if n.phys[p] == coherence.Exclusive {
			n.protectAll(p, true)
		}
		if err := uffd.PunchHole(n.memfd, n.pageOff(p), int64(n.ps)); err != nil {
			n.log.Error("punch hole", "page", p, "err", err)
		}
		n.phys[p] = coherence.Invalid
		n.twins.drop(p)
		delete(n.holds, p)
		n.stats.drops++
	case coherence.ActWake:
		n.resolved(p, true)
	case coherence.ActHold:
		n.startHold(p)
	default:
		n.log.Error("unknown engine action", "kind", a.Kind, "page", p)
	}
}

// protectAll sets or clears write protection of page p in every attached
// program. Clearing wakes the threads that wait on it.
func (n *Node) protectAll(p coherence.PageID, protect bool) {
	for _, pr := range n.progs {
		if pr.gone {
			continue
		}
		if err := pr.u.WriteProtect(n.pageAddr(p), uintptr(n.ps), protect, !protect); err != nil {
			n.progErr(pr, "write-protect", p, err)
		}
	}
}

// progErr handles a failed userfaultfd operation on a program's memory. A
// program that exited or unmapped the region is detaching: it is skipped
// from now on without noise. Anything else is logged.
func (n *Node) progErr(pr *prog, op string, p coherence.PageID, err error) {
	if errors.Is(err, uffd.ErrExited) || errors.Is(err, unix.ENOENT) {
		pr.gone = true
		return
	}
	n.log.Warn(op, "page", p, "pid", pr.pid, "err", err)
}

func (n *Node) install(a *coherence.Action) {
	p := a.Page
	if n.phys[p] != coherence.Invalid {
		n.log.Error("engine installs a page that is present; dropping the old copy first", "page", p, "state", n.phys[p])
		n.protectAll(p, true)
		uffd.PunchHole(n.memfd, n.pageOff(p), int64(n.ps))
	}
	data := n.buf
	if a.Zero || len(a.Data) == 0 {
		clear(data)
	} else if err := dsmnet.DecodePage(data, a.Data); err != nil {
		// The transport authenticated the datagram, so this is a bug, and
		// the engine already counts the page as present: stop rather than
		// install anything wrong.
		n.fail(fmt.Errorf("page %d from node %d does not decode: %w", p, a.From, err))
		return
	}
	if a.Writable {
		n.twins.put(p, data)
		n.noteWriteLocks(p)
	} else {
		n.twins.drop(p)
	}
	via, installed, ok := n.placePage(p, data, a.Writable)
	if !ok {
		return
	}
	if a.Writable {
		n.phys[p] = coherence.Exclusive
	} else {
		n.phys[p] = coherence.Shared
	}
	n.stats.installs++
	n.noteAccessible(p, a.Writable)
	if a.From != coherence.NodeID(n.cfg.ID) && !a.Zero {
		n.stats.migrationsIn++
		var ranges []analyzer.Range
		if len(a.Meta) > 0 {
			r, err := decodeRanges(a.Meta, n.ps)
			if err != nil {
				n.log.Warn("bad written-ranges metadata", "page", p, "from", a.From, "err", err)
			}
			ranges = r
		}
		var cost time.Duration
		if w := n.waiting[p]; len(w) > 0 {
			cost = time.Since(w[0].at)
		}
		n.an.Record(analyzer.Migration{
			Page: uint32(p), From: uint16(a.From), To: uint16(n.cfg.ID),
			Write: a.Writable, Wall: time.Now(), Clock: a.Clock,
			Written: ranges, Cost: cost,
		})
	}
	n.resolved(p, via == nil || !installed)
}

// placePage puts data in the memfd as page p: through the userfaultfd of
// a program that waits on it (UFFDIO_COPY, which also maps it there and
// wakes that program's threads), or, when none can, with pwrite. A page
// that is not writable is write-protected in every other program first,
// so that none sees it writable for a moment. It returns the program used
// and whether UFFDIO_COPY installed the page; ok is false when the page
// could not be written at all.
func (n *Node) placePage(p coherence.PageID, data []byte, writable bool) (via *prog, installed, ok bool) {
	via = n.installVia(p)
	if !writable {
		for _, pr := range n.progs {
			if pr != via && !pr.gone {
				if err := pr.u.WriteProtect(n.pageAddr(p), uintptr(n.ps), true, false); err != nil {
					n.progErr(pr, "write-protect", p, err)
				}
			}
		}
	}
	if via != nil {
		err := via.u.Copy(n.pageAddr(p), data, !writable)
		switch {
		case err == nil:
			installed = true
		case errors.Is(err, uffd.ErrExist):
			n.log.Error("page already present in the memfd at install", "page", p)
			installed = true
		default:
			n.progErr(via, "UFFDIO_COPY (writing the page through the memfd instead)", p, err)
		}
	}
	if !installed {
		if _, err := unix.Pwrite(n.memfd, data, n.pageOff(p)); err != nil {
			n.log.Error("pwrite page", "page", p, "err", err)
			return via, false, false
		}
	}
	return via, installed, true
}

// installVia picks the program whose userfaultfd installs page p: one that
// waits on it, or any attached program.
func (n *Node) installVia(p coherence.PageID) *prog {
	for _, w := range n.waiting[p] {
		if !w.p.gone {
			return w.p
		}
	}
	for _, pr := range n.progs {
		if !pr.gone {
			return pr
		}
	}
	return nil
}

// resolved wakes every thread waiting on page p. wakeAll also wakes the
// program the page was installed through (UFFDIO_COPY already woke it
// otherwise). A write-protect fault on a page that is now writable is
// released by clearing the protection in that program.
func (n *Node) resolved(p coherence.PageID, wakeAll bool) {
	ws := n.waiting[p]
	if len(ws) == 0 {
		return
	}
	now := time.Now()
	n.traceDone(p, now)
	woken := map[*prog]bool{}
	var via *prog
	if !wakeAll {
		via = n.installVia(p)
	}
	for _, w := range ws {
		n.stats.lat.add(now.Sub(w.at))
		if w.p.gone || woken[w.p] {
			continue
		}
		woken[w.p] = true
		if w.wp && n.phys[p] == coherence.Exclusive {
			if err := w.p.u.WriteProtect(n.pageAddr(p), uintptr(n.ps), false, true); err != nil {
				n.progErr(w.p, "unprotect", p, err)
			}
			continue
		}
		if w.p == via {
			continue
		}
		if err := w.p.u.Wake(n.pageAddr(p), uintptr(n.ps)); err != nil {
			n.progErr(w.p, "wake", p, err)
		}
	}
	delete(n.waiting, p)
}
