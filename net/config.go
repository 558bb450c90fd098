package net

import (
	"errors"
	"fmt"
	"log/slog"
	stdnet "net"
	"net/netip"
	"time"
)

// NodeID names a node of the cluster.
type NodeID = uint16

// Geometry describes the shared region. Every node of a cluster must use
// the same geometry; the handshake refuses a peer whose geometry differs.
type Geometry struct {
	Nodes      uint16 // number of nodes in the cluster
	PageSize   uint32 // bytes per page, a power of two
	RegionSize uint64 // bytes in the region, a multiple of PageSize
	Base       uint64 // virtual address of the region on every node, page aligned
	// RCSize is the bytes of the region kept for release-consistent
	// allocations: a page there follows the protocol of package
	// coherence/rc on every node, or on none.
	RCSize uint64
}

// String formats g for error messages.
func (g Geometry) String() string {
	return fmt.Sprintf("{Nodes:%d PageSize:%d RegionSize:%d Base:%#x RCSize:%d}", g.Nodes, g.PageSize, g.RegionSize, g.Base, g.RCSize)
}

// Validate reports whether g is self-consistent.
func (g Geometry) Validate() error {
	switch {
	case g.Nodes == 0:
		return fmt.Errorf("net: geometry %v: Nodes must be at least 1", g)
	case g.PageSize == 0 || g.PageSize&(g.PageSize-1) != 0:
		return fmt.Errorf("net: geometry %v: PageSize must be a power of two", g)
	case g.RegionSize%uint64(g.PageSize) != 0:
		return fmt.Errorf("net: geometry %v: RegionSize must be a multiple of PageSize", g)
	case g.Base%uint64(g.PageSize) != 0:
		return fmt.Errorf("net: geometry %v: Base must be aligned to PageSize", g)
	case g.RCSize > g.RegionSize || g.RCSize%uint64(g.PageSize) != 0:
		return fmt.Errorf("net: geometry %v: RCSize must be a multiple of PageSize within the region", g)
	}
	return nil
}

// FECConfig configures Reed-Solomon forward error correction: after every
// Data datagrams (or after a short delay, whichever comes first) the sender
// adds Parity datagrams from which any Parity lost datagrams of the group
// can be rebuilt without waiting for a retransmission. Both zero turns FEC
// off. The two ends need not agree: every shard says how its group is made.
type FECConfig struct {
	Data, Parity int
}

// Config configures a [Transport].
type Config struct {
	// ID is this node's id.
	ID NodeID
	// Addr is the local UDP address, such as "127.0.0.1:7001". A zero port
	// (":0") picks a free one; LocalAddr reports it.
	Addr string
	// Peers maps every other node to its UDP address.
	Peers map[NodeID]string
	// Key is the cluster key, at least 16 bytes, the same on every node.
	// A peer with another key is refused and logged.
	Key []byte
	// Geometry must match on every node; it is checked in the handshake.
	Geometry Geometry
	// Handler is called for every application message received, in order
	// per peer, from the transport's reader goroutine. msg is valid only
	// until Handler returns: the transport reuses its memory for the
	// messages of the next datagram, so that receiving costs no heap
	// allocation. A handler that keeps msg, or a slice of it, must copy
	// it. Handler may call Send; it must not block for long (the reader
	// serves every peer) and must not call Close. A nil Handler drops
	// messages.
	Handler func(from NodeID, msg []byte)
	// OnPeer, if not nil, is told when a peer comes up, goes down or is
	// refused. Events are delivered in order, one at a time, from the
	// transport's goroutines; a peer's PeerUp is delivered before the
	// Handler sees its first message. OnPeer may call Send but not Close.
	OnPeer func(PeerEvent)
	// HeartbeatInterval is how often an idle peer is pinged and how often
	// hellos are repeated during a handshake. Default 100ms.
	HeartbeatInterval time.Duration
	// DeadAfter is how long a peer may stay silent before it is declared
	// down. Default 1.5s; it must be at least twice HeartbeatInterval.
	DeadAfter time.Duration
	// MTU is the largest UDP payload the transport sends, headers and
	// authentication tag included. Zero picks LoopbackMTU when every peer
	// (and the local address, unless unspecified) is a loopback address,
	// and DefaultMTU otherwise; see those constants for why.
	MTU int
	// FEC optionally adds Reed-Solomon parity; zero values turn it off.
	FEC FECConfig
	// WrapConn, if not nil, wraps the UDP socket; tests use it to inject
	// loss, delay, duplication, reordering and partitions.
	WrapConn func(stdnet.PacketConn) stdnet.PacketConn
	// Logger receives warnings (authentication failures, refused peers,
	// peers going down). Default slog.Default().
	Logger *slog.Logger
	// Driven makes the transport start no goroutine of its own: the
	// caller's event loop waits until Fd is readable or Deadline has come,
	// and calls Receive and Tick. Handler and OnPeer then run on the
	// goroutine that calls Receive or Tick, and nowhere else. Send may
	// still be called from any goroutine: it moves Deadline earlier, and a
	// loop that waits on an older deadline must be told (see Deadline).
	// A node daemon drives its transport this way so that a page request
	// is read, served and answered on one thread, with no hand-off between
	// goroutines and no runtime timer on the path (Linux only).
	Driven bool
}

// Defaults and limits.
const (
	// DefaultHeartbeatInterval is the default Config.HeartbeatInterval.
	DefaultHeartbeatInterval = 100 * time.Millisecond
	// DefaultDeadAfter is the default Config.DeadAfter.
	DefaultDeadAfter = 1500 * time.Millisecond

	// DefaultMTU is the datagram size used off loopback: 1400 bytes fit an
	// Ethernet frame of 1500 bytes after IPv6 (40) and UDP (8) headers with
	// room for a tunnel header (VXLAN adds 50), so datagrams are never
	// fragmented by IP, where one lost fragment would lose them all.
	DefaultMTU = 1400
	// LoopbackMTU is the datagram size used when every node is on
	// loopback, whose link MTU is 64 KiB. A 4 KiB page with its KCP, frame
	// and AEAD headers is one datagram of about 4.2 KiB, so a page costs
	// one sendto, one recvfrom and one seal instead of three; 16 KiB also
	// lets a burst of segments share a datagram while staying far below
	// the socket buffers.
	LoopbackMTU = 16 << 10
	// MinMTU is the smallest MTU accepted.
	MinMTU = 576
	// MaxMTU is the largest UDP payload over IPv4.
	MaxMTU = 65507

	// MaxMessageSize is the largest application message Send accepts.
	MaxMessageSize = 64 << 20
)

// PeerEventKind says what happened to a peer.
type PeerEventKind uint8

// Peer event kinds.
const (
	// PeerUp: the handshake completed; messages flow.
	PeerUp PeerEventKind = iota + 1
	// PeerDown: the peer went silent for DeadAfter, closed, or restarted;
	// messages not yet acknowledged are lost and Send fails until the next
	// PeerUp.
	PeerDown
	// PeerRefused: the peer failed authentication (wrong cluster key) or
	// has another geometry; Err says which.
	PeerRefused
)

// String returns the kind's name.
func (k PeerEventKind) String() string {
	switch k {
	case PeerUp:
		return "up"
	case PeerDown:
		return "down"
	case PeerRefused:
		return "refused"
	}
	return fmt.Sprintf("PeerEventKind(%d)", uint8(k))
}

// PeerEvent reports a change of a peer's state.
type PeerEvent struct {
	Peer NodeID
	Kind PeerEventKind
	Err  error // why the peer went down or was refused; nil for PeerUp
}

// Errors returned by the transport. Test for them with errors.Is.
var (
	// ErrClosed: the transport is closed.
	ErrClosed = errors.New("net: transport closed")
	// ErrPeerDown: the peer is known to be down (silent, closed, or
	// refused); wait for PeerUp before sending again.
	ErrPeerDown = errors.New("net: peer down")
	// ErrPeerRefused: the handshake with the peer was refused.
	ErrPeerRefused = errors.New("net: peer refused")
	// ErrUnknownPeer: the node id is not in Config.Peers.
	ErrUnknownPeer = errors.New("net: unknown peer")
	// ErrAuth: a datagram failed authentication; the usual cause is a
	// different cluster key on the two nodes.
	ErrAuth = errors.New("net: authentication failed (do the nodes share the cluster key?)")
	// ErrGeometryMismatch: the peer's region geometry differs from ours.
	ErrGeometryMismatch = errors.New("net: geometry mismatch")
	// ErrPeerSilent: nothing was heard from the peer for DeadAfter.
	ErrPeerSilent = errors.New("net: peer silent")
	// ErrPeerClosed: the peer closed its transport.
	ErrPeerClosed = errors.New("net: peer closed its transport")
	// ErrPeerRestarted: the peer started a new session (it restarted, or
	// it had declared us dead).
	ErrPeerRestarted = errors.New("net: peer started a new session")
	// ErrUnreachable: no authenticated reply from the peer yet.
	ErrUnreachable = errors.New("net: peer unreachable")
	// ErrMessageTooLarge: the message exceeds MaxMessageSize.
	ErrMessageTooLarge = errors.New("net: message too large")
	// ErrQueueFull: too much data is waiting for the peer.
	ErrQueueFull = errors.New("net: send queue full")
	// ErrMalformed: a frame or datagram could not be decoded.
	ErrMalformed = errors.New("net: malformed frame")
)

// config is a validated Config with defaults applied.
type config struct {
	Config
	local     netip.AddrPort // parsed Addr (port may be zero)
	anyV6     bool           // a peer has an IPv6 address
	peerAddrs map[NodeID]*stdnet.UDPAddr
}

func (c Config) normalize() (*config, error) {
	if len(c.Key) < 16 {
		return nil, fmt.Errorf("net: cluster key has %d bytes; use at least 16 (e.g. 32 random bytes)", len(c.Key))
	}
	if err := c.Geometry.Validate(); err != nil {
		return nil, err
	}
	if int(c.Geometry.Nodes) < len(c.Peers)+1 {
		return nil, fmt.Errorf("net: %d peers plus this node exceed geometry Nodes=%d", len(c.Peers), c.Geometry.Nodes)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadAfter
	}
	if c.HeartbeatInterval < time.Millisecond {
		return nil, fmt.Errorf("net: HeartbeatInterval %v is below 1ms", c.HeartbeatInterval)
	}
	if c.DeadAfter < 2*c.HeartbeatInterval {
		return nil, fmt.Errorf("net: DeadAfter %v must be at least twice HeartbeatInterval %v", c.DeadAfter, c.HeartbeatInterval)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := c.FEC.validate(); err != nil {
		return nil, err
	}
	local, err := stdnet.ResolveUDPAddr("udp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("net: local address %q: %w", c.Addr, err)
	}
	cfg := &config{peerAddrs: make(map[NodeID]*stdnet.UDPAddr, len(c.Peers))}
	cfg.local = local.AddrPort()
	// The path is loopback when every peer is; an unspecified local
	// address (":0") does not decide it.
	allLoopback := local.IP == nil || local.IP.IsUnspecified() || local.IP.IsLoopback()
	seen := make(map[string]NodeID)
	for id, a := range c.Peers {
		if id == c.ID {
			return nil, fmt.Errorf("net: Peers lists this node's own id %d; list only the other nodes", id)
		}
		ua, err := stdnet.ResolveUDPAddr("udp", a)
		if err != nil {
			return nil, fmt.Errorf("net: address %q of peer %d: %w", a, id, err)
		}
		if ua.Port == 0 || ua.IP == nil || ua.IP.IsUnspecified() {
			return nil, fmt.Errorf("net: address %q of peer %d needs a host and a port", a, id)
		}
		if other, dup := seen[ua.String()]; dup {
			return nil, fmt.Errorf("net: peers %d and %d share the address %s", other, id, ua)
		}
		seen[ua.String()] = id
		if !ua.IP.IsLoopback() {
			allLoopback = false
		}
		if ua.IP.To4() == nil {
			cfg.anyV6 = true
		}
		cfg.peerAddrs[id] = ua
	}
	switch {
	case c.MTU == 0 && allLoopback:
		c.MTU = LoopbackMTU
	case c.MTU == 0:
		c.MTU = DefaultMTU
	case c.MTU < MinMTU || c.MTU > MaxMTU:
		return nil, fmt.Errorf("net: MTU %d out of range [%d, %d]", c.MTU, MinMTU, MaxMTU)
	}
	cfg.Config = c
	return cfg, nil
}

func (f FECConfig) enabled() bool { return f.Data > 0 || f.Parity > 0 }

func (f FECConfig) validate() error {
	if !f.enabled() {
		return nil
	}
	if f.Data < 1 || f.Parity < 1 || f.Data > maxFECData || f.Parity > maxFECParity {
		return fmt.Errorf("net: FEC {Data:%d Parity:%d}: need 1..%d data and 1..%d parity shards, or both 0 to turn FEC off",
			f.Data, f.Parity, maxFECData, maxFECParity)
	}
	return nil
}
