package ctl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
)

// Lock-manager requests (lock, unlock, barrier, ...), their replies and the
// daemon's unsolicited lock events travel in a small fixed binary encoding
// instead of JSON: they are the hot path of programs that synchronise, and
// decoding JSON cost more than the rest of the daemon's work for them.
// Every other message of the protocol stays JSON. The two are told apart
// by the first byte: a JSON message starts with '{', a binary one with
// LockMagic.
//
// Encoding of a LockMsg (little endian): LockMagic, op, flags, one zero
// byte, count (4 bytes), node (2 bytes), two zero bytes, then id, client,
// req, token, limit and gen (8 bytes each), then the text (the rest of the
// message).

// LockMagic is the first byte of a binary lock message.
const LockMagic = 0xB1

// OpBinary is the Op that Read gives a Request that came as a binary lock
// message; its bytes are in Request.Bin.
const OpBinary = "binary"

const lockHeaderLen = 12 + 6*8

// LockOp says what a LockMsg is.
type LockOp uint8

// The binary lock operations. Program → daemon unless said otherwise.
const (
	LockOpLock       LockOp = iota + 1 // exclusive lock, released by every Unlock
	LockOpLockCached                   // exclusive lock the program keeps until recalled
	LockOpRLock                        // shared lock
	LockOpUnlock                       // release; Token: the last token used (cached holds)
	LockOpCancel                       // withdraw request Req
	LockOpBarrier                      // arrive at barrier Text with Count participants
	LockOpCampaign                     // campaign in election Text
	LockOpResign                       // resign election Text
	LockOpHolding                      // does Client still hold Text? (reply: LockHeld, Token)
	LockOpLeader                       // who leads election Text? (reply: LockLeader, Node, Token)
	LockOpReply                        // daemon → program: the answer to ID; Text is the error, if any
	LockOpRecalled                     // daemon → program, unsolicited: another node wants Client's cached lock
	LockOpLost                         // daemon → program, unsolicited: Client lost its lock (lease, home down)
	// LockOpPrefetch is no lock operation: prefetch hints ride the
	// binary encoding because they are on the program's fast path, and
	// want no answer (ID 0). Text holds the hints (AppendPrefetchHint).
	LockOpPrefetch
	lockOpLimit
)

// Flags of a LockMsg.
const (
	LockHeld   uint8 = 1 << iota // holding: the client still holds the lock
	LockLeader                   // leader: a leader is known
	LockRecall                   // reply to LockOpLockCached: others wait, do not keep it
	LockFailed                   // reply: the request failed, Text says why
	// LockReplyJoined, on a request: answer on the connection the program
	// joined to its attachment in slot Node (OpJoin), where the calling
	// thread waits for it, instead of on this one.
	LockReplyJoined
)

// PrefetchHintLen is the size of one hint in a LockOpPrefetch message:
// the offset and the length in the region (8 bytes each, little endian),
// then 1 if the program will write the bytes, 0 if it will read them.
const PrefetchHintLen = 17

// AppendPrefetchHint appends one hint of a LockOpPrefetch message to dst.
func AppendPrefetchHint(dst []byte, off, size uint64, write bool) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, off)
	dst = binary.LittleEndian.AppendUint64(dst, size)
	if write {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// PrefetchHint is one hint of a LockOpPrefetch message.
type PrefetchHint struct {
	Off, Size uint64
	Write     bool
}

// ParsePrefetchHints appends the hints of a LockOpPrefetch message's Text
// to dst.
func ParsePrefetchHints(text string, dst []PrefetchHint) ([]PrefetchHint, error) {
	if len(text)%PrefetchHintLen != 0 {
		return dst, fmt.Errorf("%w: %d bytes of prefetch hints, not a multiple of %d", ErrBadLockMsg, len(text), PrefetchHintLen)
	}
	for i := 0; i < len(text); i += PrefetchHintLen {
		h := text[i : i+PrefetchHintLen]
		if h[16] > 1 {
			return dst, fmt.Errorf("%w: prefetch intent %d", ErrBadLockMsg, h[16])
		}
		dst = append(dst, PrefetchHint{
			Off:   binary.LittleEndian.Uint64([]byte(h[:8])),
			Size:  binary.LittleEndian.Uint64([]byte(h[8:16])),
			Write: h[16] == 1,
		})
	}
	return dst, nil
}

// LockMsg is a binary lock message. Which fields count depends on Op.
type LockMsg struct {
	Op     LockOp
	Flags  uint8
	Count  uint32 // barrier participants; in a reply to LockOpHolding, the milliseconds the hold may still be believed
	Node   uint16 // leader: the leader's node
	ID     uint64 // request id, echoed by the reply (0: no reply wanted)
	Client uint64 // the program's lock client
	Req    uint64 // the request id of the client
	Token  uint64 // fencing token
	Limit  uint64 // reply to LockOpLockCached: the largest token the program may use by itself
	Gen    uint64 // reply to LockOpBarrier: the generation
	Text   string // the name of the lock, barrier or election; in a reply, the error
}

// AppendBinary appends the encoding of m to dst.
func (m *LockMsg) AppendBinary(dst []byte) []byte {
	dst = append(dst, LockMagic, byte(m.Op), m.Flags, 0)
	dst = binary.LittleEndian.AppendUint32(dst, m.Count)
	dst = binary.LittleEndian.AppendUint16(dst, m.Node)
	dst = append(dst, 0, 0)
	for _, v := range [...]uint64{m.ID, m.Client, m.Req, m.Token, m.Limit, m.Gen} {
		dst = binary.LittleEndian.AppendUint64(dst, v)
	}
	return append(dst, m.Text...)
}

// ErrBadLockMsg reports a binary lock message that does not decode.
var ErrBadLockMsg = errors.New("malformed binary lock message")

// ParseLockMsg decodes a message written by AppendBinary.
func ParseLockMsg(b []byte) (LockMsg, error) {
	if len(b) < lockHeaderLen || b[0] != LockMagic {
		return LockMsg{}, fmt.Errorf("%w: %d bytes", ErrBadLockMsg, len(b))
	}
	m := LockMsg{Op: LockOp(b[1]), Flags: b[2],
		Count: binary.LittleEndian.Uint32(b[4:]), Node: binary.LittleEndian.Uint16(b[8:])}
	if m.Op == 0 || m.Op >= lockOpLimit {
		return LockMsg{}, fmt.Errorf("%w: unknown op %d", ErrBadLockMsg, b[1])
	}
	if len(b)-lockHeaderLen > MaxMessage {
		return LockMsg{}, fmt.Errorf("%w: %d bytes of text", ErrBadLockMsg, len(b)-lockHeaderLen)
	}
	f := b[12:]
	for _, p := range [...]*uint64{&m.ID, &m.Client, &m.Req, &m.Token, &m.Limit, &m.Gen} {
		*p = binary.LittleEndian.Uint64(f)
		f = f[8:]
	}
	m.Text = string(f)
	return m, nil
}

// WriteLock sends m as one message.
func WriteLock(c *net.UnixConn, m *LockMsg) error {
	var buf [128]byte
	b := m.AppendBinary(buf[:0])
	if len(b) > MaxMessage {
		return fmt.Errorf("lock message of %d bytes exceeds %d", len(b), MaxMessage)
	}
	_, err := c.Write(b)
	return err
}
