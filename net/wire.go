package net

import (
	"encoding/binary"
	"fmt"
)

// ProtocolVersion is the version byte of every datagram and frame this
// package sends. A receiver rejects other versions. Version 2 added the
// ephemeral key to the hello and changed how session keys are derived;
// version 4 added batched messages (msgBatch), which a node of version 3
// would drop as malformed: a mixed cluster is refused at the handshake
// instead of losing messages.
const ProtocolVersion = 4

// Datagram header: version | kind | from | to | nonce[12].
const (
	headerLen  = 18
	nonceOff   = 6
	tagLen     = 16
	dgOverhead = headerLen + tagLen
)

// Datagram kinds.
const (
	kindHello   = 1 // sealed with the hello key and a random nonce
	kindSession = 2 // sealed with the session key; nonce = session id | counter
)

// Frames.
const frameHeaderLen = 6 // version | type | length u32

type frameType uint8

const (
	frameHello     frameType = 1 // hello body
	frameKCP       frameType = 2 // KCP segments
	framePing      frameType = 3 // u64 sender timestamp
	framePong      frameType = 4 // the ping's timestamp, echoed
	frameBye       frameType = 5 // empty: the sender is closing
	frameFECData   frameType = 6 // fec header + a data shard (itself frames)
	frameFECParity frameType = 7 // fec header + a parity shard
)

func (t frameType) String() string {
	switch t {
	case frameHello:
		return "hello"
	case frameKCP:
		return "kcp"
	case framePing:
		return "ping"
	case framePong:
		return "pong"
	case frameBye:
		return "bye"
	case frameFECData:
		return "fec-data"
	case frameFECParity:
		return "fec-parity"
	}
	return fmt.Sprintf("frame(%d)", uint8(t))
}

// frame is one decoded frame; body aliases the input.
type frame struct {
	typ  frameType
	body []byte
}

// appendFrame appends a frame with the given body.
func appendFrame(dst []byte, typ frameType, body []byte) []byte {
	dst = appendFrameHeader(dst, typ, len(body))
	return append(dst, body...)
}

func appendFrameHeader(dst []byte, typ frameType, n int) []byte {
	return append(dst, ProtocolVersion, byte(typ), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func putFrameHeader(b []byte, typ frameType, n int) {
	b[0] = ProtocolVersion
	b[1] = byte(typ)
	binary.BigEndian.PutUint32(b[2:], uint32(n))
}

// decodeFrame decodes the frame at the start of b and returns it and the
// bytes after it. It never panics; malformed input yields an error wrapping
// ErrMalformed.
func decodeFrame(b []byte) (frame, []byte, error) {
	if len(b) < frameHeaderLen {
		return frame{}, nil, fmt.Errorf("%w: frame header needs %d bytes, got %d", ErrMalformed, frameHeaderLen, len(b))
	}
	if b[0] != ProtocolVersion {
		return frame{}, nil, fmt.Errorf("%w: frame version %d, this node speaks version %d (run the same release on every node)", ErrMalformed, b[0], ProtocolVersion)
	}
	typ := frameType(b[1])
	if typ < frameHello || typ > frameFECParity {
		return frame{}, nil, fmt.Errorf("%w: unknown frame type %d", ErrMalformed, b[1])
	}
	n := binary.BigEndian.Uint32(b[2:])
	if uint64(n) > uint64(len(b)-frameHeaderLen) {
		return frame{}, nil, fmt.Errorf("%w: %v frame of %d bytes truncated to %d", ErrMalformed, typ, n, len(b)-frameHeaderLen)
	}
	end := frameHeaderLen + int(n)
	return frame{typ: typ, body: b[frameHeaderLen:end:end]}, b[end:], nil
}

// decodeFrames decodes every frame in b.
func decodeFrames(b []byte, fn func(frame) error) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: empty datagram payload", ErrMalformed)
	}
	for len(b) > 0 {
		f, rest, err := decodeFrame(b)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
		b = rest
	}
	return nil
}

// dgHeader is the clear-text, authenticated start of every datagram.
type dgHeader struct {
	kind     uint8
	from, to NodeID
	nonce    [12]byte
}

func (h *dgHeader) put(b []byte) {
	b[0] = ProtocolVersion
	b[1] = h.kind
	binary.BigEndian.PutUint16(b[2:], h.from)
	binary.BigEndian.PutUint16(b[4:], h.to)
	copy(b[nonceOff:headerLen], h.nonce[:])
}

// sessionID and counter of a session datagram's nonce.
func (h *dgHeader) session() (sid uint32, ctr uint64) {
	return binary.BigEndian.Uint32(h.nonce[:4]), binary.BigEndian.Uint64(h.nonce[4:])
}

func decodeHeader(b []byte) (dgHeader, error) {
	var h dgHeader
	if len(b) < dgOverhead {
		return h, fmt.Errorf("%w: datagram of %d bytes is shorter than the %d-byte header and tag", ErrMalformed, len(b), dgOverhead)
	}
	if b[0] != ProtocolVersion {
		return h, fmt.Errorf("%w: datagram version %d, this node speaks version %d (run the same release on every node)", ErrMalformed, b[0], ProtocolVersion)
	}
	h.kind = b[1]
	if h.kind != kindHello && h.kind != kindSession {
		return h, fmt.Errorf("%w: unknown datagram kind %d", ErrMalformed, b[1])
	}
	h.from = binary.BigEndian.Uint16(b[2:])
	h.to = binary.BigEndian.Uint16(b[4:])
	copy(h.nonce[:], b[nonceOff:headerLen])
	return h, nil
}

// hello is the handshake frame's body.
type hello struct {
	geometry Geometry
	nonce    [16]byte // sender's session nonce (of its offer, or of the session it is up in)
	pub      [32]byte // sender's ephemeral X25519 public key, of the same
	echo     [16]byte // receiver's session nonce the sender answers
	flags    uint8
}

const (
	helloLen       = 2 + 4 + 8 + 8 + 8 + 16 + 32 + 16 + 1
	helloEchoValid = 1 << 0 // echo holds the receiver's nonce
	// helloUp: the sender is up in the session of nonce and echo.
	helloUp = 1 << 1
	// helloLive: the sender is up in another session and offers nonce
	// and pub for a new one (a challenge to a hello it could not trust).
	helloLive = 1 << 2
)

func (m *hello) append(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, m.geometry.Nodes)
	dst = binary.BigEndian.AppendUint32(dst, m.geometry.PageSize)
	dst = binary.BigEndian.AppendUint64(dst, m.geometry.RegionSize)
	dst = binary.BigEndian.AppendUint64(dst, m.geometry.Base)
	dst = binary.BigEndian.AppendUint64(dst, m.geometry.RCSize)
	dst = append(dst, m.nonce[:]...)
	dst = append(dst, m.pub[:]...)
	dst = append(dst, m.echo[:]...)
	return append(dst, m.flags)
}

func decodeHello(b []byte) (hello, error) {
	var m hello
	if len(b) != helloLen {
		return m, fmt.Errorf("%w: hello body has %d bytes, want %d", ErrMalformed, len(b), helloLen)
	}
	m.geometry.Nodes = binary.BigEndian.Uint16(b)
	m.geometry.PageSize = binary.BigEndian.Uint32(b[2:])
	m.geometry.RegionSize = binary.BigEndian.Uint64(b[6:])
	m.geometry.Base = binary.BigEndian.Uint64(b[14:])
	m.geometry.RCSize = binary.BigEndian.Uint64(b[22:])
	copy(m.nonce[:], b[30:46])
	copy(m.pub[:], b[46:78])
	copy(m.echo[:], b[78:94])
	m.flags = b[94]
	if m.flags&^(helloEchoValid|helloUp|helloLive) != 0 {
		return m, fmt.Errorf("%w: hello has unknown flags %#x", ErrMalformed, m.flags)
	}
	if m.flags&(helloUp|helloLive) != 0 && m.flags&helloEchoValid == 0 || m.flags&helloUp != 0 && m.flags&helloLive != 0 {
		return m, fmt.Errorf("%w: hello has inconsistent flags %#x", ErrMalformed, m.flags)
	}
	return m, nil
}

// KCP segment layout, as kcp-go encodes it (little endian):
// conv u32 | cmd u8 | frg u8 | wnd u16 | ts u32 | sn u32 | una u32 | len u32.
const (
	kcpOverhead = 24
	kcpCmdPush  = 81
	kcpCmdAck   = 82
	kcpCmdWask  = 83
	kcpCmdWins  = 84
	// kcpMaxSegData is the largest segment payload kcp-go can hold: it
	// copies received payloads into pooled 1472-byte buffers.
	kcpMaxSegData = 1472
	// kcpMaxMTU is the largest KCP MTU (segment header plus payload).
	kcpMaxMTU = kcpMaxSegData + kcpOverhead
)

// scanKCP checks that b is a whole number of well-formed KCP segments of
// conversation conv, none larger than kcp-go can take and none with more
// fragments than the receive window can reassemble, so that KCP's Input
// never sees input it would half-process or choke on. It reports whether b
// holds data segments (which the receiver must acknowledge).
func scanKCP(b []byte, conv uint32) (push bool, err error) {
	if len(b) == 0 {
		return false, fmt.Errorf("%w: empty kcp frame", ErrMalformed)
	}
	for len(b) > 0 {
		if len(b) < kcpOverhead {
			return false, fmt.Errorf("%w: %d trailing bytes in kcp frame, a segment header needs %d", ErrMalformed, len(b), kcpOverhead)
		}
		if c := binary.LittleEndian.Uint32(b); c != conv {
			return false, fmt.Errorf("%w: kcp conversation %#x, session is %#x", ErrMalformed, c, conv)
		}
		cmd, frg := b[4], b[5]
		n := binary.LittleEndian.Uint32(b[20:])
		switch cmd {
		case kcpCmdPush:
			push = true
			if int(frg) >= kcpMaxFrags {
				return false, fmt.Errorf("%w: kcp segment with %d fragments to follow, at most %d", ErrMalformed, frg, kcpMaxFrags-1)
			}
		case kcpCmdAck, kcpCmdWask, kcpCmdWins:
		default:
			return false, fmt.Errorf("%w: unknown kcp command %d", ErrMalformed, cmd)
		}
		if n > kcpMaxSegData {
			return false, fmt.Errorf("%w: kcp segment of %d bytes, at most %d", ErrMalformed, n, kcpMaxSegData)
		}
		if uint64(n) > uint64(len(b)-kcpOverhead) {
			return false, fmt.Errorf("%w: kcp segment of %d bytes truncated to %d", ErrMalformed, n, len(b)-kcpOverhead)
		}
		b = b[kcpOverhead+int(n):]
	}
	return push, nil
}

// Application messages travel inside KCP messages, each with a 2-byte
// header: version | type. A message longer than one KCP message is split
// into parts; every part but the last has type msgPart. A KCP message of
// type msgBatch carries several small messages sent while the transport
// was corked, each as a uvarint length and its bytes (see peer.batch).
const (
	msgHeaderLen = 2
	msgFinal     = 1
	msgPart      = 2
	msgBatch     = 3
)

// Batching. A small message sent while corked waits in its peer's batch
// until Uncork, a larger message to the same peer, or the batch filling
// up; then the batch goes as one KCP message. A read-ahead's requests to
// one home, or a barrier's messages, so cost one KCP message (one segment,
// one allocation by kcp-go, one ACK entry) instead of one each. Larger
// messages (pages) go alone, so that the first page of a burst is not held
// until the last has arrived.
const (
	// batchMsgMax is the largest message that joins a batch.
	batchMsgMax = 512
	// batchMax bounds a batch's body: one KCP message of a few segments.
	batchMax = 4 << 10
)

// appendBatched appends msg to a batch body in its batched form.
func appendBatched(b, msg []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(msg))), msg...)
}

// splitBatch appends the messages of a batch body to msgs. The messages
// alias body. A malformed body yields an error and no message at all: its
// messages are lost together, as a message that fails to decode is.
func splitBatch(body []byte, msgs [][]byte) ([][]byte, error) {
	n := len(msgs)
	for len(body) > 0 {
		l, k := binary.Uvarint(body)
		if k <= 0 || l > uint64(len(body)-k) {
			return msgs[:n], fmt.Errorf("%w: batched message of %d bytes in %d", ErrMalformed, l, len(body)-max(k, 0))
		}
		body = body[k:]
		msgs = append(msgs, body[:l:l])
		body = body[l:]
	}
	if len(msgs) == n {
		return msgs, fmt.Errorf("%w: empty batch", ErrMalformed)
	}
	return msgs, nil
}

// decodeMsgHeader returns a message's type (msgFinal, msgPart or msgBatch)
// and body.
func decodeMsgHeader(b []byte) (typ byte, body []byte, err error) {
	if len(b) < msgHeaderLen {
		return 0, nil, fmt.Errorf("%w: message of %d bytes lacks its header", ErrMalformed, len(b))
	}
	if b[0] != ProtocolVersion {
		return 0, nil, fmt.Errorf("%w: message version %d, this node speaks version %d", ErrMalformed, b[0], ProtocolVersion)
	}
	switch b[1] {
	case msgFinal, msgPart, msgBatch:
		return b[1], b[msgHeaderLen:], nil
	}
	return 0, nil, fmt.Errorf("%w: unknown message type %d", ErrMalformed, b[1])
}

// fecHeader precedes FEC shards: group u32 | index u8 | data u8 | parity u8.
// In a parity shard, data is the exact number of data shards in the group;
// in a data shard it is the group size the sender was aiming for.
type fecHeader struct {
	group  uint32
	index  uint8
	data   uint8
	parity uint8
}

const fecHeaderLen = 7

func (h fecHeader) put(b []byte) {
	binary.BigEndian.PutUint32(b, h.group)
	b[4], b[5], b[6] = h.index, h.data, h.parity
}

func decodeFECHeader(b []byte, parity bool) (fecHeader, []byte, error) {
	var h fecHeader
	if len(b) < fecHeaderLen {
		return h, nil, fmt.Errorf("%w: fec header needs %d bytes, got %d", ErrMalformed, fecHeaderLen, len(b))
	}
	h.group = binary.BigEndian.Uint32(b)
	h.index, h.data, h.parity = b[4], b[5], b[6]
	switch {
	case h.data == 0 || h.parity == 0 || int(h.data) > maxFECData || int(h.parity) > maxFECParity:
		return h, nil, fmt.Errorf("%w: fec group of %d data and %d parity shards", ErrMalformed, h.data, h.parity)
	case parity && h.index >= h.parity:
		return h, nil, fmt.Errorf("%w: parity shard %d of %d", ErrMalformed, h.index, h.parity)
	case !parity && h.index >= h.data:
		return h, nil, fmt.Errorf("%w: data shard %d of %d", ErrMalformed, h.index, h.data)
	}
	return h, b[fecHeaderLen:], nil
}

// payload is the decoded content of one session datagram (or of one FEC
// data shard): the frames the receiver acts on.
type payload struct {
	kcp    [][]byte
	pings  []uint64
	pongs  []uint64
	bye    bool
	fec    fecHeader // valid when isFEC
	isFEC  bool      // the datagram is a FEC shard
	push   bool      // kcp holds data segments (to acknowledge)
	parity bool      // ... a parity shard
	shard  []byte    // the FEC shard (data: the frames inside; parity: parity bytes)
}

func (p *payload) reset() {
	p.kcp = p.kcp[:0]
	p.pings = p.pings[:0]
	p.pongs = p.pongs[:0]
	p.bye = false
	p.isFEC, p.parity, p.push = false, false, false
	p.shard = nil
}

// decodePayload decodes the frames of a session datagram. A FEC data shard
// contributes its inner frames; FEC frames may not nest, a FEC frame must
// be alone in its datagram, and hellos do not belong in sessions. conv is
// the session's KCP conversation.
func decodePayload(b []byte, conv uint32, p *payload, inShard bool) error {
	p.reset()
	return decodePayloadInto(b, conv, p, inShard)
}

func decodePayloadInto(b []byte, conv uint32, p *payload, inShard bool) error {
	first := true
	return decodeFrames(b, func(f frame) error {
		defer func() { first = false }()
		switch f.typ {
		case frameKCP:
			push, err := scanKCP(f.body, conv)
			if err != nil {
				return err
			}
			p.kcp = append(p.kcp, f.body)
			p.push = p.push || push
		case framePing, framePong:
			if len(f.body) != 8 {
				return fmt.Errorf("%w: %v body has %d bytes, want 8", ErrMalformed, f.typ, len(f.body))
			}
			v := binary.BigEndian.Uint64(f.body)
			if f.typ == framePing {
				p.pings = append(p.pings, v)
			} else {
				p.pongs = append(p.pongs, v)
			}
		case frameBye:
			if len(f.body) != 0 {
				return fmt.Errorf("%w: bye body has %d bytes, want 0", ErrMalformed, len(f.body))
			}
			p.bye = true
		case frameFECData, frameFECParity:
			if inShard || !first || len(b) != frameHeaderLen+len(f.body) {
				return fmt.Errorf("%w: %v frame must be alone in its datagram", ErrMalformed, f.typ)
			}
			h, shard, err := decodeFECHeader(f.body, f.typ == frameFECParity)
			if err != nil {
				return err
			}
			p.fec, p.shard, p.isFEC, p.parity = h, shard, true, f.typ == frameFECParity
			if f.typ == frameFECData {
				if len(shard) > maxShardContent {
					return fmt.Errorf("%w: fec data shard of %d bytes, at most %d", ErrMalformed, len(shard), maxShardContent)
				}
				return decodePayloadInto(shard, conv, p, true)
			}
			if len(shard) < shardLenPrefix+1 || len(shard) > maxShardContent+shardLenPrefix {
				return fmt.Errorf("%w: fec parity shard of %d bytes", ErrMalformed, len(shard))
			}
		default:
			return fmt.Errorf("%w: %v frame in a session datagram", ErrMalformed, f.typ)
		}
		return nil
	})
}
