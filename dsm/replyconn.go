package dsm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/dsmrt/dsm/internal/ctl"
)

// A lock call (Lock, Barrier, ...) waits for its reply on a connection of
// its own, read by the calling goroutine. On the region's first
// connection the reply reaches the reader goroutine (watch), which hands
// it to the caller through a channel: on two vCPUs that hand-off cost a
// one-node barrier 3.2 voluntary context switches and about 90 µs of the
// program's CPU (perf sched; the Go runtime wakes an idle thread for the
// readied caller). Read by the caller, the reply wakes the one thread
// that waits in the netpoller and the caller runs on it.
//
// The request itself goes where every other lock message of the program
// goes (the lock stream, below), after every message before it (an Unlock
// sent without waiting must reach the daemon before the next Lock of the
// same lock); it names the slot of the connection to answer on
// (ctl.LockReplyJoined). A program joins up to ctl.MaxSlots such
// connections, as many as calls wait at once; a call that finds none free
// waits on the first connection as before.

// The program's binary lock messages (requests, unlocks, prefetch hints)
// go on one more joined connection, its lock stream, which the daemon's
// event loop reads itself: on the first connection each woke a goroutine
// of the daemon through Go's netpoller (1.9 switches and 36 µs of the
// daemon's CPU per one-node barrier). One connection for all of them keeps
// their order.

// joinStream joins the program's lock stream; without one (a daemon that
// refused it, or did not answer) the messages go on the first connection.
func (r *Region) joinStream(ctx context.Context) {
	c, err := r.dialJoin(ctx, ctl.Request{Stream: true})
	if err != nil {
		return
	}
	r.mu.Lock()
	r.stream = c
	r.mu.Unlock()
}

// writeLock sends binary lock message m on the lock stream, or on the
// first connection when there is none or it broke (the daemon closes a
// stream it cannot read). Called with r.mu held.
func (r *Region) writeLock(m *ctl.LockMsg) error {
	if r.stream != nil {
		err := ctl.WriteLock(r.stream, m)
		if err == nil {
			return nil
		}
		r.stream.Close()
		r.stream = nil
	}
	return ctl.WriteLock(r.conn, m)
}

// replyConn is a connection joined to the program's attachment, on which
// one call at a time reads its reply.
type replyConn struct {
	c    *net.UnixConn
	slot int
	buf  []byte
}

// takeReply returns a free reply connection, joining a new one when none
// is free and fewer than ctl.MaxSlots are open; ok is false when the call
// must wait on the first connection instead.
func (r *Region) takeReply(ctx context.Context) (rc *replyConn, ok bool) {
	r.mu.Lock()
	if k := len(r.replyIdle); k > 0 {
		rc = r.replyIdle[k-1]
		r.replyIdle = r.replyIdle[:k-1]
		r.mu.Unlock()
		return rc, true
	}
	slot := -1
	if r.join != "" && !r.closing && r.lost == nil {
		for i, used := range r.replySlots {
			if !used {
				slot = i
				break
			}
		}
	}
	if slot < 0 {
		r.mu.Unlock()
		return nil, false
	}
	r.replySlots[slot] = true
	r.mu.Unlock()
	rc, err := r.joinReply(ctx, slot)
	if err != nil {
		r.mu.Lock()
		r.replySlots[slot] = false
		if !errors.Is(err, errJoinUnreachable) {
			// The daemon refused: it will refuse again.
			r.join = ""
		}
		r.mu.Unlock()
		return nil, false
	}
	return rc, true
}

// errJoinUnreachable marks a join that failed for want of an answer
// (a context that ended, a daemon that is going), not a refusal.
var errJoinUnreachable = errors.New("no answer")

// joinReply opens a connection to the daemon and joins it to the
// program's attachment in slot.
func (r *Region) joinReply(ctx context.Context, slot int) (*replyConn, error) {
	c, err := r.dialJoin(ctx, ctl.Request{Slot: slot})
	if err != nil {
		return nil, err
	}
	return &replyConn{c: c, slot: slot, buf: make([]byte, 64<<10)}, nil
}

// dialJoin opens a connection to the daemon and joins it to the program's
// attachment as req says (a slot, or the lock stream). A refusal is the
// daemon's error; a join that got no answer wraps errJoinUnreachable.
func (r *Region) dialJoin(ctx context.Context, req ctl.Request) (*net.UnixConn, error) {
	c, err := ctl.Dial(r.opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errJoinUnreachable, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	req.Op, req.Version, req.PID, req.Join = ctl.OpJoin, ctl.Version, os.Getpid(), r.join
	var rep ctl.Reply
	if err = ctl.Write(c, req); err == nil {
		_, err = ctl.Read(c, make([]byte, 4096), &rep)
	}
	switch {
	case err != nil:
		c.Close()
		return nil, fmt.Errorf("%w: %w", errJoinUnreachable, err)
	case rep.Error != "":
		c.Close()
		return nil, errors.New(rep.Error)
	case !stop():
		// The context ended meanwhile: its deadline may be set now.
		c.Close()
		return nil, fmt.Errorf("%w: %w", errJoinUnreachable, ctx.Err())
	}
	c.SetDeadline(noDeadline)
	return c, nil
}

// putReply gives rc back after a call; a connection that broke, or whose
// read deadline a cancelled call may have moved, is closed instead.
func (r *Region) putReply(rc *replyConn, reuse bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if reuse && !r.closing && r.lost == nil {
		r.replyIdle = append(r.replyIdle, rc)
		return
	}
	r.replySlots[rc.slot] = false
	rc.c.Close()
}

// closeReplies closes the idle reply connections; busy ones are closed
// when their call gives them back (r.closing is set). Called with r.mu
// held.
func (r *Region) closeReplies() {
	for _, rc := range r.replyIdle {
		r.replySlots[rc.slot] = false
		rc.c.Close()
	}
	r.replyIdle = nil
}

// callLockOn is callLock with the reply read from rc: the request goes on
// the lock stream, naming rc's slot, and the calling goroutine reads
// rc until the reply to it comes (a reply to an earlier call that was
// cancelled may come first, and is skipped).
func (r *Region) callLockOn(ctx context.Context, rc *replyConn, m *ctl.LockMsg, rep *ctl.LockMsg) (err error) {
	r.mu.Lock()
	if err := r.usable(); err != nil {
		r.mu.Unlock()
		r.putReply(rc, true)
		return err
	}
	r.nextID++
	m.ID = r.nextID
	m.Flags |= ctl.LockReplyJoined
	m.Node = uint16(rc.slot)
	r.lockMsgs.Add(1)
	err = r.writeLock(m)
	r.mu.Unlock()
	if err != nil {
		r.putReply(rc, true)
		return fmt.Errorf("dsm: send lock request: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		rc.c.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { rc.c.SetReadDeadline(aLongTimeAgo) })
	broken := false
	defer func() {
		// Once the AfterFunc has started it may move the deadline at any
		// time: that connection is not used again.
		reuse := stop() && !broken
		if reuse {
			rc.c.SetReadDeadline(noDeadline)
		}
		r.putReply(rc, reuse)
	}()
	for {
		n, rerr := rc.c.Read(rc.buf)
		if rerr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				// The read's deadline is the context's, and may pass a
				// moment before the context says so: the caller asks
				// whether the context ended (to withdraw the request).
				<-ctx.Done()
				return ctx.Err()
			}
			broken = true
			r.mu.Lock()
			lost := r.lost
			r.mu.Unlock()
			if lost != nil {
				return lost
			}
			return fmt.Errorf("dsm: lock reply: %w: %w", ErrLost, rerr)
		}
		got, perr := ctl.ParseLockMsg(rc.buf[:n])
		if perr != nil {
			broken = true
			return fmt.Errorf("dsm: lock reply: %w", perr)
		}
		if got.Op != ctl.LockOpReply || got.ID != m.ID {
			continue // the reply to a call that gave up
		}
		if got.Flags&ctl.LockFailed != 0 {
			return daemonError(got.Text)
		}
		if rep != nil {
			*rep = got
		}
		return nil
	}
}
