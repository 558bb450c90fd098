package rc

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dsmrt/dsm/clocks"
)

// Limits on what a message may carry, so that a corrupt or hostile message
// cannot make a decoder allocate without bound (messages arrive
// authenticated, but a bug in a peer must not take this node down).
const (
	maxNodes   = 1 << 12
	maxData    = 1 << 16 // a page
	maxRuns    = 1 << 15
	maxNotices = 1 << 16
	maxPages   = 1 << 20
)

// ErrMalformed reports a message or payload that does not decode.
var ErrMalformed = errors.New("rc: malformed message")

// Marshal appends the wire form of m to b.
func (m *Message) Marshal(b []byte) []byte {
	b = append(b, byte(m.Kind), m.Flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(m.From))
	b = binary.LittleEndian.AppendUint16(b, uint16(m.To))
	b = binary.LittleEndian.AppendUint32(b, uint32(m.Page))
	b = binary.LittleEndian.AppendUint64(b, m.Seq)
	b = binary.LittleEndian.AppendUint64(b, m.Interval)
	b = binary.LittleEndian.AppendUint64(b, m.Upto)
	b = appendClock(b, m.Clock)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Data)))
	b = append(b, m.Data...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Runs)))
	for _, r := range m.Runs {
		b = binary.LittleEndian.AppendUint32(b, r.Off)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Data)))
		b = append(b, r.Data...)
	}
	return appendNotices(b, m.Notices)
}

func appendNotices(b []byte, ns []Notice) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ns)))
	for _, n := range ns {
		b = binary.LittleEndian.AppendUint16(b, uint16(n.Node))
		b = binary.LittleEndian.AppendUint64(b, n.Interval)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(n.Pages)))
		for _, p := range n.Pages {
			b = binary.LittleEndian.AppendUint32(b, uint32(p))
		}
	}
	return b
}

// size is the length of m's wire form (Marshal), without building it.
func (m *Message) size() int {
	n := 1 + 1 + 2 + 2 + 4 + 8 + 8 + 8 + 2 + 8*len(m.Clock) + 4 + len(m.Data) + 4 + 4
	for _, r := range m.Runs {
		n += 8 + len(r.Data)
	}
	for _, x := range m.Notices {
		n += 2 + 8 + 4 + 4*len(x.Pages)
	}
	return n
}

func appendClock(b []byte, c clocks.Vector) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(c)))
	for _, x := range c {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

// reader decodes little-endian fields, remembering the first shortfall.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("%w: %d bytes wanted, %d left", ErrMalformed, n, len(r.b))
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// count reads a count and checks it against a limit and against what is
// left (each item takes at least min bytes).
func (r *reader) count(what string, limit, min int) int {
	n := int(r.u32())
	if r.err == nil && (n > limit || n*min > len(r.b)) {
		r.err = fmt.Errorf("%w: %d %s", ErrMalformed, n, what)
		return 0
	}
	return n
}

func (r *reader) clock() clocks.Vector {
	n := int(r.u16())
	if r.err == nil && (n > maxNodes || 8*n > len(r.b)) {
		r.err = fmt.Errorf("%w: a clock of %d nodes", ErrMalformed, n)
		return nil
	}
	if n == 0 {
		return nil
	}
	c := make(clocks.Vector, n)
	for i := range c {
		c[i] = r.u64()
	}
	return c
}

func (r *reader) notices() []Notice {
	var out []Notice
	for range r.count("notices", maxNotices, 14) {
		n := Notice{Node: NodeID(r.u16()), Interval: r.u64()}
		for range r.count("pages", maxPages, 4) {
			n.Pages = append(n.Pages, PageID(r.u32()))
		}
		if r.err != nil {
			break
		}
		out = append(out, n)
	}
	return out
}

// UnmarshalMessage decodes a message. The message's byte slices are fresh
// copies: b may be reused.
func UnmarshalMessage(b []byte) (*Message, error) {
	r := &reader{b: b}
	k := r.take(1)
	if r.err != nil {
		return nil, r.err
	}
	m := &Message{Kind: Kind(k[0])}
	if f := r.take(1); r.err == nil {
		m.Flags = f[0]
	}
	m.From, m.To = NodeID(r.u16()), NodeID(r.u16())
	m.Page = PageID(r.u32())
	m.Seq, m.Interval, m.Upto = r.u64(), r.u64(), r.u64()
	m.Clock = r.clock()
	if n := r.count("data bytes", maxData, 1); n > 0 {
		m.Data = append([]byte(nil), r.take(n)...)
	}
	runs := r.count("runs", maxRuns, 8)
	for range runs {
		off := r.u32()
		l := int(r.u32())
		if r.err == nil && l > maxData {
			r.err = fmt.Errorf("%w: a run of %d bytes", ErrMalformed, l)
		}
		d := r.take(l)
		if r.err != nil {
			break
		}
		m.Runs = append(m.Runs, Run{Off: off, Data: append([]byte(nil), d...)})
	}
	m.Notices = r.notices()
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the message", ErrMalformed, len(r.b))
	}
	if m.Kind < MsgFetch || m.Kind > MsgNotices {
		return nil, fmt.Errorf("%w: kind %d", ErrMalformed, m.Kind)
	}
	if m.Flags&^FlagTruncated != 0 {
		return nil, fmt.Errorf("%w: flags %#x", ErrMalformed, m.Flags)
	}
	return m, nil
}

// MarshalPayload returns the wire form of a payload (its clock, then its
// notices), what a lock or a barrier carries.
func (p Payload) MarshalPayload() []byte {
	b := appendClock(nil, p.Clock)
	if len(p.Notices) == 0 {
		return b
	}
	return appendNotices(b, p.Notices)
}

// UnmarshalPayload decodes a payload; empty bytes are the empty payload (a
// lock never released with one).
func UnmarshalPayload(b []byte) (Payload, error) {
	if len(b) == 0 {
		return Payload{}, nil
	}
	r := &reader{b: b}
	p := Payload{Clock: r.clock()}
	if r.err == nil && len(r.b) > 0 {
		p.Notices = r.notices()
	}
	if r.err != nil {
		return Payload{}, r.err
	}
	if len(r.b) != 0 {
		return Payload{}, fmt.Errorf("%w: %d bytes after the payload", ErrMalformed, len(r.b))
	}
	return p, nil
}
