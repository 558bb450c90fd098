// Package ctl is the control protocol between a node daemon and the programs
// and tools that talk to it over its unix socket.
//
// It is its own package because three parties speak it: the daemon
// (package node), the attach library (package dsm) and the command line
// (dsmnode status / report). The socket is SOCK_SEQPACKET, so every message
// keeps its boundaries and descriptors passed with SCM_RIGHTS arrive with
// the message they belong to. Every message is one JSON object, except the
// lock manager's, which are binary (LockMsg).
package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/dsmrt/dsm/uffd"
)

// Version is the control protocol version; a mismatch is refused.
const Version = 1

// MaxMessage is the largest control message in bytes.
const MaxMessage = 1 << 20

// Ops of the control protocol.
const (
	OpAttach = "attach" // program -> daemon: attach; reply carries the memfd
	OpUffd   = "uffd"   // program -> daemon: here is my registered userfaultfd
	OpAlloc  = "alloc"  // program -> daemon: a named allocation was made
	OpStatus = "status" // tool -> daemon: node status
	OpReport = "report" // tool -> daemon: false-sharing findings
	OpLock   = "lock"   // program -> daemon: lock manager request
	// program -> daemon: make this node's release-consistent writes
	// visible (Region.Release), or see every release finished before
	// (Region.Acquire)
	OpRelease = "release"
	OpAcquire = "acquire"
	// program -> daemon: home the release-consistent pages of [Offset,
	// Offset+Size) in blocks, one per node (dsm.BlockHomes); answered once
	// every daemon knows
	OpHomeBlocks = "homeblocks"
	// program -> daemon, the first message of another connection: it
	// belongs to the attached program whose attach reply gave Join; the
	// replies to the lock requests that name its Slot go on it
	// (LockReplyJoined), and nothing else does; joining a slot again
	// replaces its connection. With Stream, it is instead where the
	// program sends its binary lock messages.
	OpJoin = "join"
)

// MaxSlots bounds the connections a program joins to its attachment.
const MaxSlots = 8

// Request is a message to the daemon.
type Request struct {
	Op      string          `json:"op"`
	Version int             `json:"version,omitempty"`
	ID      uint64          `json:"id,omitempty"`
	PID     int             `json:"pid,omitempty"`
	Name    string          `json:"name,omitempty"`
	Offset  uint64          `json:"offset,omitempty"`
	Size    uint64          `json:"size,omitempty"`
	Fields  []Field         `json:"fields,omitempty"`
	Args    json.RawMessage `json:"args,omitempty"`
	UserMod bool            `json:"user_mode_only,omitempty"`
	// WaitMS bounds how long an attach waits for the cluster to form.
	WaitMS int64 `json:"wait_ms,omitempty"`
	// Join is the attached program's secret, in OpJoin, and Slot the
	// number by which its requests name the joined connection
	// (LockReplyJoined).
	Join string `json:"join,omitempty"`
	Slot int    `json:"slot,omitempty"`
	// Stream, in OpJoin, joins the connection as the program's lock
	// stream instead of a slot: the program sends its binary lock
	// messages on it, and the daemon's event loop reads them.
	Stream bool `json:"stream,omitempty"`
	// Bin is a binary lock message (Op is OpBinary); see LockMsg.
	Bin []byte `json:"-"`
	// Unit, in OpHomeBlocks, is the bytes of the units the blocks are
	// made of (a multiple of the page size; 0: one page).
	Unit uint64 `json:"unit,omitempty"`
}

// Field is one field of a registered struct type, for the analyzer.
type Field struct {
	Name   string `json:"name"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
}

// Geometry describes the shared region.
type Geometry struct {
	Node     int    `json:"node"`
	Nodes    int    `json:"nodes"`
	Base     uint64 `json:"base"`
	Size     uint64 `json:"size"`
	PageSize int    `json:"page_size"`
	// RCSize is the bytes of the region, below the allocator's metadata,
	// kept for release-consistent allocations (see package heaplayout).
	RCSize uint64 `json:"rc_size,omitempty"`
}

// Reply is a message from the daemon.
type Reply struct {
	ID       uint64          `json:"id,omitempty"`
	Error    string          `json:"error,omitempty"`
	Geometry *Geometry       `json:"geometry,omitempty"`
	Body     json.RawMessage `json:"body,omitempty"`
	// Join, in the reply that completes an attach, is the secret with
	// which the program joins more connections to its attachment (OpJoin).
	Join string `json:"join,omitempty"`
	// Bin is a binary lock message (a reply or an event); see LockMsg.
	Bin []byte `json:"-"`
}

// ErrNotDaemon reports a socket that does not speak this protocol.
var ErrNotDaemon = errors.New("not a dsmnode socket")

// Dial connects to the daemon socket at path with a clear error for the
// usual mistakes: no such socket, a socket of another kind, no permission.
func Dial(path string) (*net.UnixConn, error) {
	if path == "" {
		return nil, errors.New("no daemon socket given: set DSM_SOCKET or Options.Socket (dsmnode run sets it for you)")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("no dsmnode socket at %s: %w (start a node with `dsmnode serve` or a cluster with `dsmnode run`)", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("%s is not a socket (%v): %w; point DSM_SOCKET at the socket dsmnode serve prints", path, fi.Mode().Type(), ErrNotDaemon)
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, syscall.EPROTOTYPE) {
			return nil, fmt.Errorf("%s is a unix socket of another kind (stream, not seqpacket): %w", path, ErrNotDaemon)
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("nothing listens on %s (a daemon that died leaves its socket behind): %w", path, err)
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("no permission to connect to %s: %w (run as the daemon's user)", path, err)
		}
		return nil, fmt.Errorf("connect to dsmnode at %s: %w", path, err)
	}
	return c, nil
}

// Write sends v as one message, with descriptors if any.
func Write(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode control message: %w", err)
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("control message of %d bytes exceeds %d", len(b), MaxMessage)
	}
	if len(fds) > 0 {
		return uffd.SendFDs(c, b, fds...)
	}
	_, err = c.Write(b)
	return err
}

// Read receives one message into v and returns any descriptors sent with it.
// A binary lock message read into a *Request or *Reply is left in its Bin.
func Read(c *net.UnixConn, buf []byte, v any) ([]int, error) {
	n, fds, err := uffd.RecvFDs(c, buf, 4)
	if err != nil {
		return fds, err
	}
	if n == 0 {
		closeAll(fds)
		return nil, fmt.Errorf("control connection closed: %w", errEOF)
	}
	if buf[0] == LockMagic {
		switch v := v.(type) {
		case *Request:
			*v = Request{Op: OpBinary, Bin: append([]byte(nil), buf[:n]...)}
			return fds, nil
		case *Reply:
			*v = Reply{Bin: append([]byte(nil), buf[:n]...)}
			return fds, nil
		}
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeAll(fds)
		return nil, fmt.Errorf("malformed control message (%d bytes): %w: %w", n, err, ErrNotDaemon)
	}
	return fds, nil
}

var errEOF = errors.New("EOF")

// IsEOF reports whether err is the peer closing the connection.
func IsEOF(err error) bool { return errors.Is(err, errEOF) }

func closeAll(fds []int) {
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// CallTimeout bounds a Call: a daemon that is stopped (SIGSTOP) or no
// longer accepts must not hang the tool that asked.
const CallTimeout = 30 * time.Second

// Call sends a request and waits up to CallTimeout for its reply on a
// fresh connection.
func Call(path string, req Request, body any) error {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	return CallContext(ctx, path, req, body)
}

// CallContext is Call with the wait bounded by ctx instead.
func CallContext(ctx context.Context, path string, req Request, body any) error {
	c, err := Dial(path)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req.Version = Version
	if err := Write(c, req); err != nil {
		return callError(ctx, "send", req.Op, path, err)
	}
	buf := make([]byte, MaxMessage)
	var rep Reply
	if _, err := Read(c, buf, &rep); err != nil {
		return callError(ctx, "read the reply to", req.Op, path, err)
	}
	if rep.Error != "" {
		return fmt.Errorf("dsmnode at %s: %s", path, rep.Error)
	}
	if body != nil {
		if err := json.Unmarshal(rep.Body, body); err != nil {
			return fmt.Errorf("decode %s reply: %w", req.Op, err)
		}
	}
	return nil
}

// LockArgs is a lock request from a program (ctl.Request.Args).
type LockArgs struct {
	Kind   string `json:"kind"` // lock, rlock, unlock, cancel, barrier, campaign, resign, leader, holding
	Name   string `json:"name"`
	Client uint64 `json:"client"` // the program's handle; the node makes it unique
	Req    uint64 `json:"req"`
	Count  int    `json:"count,omitempty"`
}

// LockReply is the answer to a lock request.
type LockReply struct {
	Token      uint64 `json:"token,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	Held       bool   `json:"held,omitempty"`
	LeaderNode int    `json:"leader_node,omitempty"`
	Leader     bool   `json:"leader,omitempty"`
}

// callError says what failed, and that the daemon did not answer in time
// when that is why.
func callError(ctx context.Context, what, op, path string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("dsmnode at %s did not answer %s in time (is it stopped or overloaded?): %w", path, op, ctx.Err())
	}
	return fmt.Errorf("%s %s at %s: %w", what, op, path, err)
}
