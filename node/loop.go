package node

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/pager"
	"github.com/dsmrt/dsm/uffd"
)

// The event loop. A remote fault costs what its thread wake-ups cost (see
// DESIGN.md: the bytes on the wire are a small part), so the daemon's fault
// path runs on one locked OS thread that waits in a single epoll_wait on the
// transport's UDP socket, on every attached program's userfaultfd and lock
// stream, and on an eventfd. A fault is read, decided and its request sent; a request is
// served and answered; a page is received, installed and its thread woken:
// all inline on that thread, with no goroutine hand-off, channel, netpoller
// or runtime timer in between. The timers (the engines' ticks, the
// transport's retransmissions, delayed acknowledgements and heartbeats, the
// fault timeout) are the loop's own epoll_wait deadline.
//
// A program's lock messages (requests, unlocks, barrier arrivals, prefetch
// hints) come on its lock stream, a connection the loop watches too and
// serves inline (readStream). The rest of the daemon (control connections:
// attach, detach, allocations, status, and the lock messages of programs
// without a stream) runs on ordinary goroutines. They do their work under
// n.mu, which the loop holds while it serves events, and wake the loop
// through the eventfd only when what they did needs the loop sooner than
// it planned to wake (a message they sent must be retransmitted before
// then): see offLoop. A control request thus costs no extra wake-up of the
// loop when nothing is due.

// Epoll tags of the loop's own descriptors; a program's userfaultfd is
// tagged with the program's id (positive), its lock stream with
// streamTag.
const (
	tagSocket int32 = -1
	tagKick   int32 = -2
	// tagStreams and below: lock streams.
	tagStreams int32 = -16
)

// streamTag is the epoll tag of the lock stream of the program with id.
func streamTag(id int) int32 { return tagStreams - int32(id) }

// maxStreamMsgs bounds the lock messages read from one program per
// wake-up before the loop looks at the rest.
const maxStreamMsgs = 64

// maxReceive bounds the datagrams served per wake-up before the loop looks
// at the userfaultfds again.
const maxReceive = 256

// eventLoop is the loop's state. Only wakeAt is shared with other
// goroutines.
type eventLoop struct {
	epfd   int
	evfd   int
	events [64]unix.EpollEvent
	msgs   [64]uffd.Msg
	faults []pager.Fault  // scratch: the faults of one read
	ctlBuf [64 << 10]byte // scratch: a lock message read from a stream
	// rawWait: wait with a raw system call (see wait).
	rawWait bool

	// wakeAt is the time (UnixNano) at which the loop will wake by itself,
	// published before it waits; zero while it is awake (it will look at
	// every deadline again before it waits).
	wakeAt atomic.Int64
}

func (n *Node) openLoop() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("event loop: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("event loop: eventfd: %w", err)
	}
	n.lp = &eventLoop{epfd: epfd, evfd: evfd, rawWait: runtime.GOMAXPROCS(0) > 1}
	if err := n.watch(evfd, tagKick); err != nil {
		n.closeLoop()
		return err
	}
	return nil
}

func (n *Node) closeLoop() {
	unix.Close(n.lp.evfd)
	unix.Close(n.lp.epfd)
}

// watch adds fd to the loop's epoll set with tag.
func (n *Node) watch(fd int, tag int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: tag}
	if err := unix.EpollCtl(n.lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("event loop: watch descriptor %d: %w", fd, err)
	}
	return nil
}

// unwatch removes fd from the loop's epoll set.
func (n *Node) unwatch(fd int) {
	unix.EpollCtl(n.lp.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

// kick wakes the loop. Called with n.mu held and the node not stopped, so
// that the eventfd is open.
func (n *Node) kick() {
	one := [8]byte{1}
	unix.Write(n.lp.evfd, one[:])
}

// offLoop runs fn under n.mu on a goroutine other than the loop's, applies
// what the engines produced, and wakes the loop if the transport now needs
// it sooner than the loop planned to wake. It reports false, without
// running fn, once the node has stopped.
func (n *Node) offLoop(fn func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return false
	}
	n.tr.Cork()
	fn()
	n.flush()
	n.tr.Uncork()
	// The loop publishes wakeAt before it reads the deadline a last time,
	// and a send here moves the deadline before this reads wakeAt: one of
	// the two sees the other. A hold started here is looked at by the loop
	// only once it wakes.
	if at := n.lp.wakeAt.Load(); at != 0 && (n.tr.Deadline().UnixNano() < at ||
		!n.pg.NextHold().IsZero() && n.pg.NextHold().UnixNano() < at ||
		!n.lazyNext.IsZero() && n.lazyNext.UnixNano() < at) {
		n.kick()
	}
	return true
}

// runLoop serves the node on the calling goroutine, locked to its OS
// thread, until ctx ends or the node fails.
func (n *Node) runLoop(ctx context.Context) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stop := context.AfterFunc(ctx, func() {
		n.mu.Lock()
		if !n.stopped {
			n.kick()
		}
		n.mu.Unlock()
	})
	defer stop()
	lp := n.lp
	tick := time.Duration(n.cfg.Tick)
	nextTick := time.Now().Add(tick)
	ready := 0 // events of the last wait
	for {
		n.mu.Lock()
		if ctx.Err() != nil {
			n.mu.Unlock()
			return nil
		}
		// What this batch sends leaves at Uncork, sharing datagrams.
		n.tr.Cork()
		for _, ev := range lp.events[:ready] {
			switch ev.Fd {
			case tagSocket:
				n.tr.Receive(maxReceive)
			case tagKick:
				var b [8]byte
				unix.Read(lp.evfd, b[:])
			default:
				if ev.Fd <= tagStreams {
					if pr := n.progs[int(tagStreams-ev.Fd)]; pr != nil {
						n.readStream(pr)
					}
				} else if pr := n.progs[int(ev.Fd)]; pr != nil {
					n.readFaults(pr, ev.Events)
				}
			}
		}
		now := time.Now()
		if !now.Before(nextTick) {
			n.pg.Tick(now)
			if n.rcs != nil {
				n.rcs.eng.Tick()
				n.tickHomes(now)
			}
			n.tickLocks(now)
			if now.Sub(n.lastStuckCheck) >= time.Second {
				n.lastStuckCheck = now
				n.failStuckFaults(now)
			}
			nextTick = now.Add(tick)
		}
		n.tr.Tick(now)
		n.flush()
		wake := nextTick
		if h := n.pg.ServeHolds(now); !h.IsZero() && h.Before(wake) {
			wake = h
		}
		if l := n.flushLazy(now); !l.IsZero() && l.Before(wake) {
			wake = l
		}
		n.tr.Uncork()
		n.mu.Unlock()

		if d := n.tr.Deadline(); d.Before(wake) {
			wake = d
		}
		lp.wakeAt.Store(wake.UnixNano())
		if d := n.tr.Deadline(); d.Before(wake) {
			wake = d // a send from another goroutine moved it
		}
		k, err := lp.wait(time.Until(wake))
		lp.wakeAt.Store(0)
		switch {
		case err == nil:
			ready = k
		case errors.Is(err, unix.EINTR):
			ready = 0
		default:
			return fmt.Errorf("event loop: epoll_pwait2: %w", err)
		}
	}
}

// wait waits up to d for events, with epoll_pwait2 (Linux 5.11): its
// timeout is in nanoseconds, where epoll_wait's milliseconds would turn a
// hold of tens of microseconds into a millisecond.
//
// With more than one P it is a raw system call: the runtime does not see
// the loop enter it, so the loop keeps its P while it waits and sysmon
// does not hand the P to another thread (which, finding nothing to run,
// would go to sleep in the netpoller and be woken again: measured, 4.3 ->
// 3.5 voluntary switches per remote read fault). The runtime still stops
// the loop when it must (a stop-the-world, a preemption): it signals the
// thread, which interrupts the wait (EINTR). With one P the loop would
// hold the only P, so it then waits as an ordinary system call.
func (lp *eventLoop) wait(d time.Duration) (int, error) {
	ts := unix.NsecToTimespec(max(int64(d), 0))
	call := unix.Syscall6
	if lp.rawWait {
		call = unix.RawSyscall6
	}
	k, _, e := call(unix.SYS_EPOLL_PWAIT2, uintptr(lp.epfd),
		uintptr(unsafe.Pointer(&lp.events[0])), uintptr(len(lp.events)),
		uintptr(unsafe.Pointer(&ts)), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(k), nil
}

// readStream serves the lock messages waiting on program pr's lock stream,
// inline: no goroutine or netpoller is woken for them (a program's lock
// call, a barrier arrival, a prefetch hint). What they send leaves with
// the rest of the batch. Called by the loop with n.mu held.
func (n *Node) readStream(pr *prog) {
	for range maxStreamMsgs {
		if pr.stream == nil {
			return
		}
		k, _, err := unix.Recvfrom(pr.streamFD, n.lp.ctlBuf[:], unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			return
		case err != nil || k == 0:
			// Closed by the program (or broken): its first connection
			// says whether it detached.
			n.closeStream(pr)
			return
		case k > len(n.lp.ctlBuf):
			n.log.Warn("lock message too long dropped", "pid", pr.pid, "bytes", k)
			continue
		}
		m, err := ctl.ParseLockMsg(n.lp.ctlBuf[:k])
		if err != nil {
			n.log.Warn("malformed lock message dropped", "pid", pr.pid, "err", err)
			continue
		}
		if m.Op == ctl.LockOpPrefetch {
			n.prefetch(onLoop, pr, m.Text)
			continue
		}
		n.serveLock(onLoop, pr.conn, pr, m, true)
	}
}

// readFaults reads the faults waiting on program pr's userfaultfd and
// serves them. Called by the loop with n.mu held.
func (n *Node) readFaults(pr *prog, events uint32) {
	if pr.Gone {
		// Detaching or exited: what it left unread would keep the
		// descriptor readable.
		n.unwatch(pr.u.Fd())
		return
	}
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		n.log.Warn("userfaultfd of program failed; its faults are no longer served", "pid", pr.pid, "events", fmt.Sprintf("%#x", events))
		n.unwatch(pr.u.Fd())
		pr.Gone = true
		return
	}
	k, err := pr.u.ReadMsgs(n.lp.msgs[:])
	if err != nil {
		n.log.Warn("read userfaultfd; its faults are no longer served", "pid", pr.pid, "err", err)
		n.unwatch(pr.u.Fd())
		pr.Gone = true
		return
	}
	if k == 0 {
		return
	}
	now := time.Now()
	base, size, ps := n.cfg.Base, n.cfg.Size, uint64(n.ps)
	batch := n.lp.faults[:0]
	for _, m := range n.lp.msgs[:k] {
		if !m.IsPagefault() {
			continue
		}
		if m.Address < base || m.Address >= base+size {
			n.log.Error("fault outside the region", "pid", pr.pid, "addr", fmt.Sprintf("0x%x", m.Address))
			continue
		}
		p := coherence.PageID((m.Address - base) / ps)
		if n.isRC(p) {
			n.rcFault(pr, p, m.IsWrite(), m.IsWP(), now)
			continue
		}
		batch = append(batch, pager.Fault{Prog: pr.Prog, Page: p, Write: m.IsWrite(), WP: m.IsWP(), At: now})
	}
	// The faults of one read go to the pager as one batch: one flush of
	// the engine for all of them.
	n.pg.Faults(batch)
	clear(batch)
	n.lp.faults = batch[:0]
}
