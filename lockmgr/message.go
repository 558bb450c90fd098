package lockmgr

import (
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
	// grant.
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
	// known, the home assumes the largest it allowed).
	MsgRelease
	// MsgReleaseAck, home → requester: the release of Req/Token is done.
	MsgReleaseAck
	// MsgArrive, participant → home: Client arrives at barrier Name with
	// Count participants; Gen is the last generation it completed there
	// (0 if none). Retransmitted until MsgBarrierDone.
	MsgArrive
	// MsgBarrierDone, home → participant: Req completed generation Gen.
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

	flagsKnown = FlagFinal | FlagCache | FlagRecall
)

// MaxNameLen is the longest name of a lock, election or barrier, in bytes.
const MaxNameLen = 1024

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
}

// String formats the message for logs and test failures.
func (m *Message) String() string {
	return fmt.Sprintf("%v %d→%d e%d/%d %v %q c%d r%d t%#x s%d g%#x n%d %v code%d f%d h%d",
		m.Type, m.From, m.To, m.Epoch, m.PeerEpoch, m.Space, m.Name, m.Client, m.Req,
		m.Token, m.Stamp, m.Gen, m.Count, m.Mode, m.Code, m.Flags, m.Holder)
}

// wireVersion is the version of the encoding written by AppendBinary.
const wireVersion = 1

// fixed header: version, type, from(2), to(2), epoch(4), peer epoch(4),
// space, mode, code, flags, holder(2).
const headerLen = 20

// AppendBinary appends the encoding of m to dst and returns the result.
//
// Encoding, version 1: a 20-byte header (version, type, from, to, epoch,
// peer epoch, space, mode, code, flags, holder; big endian), then client,
// req, token, stamp, gen, count and the name's length as uvarints, then the
// name.
func (m *Message) AppendBinary(dst []byte) []byte {
	dst = append(dst, wireVersion, byte(m.Type))
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
	return append(dst, m.Name...)
}

// UnmarshalMessage decodes a message written by AppendBinary. It checks the
// version, the type, space, mode and code, the ranges of the numbers, and
// that nothing follows the name; errors wrap ErrBadMessage.
func UnmarshalMessage(b []byte) (*Message, error) {
	if len(b) < headerLen {
		return nil, fmt.Errorf("%w: %d bytes, a message has at least %d", ErrBadMessage, len(b), headerLen)
	}
	if b[0] != wireVersion {
		return nil, fmt.Errorf("%w: version %d, this build reads version %d (upgrade every node)", ErrBadMessage, b[0], wireVersion)
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
	if uint64(len(rest)) != vals[6] {
		return nil, fmt.Errorf("%w: name of %d bytes but %d bytes left", ErrBadMessage, vals[6], len(rest))
	}
	m.Name = string(rest)
	return m, nil
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
