package node

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/pager"
	"github.com/dsmrt/dsm/uffd"
)

// The daemon's side of the pager's interfaces: the memfd is its Store, each
// program's userfaultfd a Program, the transport (through the outbox) its
// Sender; the node's counters observe it and its lock state annotates the
// analyzer's records.

// memfdStore is the region's memfd.
type memfdStore struct {
	fd int
	ps int
}

// ReadPage implements pager.Store. pread reads a hole as zeros without
// allocating it, so it is safe whatever the page's state.
func (s memfdStore) ReadPage(p coherence.PageID, buf []byte) error {
	off := int64(p) * int64(s.ps)
	for done := 0; done < len(buf); {
		k, err := unix.Pread(s.fd, buf[done:], off+int64(done))
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return fmt.Errorf("pread page %d: %w", p, err)
		}
		if k == 0 {
			return fmt.Errorf("pread page %d: short read", p)
		}
		done += k
	}
	return nil
}

// WritePage implements pager.Store.
func (s memfdStore) WritePage(p coherence.PageID, data []byte) error {
	if _, err := unix.Pwrite(s.fd, data, int64(p)*int64(s.ps)); err != nil {
		return fmt.Errorf("pwrite page %d: %w", p, err)
	}
	return nil
}

// Punch implements pager.Store.
func (s memfdStore) Punch(p coherence.PageID) error {
	return uffd.PunchHole(s.fd, int64(p)*int64(s.ps), int64(s.ps))
}

// uffdProgram is an attached program's userfaultfd.
type uffdProgram struct {
	u    *uffd.FD
	base uintptr
	ps   int
}

func (u uffdProgram) addr(p coherence.PageID) uintptr { return u.base + uintptr(p)*uintptr(u.ps) }

// progError turns what userfaultfd says of a program that exited or
// unmapped the region into pager.ErrGone.
func progError(err error) error {
	if errors.Is(err, uffd.ErrExited) || errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%w: %w", pager.ErrGone, err)
	}
	return err
}

// Copy implements pager.Program with UFFDIO_COPY.
func (u uffdProgram) Copy(p coherence.PageID, data []byte, readOnly bool) error {
	err := u.u.Copy(u.addr(p), data, readOnly)
	if errors.Is(err, uffd.ErrExist) {
		return fmt.Errorf("%w: %w", pager.ErrPresent, err)
	}
	return progError(err)
}

// Protect implements pager.Program with UFFDIO_WRITEPROTECT.
func (u uffdProgram) Protect(p coherence.PageID, count int, protect, wake bool) error {
	return progError(u.u.WriteProtect(u.addr(p), uintptr(count*u.ps), protect, wake))
}

// Wake implements pager.Program with UFFDIO_WAKE.
func (u uffdProgram) Wake(p coherence.PageID) error {
	return progError(u.u.Wake(u.addr(p), uintptr(u.ps)))
}

// coherenceSender is the pager's way to the transport.
type coherenceSender struct{ n *Node }

// Send implements pager.Sender.
func (s coherenceSender) Send(m *coherence.Message) { s.n.send(m) }

// lockNotes lets the pager record the locks under which pages are written.
type lockNotes struct{ n *Node }

// NoteWrite implements pager.LockNotes.
func (l lockNotes) NoteWrite(p coherence.PageID) { l.n.noteWriteLocks(p) }

// WriteLocks implements pager.LockNotes.
func (l lockNotes) WriteLocks(p coherence.PageID) (locks, kept []string) {
	return l.n.writeLocks(p)
}

// statsObserver counts fault latencies and stages in the node's stats.
type statsObserver stats

// Waited implements pager.Observer.
func (o *statsObserver) Waited(d time.Duration) { o.lat.add(d) }

// Resolved implements pager.Observer.
func (o *statsObserver) Resolved(waiters int, st *pager.Stages) {
	o.metrics.countResolved(waiters, st != nil)
	if st == nil {
		return
	}
	o.stages.send.add(st.Send)
	o.stages.remote.add(st.Remote)
	o.stages.install.add(st.Install)
}
