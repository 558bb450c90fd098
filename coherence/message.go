package coherence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/dsmrt/dsm/clocks"
)

// MsgType is the kind of a protocol message.
type MsgType uint8

// The protocol messages. "Home" is the home node of the message's page,
// "requester" the node whose fault started the transaction, "owner" the node
// that holds the page's authoritative copy.
const (
	// MsgRequest (requester -> home) asks for Access to Page. Req is the
	// requester's request id; retransmissions reuse it. Have and
	// HaveVersion say which copy the requester holds.
	MsgRequest MsgType = iota + 1
	// MsgFwdRead (home -> owner) asks the owner to downgrade to Shared and
	// send its copy of Version to Requester. Pipelining, the home sends it
	// to the pending owner, which keeps it until its copy arrives.
	MsgFwdRead
	// MsgFwdWrite (home -> owner) asks the owner to hand its copy and the
	// ownership to Requester, who will hold Version (the owner's version
	// plus one), and to drop its own copy. Pipelining, the home sends it to
	// the pending owner, which keeps it until its copy arrives.
	MsgFwdWrite
	// MsgInval (home -> sharer) asks a node to drop any copy older than
	// Version and to acknowledge.
	MsgInval
	// MsgInvalAck (sharer -> home) acknowledges MsgInval for the
	// transaction (Requester, Req).
	MsgInvalAck
	// MsgData (owner or home -> requester) carries the page: Data/Meta, or
	// Zero for a page that was never written. Writable says the requester
	// gets ownership; SenderDropped says the sender no longer holds a copy.
	MsgData
	// MsgGrant (home -> requester) grants access without data: the
	// requester already holds the page (an upgrade from Shared).
	MsgGrant
	// MsgDropped (old owner -> requester) says the old owner has dropped
	// its copy after sending MsgData, so the requester may write.
	MsgDropped
	// MsgConfirm (requester -> home) says the requester installed what it
	// asked for; the home closes the transaction.
	MsgConfirm
	// MsgDone (home -> requester) acknowledges MsgConfirm.
	MsgDone
	// MsgRelease (home -> old owner) says the ownership transfer that
	// created Version is complete: the old owner may forget the copy it
	// kept for retransmission.
	MsgRelease
	// MsgXferQuery (old owner -> home) asks whether the transfer that
	// creates Version is complete (the home answers with MsgRelease).
	MsgXferQuery

	msgTypeEnd // one past the last valid type
)

var msgTypeNames = [...]string{
	MsgRequest:   "Request",
	MsgFwdRead:   "FwdRead",
	MsgFwdWrite:  "FwdWrite",
	MsgInval:     "Inval",
	MsgInvalAck:  "InvalAck",
	MsgData:      "Data",
	MsgGrant:     "Grant",
	MsgDropped:   "Dropped",
	MsgConfirm:   "Confirm",
	MsgDone:      "Done",
	MsgRelease:   "Release",
	MsgXferQuery: "XferQuery",
}

// String returns the message type's name, for example "FwdRead".
func (t MsgType) String() string {
	if t > 0 && t < msgTypeEnd {
		return msgTypeNames[t]
	}
	return "MsgType(" + strconv.Itoa(int(t)) + ")"
}

// Message is one protocol message between the coherence engines of two
// nodes.
type Message struct {
	Type      MsgType
	From, To  NodeID
	Page      PageID
	Req       uint64        // the requester's request id (the transaction's id, with Requester)
	Requester NodeID        // the node whose request this message serves
	Version   uint64        // the page version the message is about (see the MsgType docs)
	Access    Access        // MsgRequest: the access asked for
	Clock     clocks.Vector // the sender's vector clock when it sent the message
	PageClock clocks.Vector // MsgData, MsgConfirm: the page version's vector clock

	// Have and HaveVersion (MsgRequest) say the requester holds a copy of
	// the page at HaveVersion.
	Have        bool
	HaveVersion uint64

	Writable      bool // MsgData, MsgGrant: the requester gets write access
	SenderDropped bool // MsgData: the sender holds no copy any more

	// NeedData asks the daemon for the page: when it reaches the Output,
	// it reads the node's current copy of Page and gives it to the engine
	// with Engine.Fill, which returns the message to send (the engine keeps
	// a handed-over page's message to send it again after its own copy is
	// gone). The engine emits NeedData only while the page is present and
	// write-protected. A message with NeedData set is never valid on the
	// wire.
	NeedData bool
	Zero     bool   // MsgData: the page is all zeros; Data is empty
	Data     []byte // MsgData: the page as the daemon encoded it (opaque to the engine)
	Meta     []byte // MsgData: the daemon's metadata (opaque to the engine)
}

// String formats the message for logs and traces, without its payload.
func (m *Message) String() string {
	if m == nil {
		return "<nil message>"
	}
	b := make([]byte, 0, 96)
	b = fmt.Appendf(b, "%v %d->%d p%d", m.Type, m.From, m.To, m.Page)
	switch m.Type {
	case MsgRequest:
		b = fmt.Appendf(b, " r%d %v", m.Req, m.Access)
		if m.Have {
			b = fmt.Appendf(b, " have=v%d", m.HaveVersion)
		}
	case MsgRelease, MsgXferQuery:
		b = fmt.Appendf(b, " v%d", m.Version)
	default:
		b = fmt.Appendf(b, " n%d/r%d v%d", m.Requester, m.Req, m.Version)
	}
	if m.Writable {
		b = append(b, " writable"...)
	}
	if m.SenderDropped {
		b = append(b, " dropped"...)
	}
	if m.NeedData {
		b = append(b, " needdata"...)
	}
	if m.Zero {
		b = append(b, " zero"...)
	}
	if len(m.Data) > 0 {
		b = fmt.Appendf(b, " data=%dB", len(m.Data))
	}
	return string(b)
}

// Clone returns a copy of m with clocks of its own; Data and Meta are
// shared. A caller keeps a message past Advance by cloning it (see
// Engine.Ready).
func (m *Message) Clone() *Message {
	c := *m
	c.Clock = m.Clock.Clone()
	c.PageClock = m.PageClock.Clone()
	return &c
}

// The wire format, version 1. Every integer is a minimal uvarint.
//
//	byte    format version (1)
//	byte    type
//	byte    flags (flag* below; unknown bits are an error)
//	byte    access (0 unless MsgRequest)
//	uvarint from, to, requester (< 2^16), page (< 2^32)
//	uvarint req, version, have-version
//	vector  clock, page clock (clocks.Vector.AppendBinary)
//	uvarint len(data), data
//	uvarint len(meta), meta
//
// The encoding is canonical: a buffer UnmarshalMessage accepts re-encodes to
// the same bytes.
const wireVersion = 1

// The flag bits of the wire format.
const (
	flagNeedData = 1 << iota
	flagZero
	flagWritable
	flagSenderDropped
	flagHave

	flagsKnown = flagNeedData | flagZero | flagWritable | flagSenderDropped | flagHave
)

// MaxPayload is the largest Data or Meta UnmarshalMessage accepts (a 2 MiB
// huge page with room to spare). Larger lengths are corrupt input.
const MaxPayload = 4 << 20

// Errors returned (wrapped) by UnmarshalMessage and Engine.Step. Check them
// with errors.Is.
var (
	// ErrMalformed means a buffer is not a message in the wire format:
	// truncated, corrupt, or trailing bytes. The sender is not a DSM node
	// of this version or the transport corrupted the frame.
	ErrMalformed = errors.New("coherence: malformed message")
	// ErrWireVersion means the message was encoded by an incompatible
	// version of the protocol: run the same dsm version on every node.
	ErrWireVersion = errors.New("coherence: unsupported wire format version")
)

// AppendBinary appends the wire encoding of m to dst and returns the
// extended slice.
func (m *Message) AppendBinary(dst []byte) []byte {
	var flags byte
	if m.NeedData {
		flags |= flagNeedData
	}
	if m.Zero {
		flags |= flagZero
	}
	if m.Writable {
		flags |= flagWritable
	}
	if m.SenderDropped {
		flags |= flagSenderDropped
	}
	if m.Have {
		flags |= flagHave
	}
	dst = append(dst, wireVersion, byte(m.Type), flags, byte(m.Access))
	dst = binary.AppendUvarint(dst, uint64(m.From))
	dst = binary.AppendUvarint(dst, uint64(m.To))
	dst = binary.AppendUvarint(dst, uint64(m.Requester))
	dst = binary.AppendUvarint(dst, uint64(m.Page))
	dst = binary.AppendUvarint(dst, m.Req)
	dst = binary.AppendUvarint(dst, m.Version)
	dst = binary.AppendUvarint(dst, m.HaveVersion)
	dst = m.Clock.AppendBinary(dst)
	dst = m.PageClock.AppendBinary(dst)
	dst = binary.AppendUvarint(dst, uint64(len(m.Data)))
	dst = append(dst, m.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(m.Meta)))
	dst = append(dst, m.Meta...)
	return dst
}

// UnmarshalMessage decodes a message written by AppendBinary. The message
// owns its Data and Meta (they do not alias b). It checks the encoding, not
// the protocol: Engine.Step checks that the message makes sense for the
// node. Errors wrap ErrMalformed or ErrWireVersion.
func UnmarshalMessage(b []byte) (*Message, error) { return unmarshal(b, false) }

// UnmarshalMessageView is UnmarshalMessage with the message's Data and Meta
// aliasing b instead of copied out of it: for a daemon that steps the
// message and applies the engine's outputs (Advance) before it reuses b
// (see Engine.Step), which saves copying every page it receives.
func UnmarshalMessageView(b []byte) (*Message, error) { return unmarshal(b, true) }

// A Decoder decodes the messages a daemon receives into one Message it
// reuses, as UnmarshalMessageView does otherwise: Data and Meta alias the
// buffer decoded. A received message then costs one allocation at most,
// its PageClock, which the engine may keep (Engine.Step keeps no reference
// to the message itself, and only reads its Clock). The zero Decoder is
// ready to use; it is not safe for concurrent use.
type Decoder struct {
	m     Message
	clock clocks.Vector
}

// Decode decodes b and returns the message, valid, with its Clock, until
// the next Decode.
func (dec *Decoder) Decode(b []byte) (*Message, error) {
	dec.m = Message{}
	if err := unmarshalInto(&dec.m, b, true, dec); err != nil {
		return nil, err
	}
	if cap(dec.m.Clock) > cap(dec.clock) {
		dec.clock = dec.m.Clock[:0]
	}
	return &dec.m, nil
}

func unmarshal(b []byte, view bool) (*Message, error) {
	m := new(Message)
	if err := unmarshalInto(m, b, view, nil); err != nil {
		return nil, err
	}
	return m, nil
}

// unmarshalInto decodes b into m. With a Decoder, the clock goes into its
// array, and the page clock into one of its own.
func unmarshalInto(m *Message, b []byte, view bool, dec *Decoder) error {
	d := decoder{b: b, view: view}
	if len(b) < 4 {
		return fmt.Errorf("%w: %d bytes, a message has at least 4", ErrMalformed, len(b))
	}
	if b[0] != wireVersion {
		return fmt.Errorf("%w: version %d, this node speaks %d", ErrWireVersion, b[0], wireVersion)
	}
	m.Type, m.Access = MsgType(b[1]), Access(b[3])
	if m.Type == 0 || m.Type >= msgTypeEnd {
		return fmt.Errorf("%w: unknown message type %d", ErrMalformed, b[1])
	}
	flags := b[2]
	if flags&^flagsKnown != 0 {
		return fmt.Errorf("%w: unknown flag bits %#x", ErrMalformed, flags&^flagsKnown)
	}
	m.NeedData = flags&flagNeedData != 0
	m.Zero = flags&flagZero != 0
	m.Writable = flags&flagWritable != 0
	m.SenderDropped = flags&flagSenderDropped != 0
	m.Have = flags&flagHave != 0
	if m.Access > Write {
		return fmt.Errorf("%w: unknown access %d", ErrMalformed, b[3])
	}
	d.off = 4
	m.From = NodeID(d.uint("from", 1<<16-1))
	m.To = NodeID(d.uint("to", 1<<16-1))
	m.Requester = NodeID(d.uint("requester", 1<<16-1))
	m.Page = PageID(d.uint("page", 1<<32-1))
	m.Req = d.uint("request id", 1<<64-1)
	m.Version = d.uint("version", 1<<64-1)
	m.HaveVersion = d.uint("have-version", 1<<64-1)
	if dec != nil {
		m.Clock = d.vector("clock", dec.clock[:0])
		m.PageClock = d.vector("page clock", nil)
	} else {
		// The two clocks share one allocation, as do Data and Meta.
		var back clocks.Vector
		if n, k := binary.Uvarint(d.b[d.off:]); k > 0 && n <= 1<<10 {
			back = make(clocks.Vector, 0, 2*n)
		}
		m.Clock = d.vector("clock", back)
		if c := len(m.Clock); c <= cap(back) {
			back = back[c:c]
		} else {
			back = nil
		}
		m.PageClock = d.vector("page clock", back)
	}
	m.Data, m.Meta = d.twoBytes("data", "data length", "meta", "meta length")
	if d.err != nil {
		return d.err
	}
	if d.off != len(b) {
		return fmt.Errorf("%w: %d trailing bytes after a %v message", ErrMalformed, len(b)-d.off, m.Type)
	}
	return nil
}

// decoder reads the fields of a message, keeping the first error.
type decoder struct {
	b    []byte
	off  int
	err  error
	view bool // byte fields alias b (UnmarshalMessageView)
}

func (d *decoder) uint(field string, limit uint64) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b[d.off:])
	switch {
	case n == 0:
		d.err = fmt.Errorf("%w: truncated in field %s at byte %d", ErrMalformed, field, d.off)
	case n < 0:
		d.err = fmt.Errorf("%w: field %s at byte %d overflows 64 bits", ErrMalformed, field, d.off)
	case n > 1 && d.b[d.off+n-1] == 0:
		d.err = fmt.Errorf("%w: field %s at byte %d is not minimally encoded", ErrMalformed, field, d.off)
	case x > limit:
		d.err = fmt.Errorf("%w: field %s is %d, the limit is %d", ErrMalformed, field, x, limit)
	}
	if d.err != nil {
		return 0
	}
	d.off += n
	return x
}

func (d *decoder) vector(field string, into clocks.Vector) clocks.Vector {
	if d.err != nil {
		return nil
	}
	v, n, err := clocks.AppendDecodeVector(into, d.b[d.off:])
	if err != nil {
		d.err = fmt.Errorf("%w: field %s at byte %d: %w", ErrMalformed, field, d.off, err)
		return nil
	}
	d.off += n
	if len(v) == 0 {
		return nil
	}
	return v
}

// twoBytes reads two length-prefixed byte fields into one allocation.
// The length fields are named by constants: a name made with + would cost
// an allocation per message decoded.
func (d *decoder) twoBytes(f1, f1len, f2, f2len string) ([]byte, []byte) {
	n1 := d.uint(f1len, MaxPayload)
	if d.err != nil {
		return nil, nil
	}
	if n1 > uint64(len(d.b)-d.off) {
		d.err = fmt.Errorf("%w: field %s needs %d bytes, %d left", ErrMalformed, f1, n1, len(d.b)-d.off)
		return nil, nil
	}
	at1 := d.off
	d.off += int(n1)
	n2 := d.uint(f2len, MaxPayload)
	if d.err != nil {
		return nil, nil
	}
	if n2 > uint64(len(d.b)-d.off) {
		d.err = fmt.Errorf("%w: field %s needs %d bytes, %d left", ErrMalformed, f2, n2, len(d.b)-d.off)
		return nil, nil
	}
	if n1+n2 == 0 {
		return nil, nil
	}
	if d.view {
		var a, b []byte
		if n1 > 0 {
			a = d.b[at1 : at1+int(n1) : at1+int(n1)]
		}
		if n2 > 0 {
			b = d.b[d.off : d.off+int(n2) : d.off+int(n2)]
		}
		d.off += int(n2)
		return a, b
	}
	out := make([]byte, n1+n2)
	copy(out, d.b[at1:at1+int(n1)])
	copy(out[n1:], d.b[d.off:d.off+int(n2)])
	d.off += int(n2)
	var a, b []byte
	if n1 > 0 {
		a = out[:n1:n1]
	}
	if n2 > 0 {
		b = out[n1:]
	}
	return a, b
}
