package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/internal/ctl"
	"github.com/dsmrt/dsm/pager"
	"github.com/dsmrt/dsm/uffd"
)

// DefaultAttachWait is how long an attach waits for the cluster to form when
// the program gives no deadline.
const DefaultAttachWait = 10 * time.Second

// prog is an attached program.
type prog struct {
	*pager.Prog // under n.mu: what the pager knows of it (Gone: detached, or its memory is gone)
	id          int
	pid         int
	u           *uffd.FD
	conn        *net.UnixConn
	// join is the secret with which the program joins more connections
	// (OpJoin); slots are those connections by the number the program
	// gave each, under n.mu. Its requests still come on conn, in order;
	// the reply to one marked LockReplyJoined goes on the slot it names,
	// where the program's calling thread waits for it, so that no reader
	// goroutine has to hand it over.
	join  string
	slots [ctl.MaxSlots]*net.UnixConn
	// stream is the connection the program sends its binary lock
	// messages on, read by the loop (readStream), and streamFD its
	// descriptor; nil until the program joins one. Under n.mu.
	stream     *net.UnixConn
	streamFD   int
	streamDone chan struct{} // closed when the stream is
}

// replyConn returns the connection on which to answer request m of p:
// the joined one m names, or c. Called with n.mu held.
func (p *prog) replyConn(c *net.UnixConn, m *ctl.LockMsg) *net.UnixConn {
	if m.Flags&ctl.LockReplyJoined == 0 || int(m.Node) >= len(p.slots) || p.slots[m.Node] == nil {
		return c
	}
	return p.slots[m.Node]
}

func (p *prog) close() {
	if p.u != nil {
		p.u.Close()
	}
}

// Limits of the control socket, against a local process that opens
// connections and says nothing.
const (
	// maxControlConns bounds the control connections served at once
	// (attached programs included); more are answered with an error.
	maxControlConns = 1024
	// firstRequestWait is how long a new connection may take to send its
	// first request.
	firstRequestWait = 10 * time.Second
	// maxRefusing bounds the connections told at once that there are too
	// many.
	maxRefusing = 64
	// acceptBackoffMax bounds the pause after a failed accept.
	acceptBackoffMax = time.Second
)

// acceptLoop accepts control connections until the node stops. A failed
// accept (no descriptor left: EMFILE, ENFILE; no memory) is retried after
// a pause that doubles while it keeps failing, logged once per burst: the
// socket must answer again once the descriptors are back.
func (n *Node) acceptLoop(ctx context.Context) {
	var (
		backoff  time.Duration
		active   atomic.Int64 // connections served
		refusing atomic.Int64 // connections being told there are too many
	)
	for {
		c, err := n.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if backoff == 0 {
				n.log.Error("accepting control connections failed; retrying", "err", err)
				backoff = 5 * time.Millisecond
			} else {
				backoff = min(2*backoff, acceptBackoffMax)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		if backoff != 0 {
			n.log.Info("accepting control connections again")
			backoff = 0
		}
		if active.Add(1) > maxControlConns {
			active.Add(-1)
			// Said on a goroutine, so that the loop goes on accepting,
			// but by a bounded number of them: past that, closed unsaid.
			if refusing.Add(1) > maxRefusing {
				refusing.Add(-1)
				c.Close()
				continue
			}
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				defer refusing.Add(-1)
				defer c.Close()
				n.refuse(c, fmt.Errorf("node %d serves %d control connections already: close some and try again", n.cfg.ID, maxControlConns))
			}()
			continue
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer active.Add(-1)
			defer c.Close()
			if err := n.access.check(c); err != nil {
				n.log.Warn("control connection refused", "err", err)
				n.refuse(c, err)
				return
			}
			n.serveConn(ctx, c)
		}()
	}
}

// refuse answers the first request of a connection that may not use the
// node with err. It reads the request first: closing a connection whose
// request is unread would reset it, and the client would see that instead
// of the reason.
func (n *Node) refuse(c *net.UnixConn, err error) {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64<<10)
	var req ctl.Request
	fds, rerr := ctl.Read(c, buf, &req)
	closeFDs(fds)
	if rerr == nil {
		reply(c, req.ID, nil, err)
	}
}

func reply(c *net.UnixConn, id uint64, body any, err error) error {
	r := ctl.Reply{ID: id}
	if err != nil {
		r.Error = err.Error()
	} else if body != nil {
		b, mErr := json.Marshal(body)
		if mErr != nil {
			r.Error = mErr.Error()
		}
		r.Body = b
	}
	return ctl.Write(c, r)
}

func (n *Node) serveConn(ctx context.Context, c *net.UnixConn) {
	buf := make([]byte, 64<<10)
	var req ctl.Request
	c.SetReadDeadline(time.Now().Add(firstRequestWait))
	fds, err := ctl.Read(c, buf, &req)
	closeFDs(fds)
	if err != nil {
		if !ctl.IsEOF(err) && !errors.Is(err, io.EOF) {
			n.log.Warn("bad first control message", "err", err)
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	if req.Version != ctl.Version {
		reply(c, req.ID, nil, fmt.Errorf("control protocol version %d, this daemon speaks %d: use the dsm library and dsmnode of one release", req.Version, ctl.Version))
		return
	}
	switch req.Op {
	case ctl.OpStatus:
		var st Status
		err := n.do(ctx, func() { st = n.status() })
		reply(c, req.ID, st, err)
	case ctl.OpReport:
		rep, err := n.report(ctx, req)
		reply(c, req.ID, rep, err)
	case ctl.OpAttach:
		n.serveProgram(ctx, c, req)
	case ctl.OpJoin:
		n.serveJoined(ctx, c, req)
	default:
		reply(c, req.ID, nil, fmt.Errorf("unknown op %q as first message", req.Op))
	}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// serveProgram runs the attach handshake, then serves the program's
// requests until it disconnects.
func (n *Node) serveProgram(ctx context.Context, c *net.UnixConn, req ctl.Request) {
	// A program is only useful once every node is there: wait for the
	// cluster, and tell the program which peers are missing if it is not.
	wait := time.Duration(req.WaitMS) * time.Millisecond
	if wait <= 0 {
		wait = DefaultAttachWait
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	err := n.tr.WaitPeers(wctx)
	cancel()
	if err != nil {
		reply(c, req.ID, nil, fmt.Errorf("node %d cannot reach its cluster: %w", n.cfg.ID, err))
		return
	}
	geo := &ctl.Geometry{Node: n.cfg.ID, Nodes: n.cfg.Nodes, Base: n.cfg.Base, Size: n.cfg.Size, PageSize: n.ps, RCSize: n.cfg.RCSize}
	if err := ctl.Write(c, ctl.Reply{ID: req.ID, Geometry: geo}, n.memfd); err != nil {
		n.log.Warn("attach: send memfd", "err", err)
		return
	}
	buf := make([]byte, 64<<10)
	var ureq ctl.Request
	fds, err := ctl.Read(c, buf, &ureq)
	if err != nil {
		if !ctl.IsEOF(err) {
			n.log.Warn("attach: no userfaultfd from program", "pid", req.PID, "err", err)
		}
		closeFDs(fds)
		return
	}
	if ureq.Op != ctl.OpUffd || len(fds) != 1 {
		closeFDs(fds)
		reply(c, ureq.ID, nil, fmt.Errorf("attach: expected one userfaultfd with op %q, got op %q with %d descriptors", ctl.OpUffd, ureq.Op, len(fds)))
		return
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		reply(c, ureq.ID, nil, fmt.Errorf("attach: %w", err))
		return
	}
	var secret [16]byte
	rand.Read(secret[:])
	p := &prog{pid: req.PID, u: uffd.NewFD(fds[0]), conn: c, Prog: &pager.Prog{},
		join: hex.EncodeToString(secret[:])}
	var attachErr error
	err = n.do(ctx, func() {
		// Write-protect the whole range in the new program: pages that are
		// Shared here must not be writable there. Writes to Exclusive pages
		// fault once and are released.
		if err := p.u.WriteProtect(uintptr(n.cfg.Base), uintptr(n.cfg.Size), true, false); err != nil {
			attachErr = fmt.Errorf("write-protect the region in the program: %w", err)
			return
		}
		n.nextID++
		p.id = n.nextID
		if attachErr = n.watch(p.u.Fd(), int32(p.id)); attachErr != nil {
			return
		}
		n.progs[p.id] = p
		n.joins[p.join] = p
		p.Prog = n.pg.Attach(p.id, uffdProgram{u: p.u, base: uintptr(n.cfg.Base), ps: n.ps})
		n.stats.attaches++
	})
	if err == nil {
		err = attachErr
	}
	if err != nil {
		p.close()
		reply(c, ureq.ID, nil, err)
		return
	}
	n.log.Info("program attached", "pid", p.pid, "user_mode_only", ureq.UserMod)
	if err := ctl.Write(c, ctl.Reply{ID: ureq.ID, Join: p.join}); err == nil {
		n.serveRequests(ctx, c, p, buf)
	}
	// Detach: the loop stops watching the program's userfaultfd and
	// forgets it. Once the node has stopped, Run closes it.
	n.do(context.Background(), func() {
		n.unwatch(p.u.Fd())
		n.pg.Detach(p.Prog)
		delete(n.progs, p.id)
		delete(n.joins, p.join)
		for _, jc := range p.slots {
			if jc != nil {
				jc.Close() // its goroutine ends at its read
			}
		}
		n.closeStream(p)
		n.releaseClientLocks(p)
		p.close()
	})
	n.log.Info("program detached", "pid", p.pid)
}

func (n *Node) serveRequests(ctx context.Context, c *net.UnixConn, p *prog, buf []byte) {
	for {
		var r ctl.Request
		fds, err := ctl.Read(c, buf, &r)
		closeFDs(fds)
		if err != nil {
			return
		}
		switch r.Op {
		case ctl.OpAlloc:
			var vars []analyzer.Var
			if len(r.Fields) > 0 {
				for _, f := range r.Fields {
					vars = append(vars, analyzer.Var{Name: f.Name, Offset: f.Offset, Size: f.Size})
				}
			} else {
				vars = []analyzer.Var{{Name: r.Name, Offset: r.Offset, Size: r.Size}}
			}
			var aerr error
			err = n.do(ctx, func() { aerr = n.addVars(vars) })
			if err == nil {
				err = aerr
			}
			reply(c, r.ID, nil, err)
		case ctl.OpLock:
			n.lockRequest(ctx, c, p, r)
		case ctl.OpBinary:
			n.lockBinary(ctx, c, p, r.Bin)
		case ctl.OpRelease, ctl.OpAcquire:
			reply(c, r.ID, nil, n.rcRequest(ctx, r.Op == ctl.OpAcquire))
		case ctl.OpHomeBlocks:
			reply(c, r.ID, nil, n.homeBlocksRequest(ctx, r.Offset, r.Size, r.Unit))
		case ctl.OpStatus:
			var st Status
			err := n.do(ctx, func() { st = n.status() })
			reply(c, r.ID, st, err)
		case ctl.OpReport:
			rep, err := n.report(ctx, r)
			reply(c, r.ID, rep, err)
		default:
			reply(c, r.ID, nil, fmt.Errorf("unknown op %q", r.Op))
		}
	}
}

// serveJoined serves a connection that an attached program joined to its
// attachment (OpJoin) in a slot: the daemon only writes replies on it,
// and reads it to know when it closes. The program proves it is the
// attached one twice: with the secret its attach reply carried, and by
// being the same process (SO_PEERCRED). Closing a joined connection does
// not detach the program.
func (n *Node) serveJoined(ctx context.Context, c *net.UnixConn, req ctl.Request) {
	var p *prog
	n.do(ctx, func() {
		if q := n.joins[req.Join]; q != nil && req.Join != "" {
			p = q
		}
	})
	if p == nil {
		reply(c, req.ID, nil, errors.New("join: no attached program has that secret (attach first, on the same daemon)"))
		return
	}
	pid, err1 := peerPID(c)
	mainPID, err2 := peerPID(p.conn)
	if err := errors.Join(err1, err2); err != nil || pid != mainPID {
		reply(c, req.ID, nil, fmt.Errorf("join: only the attached process may join it (pid %d, attached %d): %w", pid, mainPID, err))
		return
	}
	if req.Stream {
		n.joinStream(ctx, c, p, req)
		return
	}
	if req.Slot < 0 || req.Slot >= len(p.slots) {
		reply(c, req.ID, nil, fmt.Errorf("join: slot %d out of range [0, %d)", req.Slot, len(p.slots)))
		return
	}
	var joinErr error
	n.do(ctx, func() {
		if n.progs[p.id] != p {
			joinErr = errors.New("join: the program detached")
			return
		}
		// A slot joined again replaces its connection: the program closed
		// the old one (after a call that gave up), and this daemon may not
		// have seen it yet.
		if old := p.slots[req.Slot]; old != nil {
			old.Close()
		}
		p.slots[req.Slot] = c
	})
	if joinErr != nil {
		reply(c, req.ID, nil, joinErr)
		return
	}
	if err := reply(c, req.ID, nil, nil); err == nil {
		// Nothing comes on it: a read ends when the program closes it.
		var b [1]byte
		c.Read(b[:])
	}
	n.do(context.Background(), func() {
		if p.slots[req.Slot] == c {
			p.slots[req.Slot] = nil
		}
	})
	c.Close()
}

// joinStream makes c the lock stream of program p: once the program has
// the answer, the loop reads c (readStream) and no goroutine does. A
// stream joined again replaces the first.
func (n *Node) joinStream(ctx context.Context, c *net.UnixConn, p *prog, req ctl.Request) {
	fd := -1
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(f uintptr) { fd = int(f) })
	}
	if fd < 0 {
		reply(c, req.ID, nil, errors.New("join: the connection has no descriptor"))
		c.Close()
		return
	}
	var joinErr error
	done := make(chan struct{})
	err := n.do(ctx, func() {
		if n.progs[p.id] != p {
			joinErr = errors.New("join: the program detached")
			return
		}
		n.closeStream(p)
		if joinErr = n.watch(fd, streamTag(p.id)); joinErr != nil {
			return
		}
		p.stream, p.streamFD, p.streamDone = c, fd, done
	})
	if err == nil {
		err = joinErr
	}
	if err != nil {
		reply(c, req.ID, nil, err)
		c.Close()
		return
	}
	// The program sends nothing on it before this answer. The connection
	// stays open (and counted) until the loop or the detach closes it.
	reply(c, req.ID, nil, nil)
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// closeStream stops reading program p's lock stream and closes it. Called
// with n.mu held.
func (n *Node) closeStream(p *prog) {
	if p.stream == nil {
		return
	}
	n.unwatch(p.streamFD)
	p.stream.Close()
	close(p.streamDone)
	p.stream, p.streamFD, p.streamDone = nil, -1, nil
}

// peerPID returns the process at the other end of c (SO_PEERCRED).
func peerPID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// addVars records named allocations for the analyzer. The same name at the
// same place again (another program of the node, or a re-run) is fine; the
// same name elsewhere is an error the program should hear about.
func (n *Node) addVars(vs []analyzer.Var) error {
	var add []analyzer.Var
	for _, v := range vs {
		if v.Offset+v.Size > n.cfg.Size {
			return fmt.Errorf("allocation %q [%d,+%d) lies outside the region of %d bytes", v.Name, v.Offset, v.Size, n.cfg.Size)
		}
		if old, ok := n.vars[v.Name]; ok {
			if old != v {
				return fmt.Errorf("allocation %q at offset %d size %d, but the node has it at offset %d size %d: every program must allocate in the same order", v.Name, v.Offset, v.Size, old.Offset, old.Size)
			}
			continue
		}
		n.vars[v.Name] = v
		add = append(add, v)
	}
	n.an.AddVars(add...)
	return nil
}

// ReportArgs are the arguments of a report request.
type ReportArgs struct {
	// Plots asks for the analyzer's pictures, as PNG bytes in the reply.
	Plots bool `json:"plots,omitempty"`
	// Out was a directory the daemon wrote the pictures into. A daemon,
	// often root, must not write files where a client names: the client
	// asks for Plots and writes them itself (WritePlots). Out is refused.
	Out string `json:"out,omitempty"`
}

// ReportReply is the analyzer's report and, when asked, its pictures.
type ReportReply struct {
	analyzer.Report
	Plots []analyzer.Plot `json:"plots,omitempty"`
}

// WritePlots writes the pictures of a report into dir, creating it if
// needed, and returns the paths written. The client calls it: the files
// belong to whoever asked.
func (r ReportReply) WritePlots(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var paths []string
	for _, p := range r.Plots {
		if p.Name != filepath.Base(p.Name) || !strings.HasSuffix(p.Name, ".png") {
			return paths, fmt.Errorf("report: a plot named %q: expected a PNG file name", p.Name)
		}
		path := filepath.Join(dir, p.Name)
		if err := os.WriteFile(path, p.PNG, 0o644); err != nil {
			return paths, fmt.Errorf("write %s: %w", path, err)
		}
		paths = append(paths, path)
	}
	return paths, nil
}

func (n *Node) report(ctx context.Context, r ctl.Request) (ReportReply, error) {
	var a ReportArgs
	if len(r.Args) > 0 {
		if err := json.Unmarshal(r.Args, &a); err != nil {
			return ReportReply{}, fmt.Errorf("bad report request: %w", err)
		}
	}
	if a.Out != "" {
		return ReportReply{}, fmt.Errorf("the daemon writes no files for a client (asked for %s): use a dsmnode and dsm of this release, whose report --out writes the pictures itself", a.Out)
	}
	var rep ReportReply
	err := n.do(ctx, func() { rep.Report = n.an.Report() })
	if err != nil || !a.Plots {
		return rep, err
	}
	// The analyzer has its own lock: draw outside the node's.
	rep.Plots, err = n.an.Plots()
	return rep, err
}
