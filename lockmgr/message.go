package lockmgr

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// NodeID names a node of the cluster: 0 .. Config.Nodes-1.
type NodeID = uint16

// Space is the namespace of a name: a lock, an election and a barrier may
// share a name without meeting.
type Space uint8

// The namespaces.
const (
	SpaceLock     Space = iota + 1 // mutexes and read-write locks
	SpaceElection                  // leader elections (exclusive locks)
	SpaceBarrier                   // barriers
)

// String returns the name of the namespace.
func (s Space) String() string {
	switch s {
	case SpaceLock:
		return "lock"
	case SpaceElection:
		return "election"
	case SpaceBarrier:
		return "barrier"
	}
	return fmt.Sprintf("space(%d)", uint8(s))
}

// Mode is how a lock is held.
type Mode uint8

// The lock modes.
const (
	Exclusive  Mode = iota + 1 // one holder (a writer)
	SharedMode                 // any number of holders (readers)
)

// String returns the name of the mode.
func (m Mode) String() string {
	switch m {
	case Exclusive:
		return "exclusive"
	case SharedMode:
		return "shared"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MsgType says what a Message is.
type MsgType uint8

// The message types. "Requester" is the node of the client, "home" the node
// that Config.Home names for the lock or barrier.
const (
	// MsgLock, requester → home: enqueue request Req of Client for Name
	// in Mode. Retransmitted until granted; a retransmission of a granted
	// request renews its lease and gets the grant again.
	MsgLock MsgType = iota + 1
	// MsgGrant, home → requester: Req got Token. Stamp echoes the
	// requester's Stamp of the last MsgLock the home received before the
	// grant. Payload is the payload the home keeps for the lock (see
	// MsgRelease), sent again with every copy of the grant; FlagPayloadLost
	// says the home may have forgotten a newer one.
	MsgGrant
	// MsgRefuse, home → requester: Req is refused with Code.
	MsgRefuse
	// MsgRenew, holder → home: extend the lease of Token. Stamp is the
	// holder's clock when it sent the renewal.
	MsgRenew
	// MsgRenewAck, home → holder: Code is CodeOK if the lease of Token was
	// extended (Stamp echoes the renewal), CodeLeaseExpired if the home no
	// longer lists the holder.
	MsgRenewAck
	// MsgRelease, requester → home: release Req (held, with Token) or
	// withdraw it (waiting, Token 0). Retransmitted until acknowledged.
	// For a cached hold, Gen is the last token the client used (0: not
	// known, the home assumes the largest it allowed). The release of an
	// exclusive hold may carry a Payload (Mode is then Exclusive), which
	// the home keeps for the next grants of the lock unless it has kept
	// that of a release with a larger Token.
	MsgRelease
	// MsgReleaseAck, home → requester: the release of Req/Token is done.
	MsgReleaseAck
	// MsgArrive, participant → home: Client arrives at barrier Name with
	// Count participants; Gen is the last generation it completed there
	// (0 if none); Payload goes to every participant of the generation.
	// Retransmitted until MsgBarrierDone.
	MsgArrive
	// MsgBarrierDone, home → participant: Req completed generation Gen.
	// Payloads are the payloads of the generation's arrivals, one per
	// participant, ordered by node, incarnation and client.
	MsgBarrierDone
	// MsgLeave, participant → home: withdraw arrival Req; with FlagFinal
	// the client exited and nothing it sent before counts any longer.
	MsgLeave
	// MsgLeaveAck, home → participant: the leave of Req is done.
	MsgLeaveAck
	// MsgQuery, any → home: who leads election Name?
	MsgQuery
	// MsgLeader, home → any: election Name is led by Client on node Holder
	// with Token (Token 0: nobody).
	MsgLeader
	// MsgRecall, home → holder: others wait for lock Name, which Req of
	// Client holds with Token and keeps cached (FlagCache): release it when
	// it is no longer in use. Sent again whenever a waiter retransmits.
	MsgRecall
	msgLimit
)

var msgNames = [...]string{
	MsgLock: "Lock", MsgGrant: "Grant", MsgRefuse: "Refuse", MsgRenew: "Renew",
	MsgRenewAck: "RenewAck", MsgRelease: "Release", MsgReleaseAck: "ReleaseAck",
	MsgArrive: "Arrive", MsgBarrierDone: "BarrierDone", MsgLeave: "Leave",
	MsgLeaveAck: "LeaveAck", MsgQuery: "Query", MsgLeader: "Leader", MsgRecall: "Recall",
}

// String returns the name of the message type.
func (t MsgType) String() string {
	if t > 0 && t < msgLimit {
		return msgNames[t]
	}
	return fmt.Sprintf("msg(%d)", uint8(t))
}

// Message flags.
const (
	// FlagFinal marks a MsgLeave sent because the client exited.
	FlagFinal uint8 = 1 << iota
	// FlagCache marks a MsgLock (exclusive, lock space) whose client may
	// keep the lock after using it and re-grant it locally (LockCached).
	// The MsgGrant answering it carries in Gen the largest token the
	// client may use by itself.
	FlagCache
	// FlagRecall marks a MsgGrant of a cached lock that others already
	// wait for: the client is to release it after this use.
	FlagRecall
	// FlagPayloadLost marks a MsgGrant whose home restarted (without
	// Config.FreshStart) and has not yet kept a payload released under a
	// token of its own incarnation: an earlier incarnation may have kept
	// a newer payload than the grant carries.
	FlagPayloadLost

	flagsKnown = FlagFinal | FlagCache | FlagRecall | FlagPayloadLost
)

// MaxNameLen is the longest name of a lock, election or barrier, in bytes.
const MaxNameLen = 1024

// Payload limits. Payloads are opaque to the lock manager; the release
// consistent memory mode (package coherence/rc) puts a vector clock and
// write notices in them. The transport (package net) carries messages of up
// to 64 MiB, split into as many datagrams as it takes, so the limits are
// the lock manager's own: they bound what a home keeps in memory per lock
// and per barrier, and what one message costs to retransmit (requests and
// releases are retransmitted whole until answered).
const (
	// MaxPayload is the largest payload of one release or barrier
	// arrival, in bytes.
	MaxPayload = 64 << 10
	// MaxBarrierPayload is the largest total of the payloads of the
	// arrivals of one barrier generation, which every participant
	// receives in its MsgBarrierDone. An arrival that would exceed it is
	// refused with ErrPayloadTooLarge.
	MaxBarrierPayload = 16 << 20
)

// Message is what engines send each other. The daemon moves it between nodes
// (AppendBinary / UnmarshalMessage) and hands it to the Step of the engine
// of node To. Messages may be lost, duplicated and reordered.
type Message struct {
	Type      MsgType
	From, To  NodeID
	Epoch     uint32 // the sender's incarnation (Config.Epoch)
	PeerEpoch uint32 // replies: the incarnation of To they answer (0: any)
	Space     Space
	Mode      Mode
	Code      Code
	Flags     uint8
	Holder    NodeID // MsgLeader: the leader's node
	Name      string
	Client    uint64 // the requester's client (MsgLeader: the leader)
	Req       uint64 // the request id
	Token     uint64 // fencing token
	Stamp     int64  // a requester clock reading, echoed by the home
	Gen       uint64 // barrier generation; cached locks: see FlagCache and MsgRelease
	Count     uint32 // barrier participants
	// Payload (MsgRelease, MsgGrant, MsgArrive): opaque bytes from the
	// releasing or arriving client, at most MaxPayload. Empty is nil.
	// The engine never modifies a payload, and Step keeps the slice:
	// do not modify it after (UnmarshalMessage returns fresh slices).
	Payload []byte
	// Payloads (MsgBarrierDone): the arrivals' payloads, at most
	// MaxBarrierPayload bytes together; nil entries for arrivals without
	// one, nil when none had one. The same rules as for Payload hold.
	Payloads [][]byte
}

// String formats the message for logs and test failures.
func (m *Message) String() string {
	return fmt.Sprintf("%v %d→%d e%d/%d %v %q c%d r%d t%#x s%d g%#x n%d %v code%d f%d h%d p%d/%d",
		m.Type, m.From, m.To, m.Epoch, m.PeerEpoch, m.Space, m.Name, m.Client, m.Req,
		m.Token, m.Stamp, m.Gen, m.Count, m.Mode, m.Code, m.Flags, m.Holder, len(m.Payload), len(m.Payloads))
}

// Versions of the encoding. AppendBinary writes version 1, which every
// build reads, for messages without payloads, so that nodes of builds
// without payloads keep understanding them; version 2 adds the payload
// section after the name.
const (
	wireVersion        = 1
	wireVersionPayload = 2
)

// fixed header: version, type, from(2), to(2), epoch(4), peer epoch(4),
// space, mode, code, flags, holder(2).
const headerLen = 20

// AppendBinary appends the encoding of m to dst and returns the result.
//
// Encoding, version 1: a 20-byte header (version, type, from, to, epoch,
// peer epoch, space, mode, code, flags, holder; big endian), then client,
// req, token, stamp, gen, count and the name's length as uvarints, then the
// name. Version 2, written when m has a payload, follows the name with the
// length of Payload as a uvarint, Payload, the number of Payloads as a
// uvarint, and each of them as its length (uvarint) and bytes.
func (m *Message) AppendBinary(dst []byte) []byte {
	version := byte(wireVersion)
	if len(m.Payload) > 0 || len(m.Payloads) > 0 {
		version = wireVersionPayload
	}
	dst = append(dst, version, byte(m.Type))
	dst = binary.BigEndian.AppendUint16(dst, m.From)
	dst = binary.BigEndian.AppendUint16(dst, m.To)
	dst = binary.BigEndian.AppendUint32(dst, m.Epoch)
	dst = binary.BigEndian.AppendUint32(dst, m.PeerEpoch)
	dst = append(dst, byte(m.Space), byte(m.Mode), byte(m.Code), m.Flags)
	dst = binary.BigEndian.AppendUint16(dst, m.Holder)
	dst = binary.AppendUvarint(dst, m.Client)
	dst = binary.AppendUvarint(dst, m.Req)
	dst = binary.AppendUvarint(dst, m.Token)
	dst = binary.AppendUvarint(dst, uint64(m.Stamp))
	dst = binary.AppendUvarint(dst, m.Gen)
	dst = binary.AppendUvarint(dst, uint64(m.Count))
	dst = binary.AppendUvarint(dst, uint64(len(m.Name)))
	dst = append(dst, m.Name...)
	if version == wireVersion {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Payload)))
	dst = append(dst, m.Payload...)
	dst = binary.AppendUvarint(dst, uint64(len(m.Payloads)))
	for _, p := range m.Payloads {
		dst = binary.AppendUvarint(dst, uint64(len(p)))
		dst = append(dst, p...)
	}
	return dst
}

// UnmarshalMessage decodes a message written by AppendBinary. It checks the
// version, the type, space, mode and code, the ranges of the numbers, the
// sizes of the payloads, and that nothing follows the name (version 1) or
// the payloads (version 2); errors wrap ErrBadMessage. The payloads are
// copies: b may be reused. Empty payloads decode as nil.
func UnmarshalMessage(b []byte) (*Message, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, a message has at least %d", ErrBadMessage, len(b), headerLen)
	}
	if b[0] != wireVersion && b[0] != wireVersionPayload {
		return nil, fmt.Errorf("%w: version %d, this build reads versions %d and %d (upgrade every node)",
			ErrBadMessage, b[0], wireVersion, wireVersionPayload)
	}
	m := &Message{
		Type:      MsgType(b[1]),
		From:      binary.BigEndian.Uint16(b[2:]),
		To:        binary.BigEndian.Uint16(b[4:]),
		Epoch:     binary.BigEndian.Uint32(b[6:]),
		PeerEpoch: binary.BigEndian.Uint32(b[10:]),
		Space:     Space(b[14]),
		Mode:      Mode(b[15]),
		Code:      Code(b[16]),
		Flags:     b[17],
		Holder:    binary.BigEndian.Uint16(b[18:]),
	}
	if err := m.checkEnums(); err != nil {
		return nil, err
	}
	rest := b[headerLen:]
	var vals [7]uint64
	for i := range vals {
		v, n := binary.Uvarint(rest)
		if n <= 0 {
			return nil, fmt.Errorf("%w: truncated or overlong varint in field %d", ErrBadMessage, i)
		}
		vals[i], rest = v, rest[n:]
	}
	m.Client, m.Req, m.Token, m.Gen = vals[0], vals[1], vals[2], vals[4]
	if vals[3] > math.MaxInt64 {
		return nil, fmt.Errorf("%w: stamp %d out of range", ErrBadMessage, vals[3])
	}
	m.Stamp = int64(vals[3])
	if vals[5] > math.MaxUint32 {
		return nil, fmt.Errorf("%w: count %d out of range", ErrBadMessage, vals[5])
	}
	m.Count = uint32(vals[5])
	if vals[6] > MaxNameLen {
		return nil, fmt.Errorf("%w: name of %d bytes, at most %d", ErrBadMessage, vals[6], MaxNameLen)
	}
	if b[0] == wireVersion {
		if uint64(len(rest)) != vals[6] {
			return nil, fmt.Errorf("%w: name of %d bytes but %d bytes left", ErrBadMessage, vals[6], len(rest))
		}
		m.Name = string(rest)
		return m, nil
	}
	if uint64(len(rest)) < vals[6] {
		return nil, fmt.Errorf("%w: name of %d bytes but %d bytes left", ErrBadMessage, vals[6], len(rest))
	}
	m.Name, rest = string(rest[:vals[6]]), rest[vals[6]:]
	if err := m.unmarshalPayloads(rest); err != nil {
		return nil, err
	}
	return m, nil
}

// unmarshalPayloads decodes the payload section of version 2 into m, in
// one copy of b that the payloads share (capped, so that appending to one
// cannot overwrite the next).
func (m *Message) unmarshalPayloads(b []byte) error {
	b = bytes.Clone(b)
	// i is the index in Payloads, -1 for Payload.
	next := func(i int) ([]byte, error) {
		what := func() string {
			if i < 0 {
				return "payload"
			}
			return fmt.Sprintf("payload %d", i)
		}
		n, k := binary.Uvarint(b)
		if k <= 0 {
			return nil, fmt.Errorf("%w: truncated or overlong varint in the length of %s", ErrBadMessage, what())
		}
		b = b[k:]
		switch {
		case n > MaxPayload:
			return nil, fmt.Errorf("%w: %s of %d bytes, at most %d", ErrBadMessage, what(), n, MaxPayload)
		case n > uint64(len(b)):
			return nil, fmt.Errorf("%w: %s of %d bytes but %d bytes left", ErrBadMessage, what(), n, len(b))
		case n == 0:
			return nil, nil
		}
		p := b[:n:n]
		b = b[n:]
		return p, nil
	}
	var err error
	if m.Payload, err = next(-1); err != nil {
		return err
	}
	count, k := binary.Uvarint(b)
	if k <= 0 {
		return fmt.Errorf("%w: truncated or overlong varint in the number of payloads", ErrBadMessage)
	}
	b = b[k:]
	// Every entry takes at least its length byte: a larger count is a lie
	// that must not size an allocation.
	if count > uint64(len(b)) {
		return fmt.Errorf("%w: %d payloads in %d bytes", ErrBadMessage, count, len(b))
	}
	if count > 0 {
		m.Payloads = make([][]byte, count)
	}
	total := 0
	for i := range m.Payloads {
		if m.Payloads[i], err = next(i); err != nil {
			return err
		}
		total += len(m.Payloads[i])
		if total > MaxBarrierPayload {
			return fmt.Errorf("%w: payloads of more than %d bytes together", ErrBadMessage, MaxBarrierPayload)
		}
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d bytes after the payloads", ErrBadMessage, len(b))
	}
	return nil
}

// checkPayloads validates the sizes of the payloads of a message that did
// not come through UnmarshalMessage.
func (m *Message) checkPayloads() error {
	if len(m.Payload) > MaxPayload {
		return fmt.Errorf("%w: payload of %d bytes, at most %d", ErrBadMessage, len(m.Payload), MaxPayload)
	}
	total := 0
	for i, p := range m.Payloads {
		if len(p) > MaxPayload {
			return fmt.Errorf("%w: payload %d of %d bytes, at most %d", ErrBadMessage, i, len(p), MaxPayload)
		}
		total += len(p)
	}
	if total > MaxBarrierPayload {
		return fmt.Errorf("%w: payloads of %d bytes together, at most %d", ErrBadMessage, total, MaxBarrierPayload)
	}
	return nil
}

// checkEnums validates the small fields of a message.
func (m *Message) checkEnums() error {
	if m.Type == 0 || m.Type >= msgLimit {
		return fmt.Errorf("%w: unknown type %d", ErrBadMessage, m.Type)
	}
	if m.Space < SpaceLock || m.Space > SpaceBarrier {
		return fmt.Errorf("%w: unknown space %d", ErrBadMessage, m.Space)
	}
	if m.Mode > SharedMode {
		return fmt.Errorf("%w: unknown mode %d", ErrBadMessage, m.Mode)
	}
	if m.Code >= codeLimit {
		return fmt.Errorf("%w: unknown code %d", ErrBadMessage, m.Code)
	}
	if m.Flags&^flagsKnown != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrBadMessage, m.Flags)
	}
	return nil
}
