// Package node is the node daemon of the DSM runtime: the process that owns
// a node's share of the shared region and serves the page faults of the Go
// programs attached to it.
//
// It is a package of its own, apart from cmd/dsmnode, because three programs
// run it: dsmnode serve, the launcher of a local cluster (dsmnode run, the
// false-sharing demo, the benchmarks) and the multi-process tests. The fault
// server must never share a Go runtime with the threads that fault (see
// DESIGN.md), so a daemon always runs in a process of its own.
//
// A Node owns the memfd behind the region, the userfaultfds that attached
// programs hand it, the KCP transport to the other nodes, the coherence
// engine and the lock manager; what it does with pages is package pager's,
// which it drives through the memfd, the userfaultfds and the transport
// (memory.go). Its faults, messages and timers are served by one event loop
// on a locked OS thread (loop.go); control connections run on goroutines of
// their own and do their work under the node's lock.
package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/coherence"
	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/internal/heaplayout"
	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/pager"
	"github.com/dsmrt/dsm/uffd"
)

// DefaultReadAhead is how many pages a daemon asks for ahead of a sequential
// read fault unless told otherwise: on loopback a scan went from 34 to 50
// MB/s with 7 (go run ./bench -run scan).
const DefaultReadAhead = 7

// DefaultBase is the address every node maps the region at unless told
// otherwise: far from where Go, the C library and the loader place things.
const DefaultBase = 0x600000000000

// Config is the configuration of one node.
type Config struct {
	ID     int            `json:"id"`     // this node: 0 .. Nodes-1
	Nodes  int            `json:"nodes"`  // cluster size
	Addr   string         `json:"addr"`   // UDP address of this node's transport
	Peers  map[int]string `json:"peers"`  // UDP address of every other node
	Key    string         `json:"key"`    // cluster key (hex or text, >= 16 bytes)
	Socket string         `json:"socket"` // unix socket programs attach to
	// SocketGroup, when set (a group name or number), lets that group's
	// members use the socket too: it is created 0660 and owned by the
	// group. Otherwise it is 0600: only the daemon's user (and root).
	SocketGroup string `json:"socket_group,omitempty"`
	Base        uint64 `json:"base"` // region base address (same on every node)
	Size        uint64 `json:"size"` // region size in bytes
	PageSize    int    `json:"page_size"`
	// RCSize is the bytes of the region kept for release-consistent
	// allocations (dsm.ReleaseConsistent), a multiple of 64 KiB, the same
	// on every node; 0 keeps none. The area lies below the allocator's
	// metadata at the region's end (package heaplayout).
	RCSize uint64   `json:"rc_size,omitempty"`
	Tick   Duration `json:"tick"` // coherence engine tick (retries)

	// FaultTimeout is how long a fault may wait while a peer is down
	// before the program that faulted is told to stop (it cannot go on
	// without the page). Default 30 s.
	FaultTimeout Duration `json:"fault_timeout,omitempty"`

	// MinHold and MaxHold bound how long a contended page stays after it
	// was made accessible for a local fault (see pager/hold.go): until the
	// program wrote it, or MinHold for a read, and at most MaxHold.
	// Defaults 20 µs and 200 µs. NoHold turns the hold (and the home's
	// pipelining of requests that comes with it) off.
	// ReadAhead is how many pages the daemon asks for ahead of a program
	// that read-faults on consecutive pages: 0 means the default
	// (DefaultReadAhead), a negative value turns read-ahead off.
	ReadAhead int `json:"read_ahead,omitempty"`

	MinHold Duration `json:"min_hold,omitempty"`
	MaxHold Duration `json:"max_hold,omitempty"`
	NoHold  bool     `json:"no_hold,omitempty"`

	// FreshLocks says this is the first start of a new cluster: the lock
	// manager may grant at once. Otherwise (a restart) it waits one home
	// lease so that no lease granted before the restart can overlap.
	FreshLocks bool `json:"fresh_locks,omitempty"`

	// NoCompress sends pages uncompressed (a zero page still travels as a
	// flag); for measuring what compression buys.
	NoCompress bool `json:"no_compress,omitempty"`
	// FECData and FECParity turn on forward error correction in the
	// transport (Reed-Solomon shards); both ends must agree.
	FECData   int `json:"fec_data,omitempty"`
	FECParity int `json:"fec_parity,omitempty"`
	// MTU is the largest UDP payload the transport sends (package net's
	// Config.MTU): 0 picks net.LoopbackMTU when every node is on
	// loopback, where a page travels as one datagram, and net.DefaultMTU
	// (1400) otherwise. On a jumbo-frame network (9000) a page is one
	// datagram too. Nodes may differ: every node receives datagrams up to
	// net.MaxMTU.
	MTU int `json:"mtu,omitempty"`
	// Loss drops this fraction of the datagrams the node sends (seeded by
	// the node id): injected packet loss, for tests and benchmarks.
	Loss float64 `json:"loss,omitempty"`

	// Metrics, when set, is the TCP address (host:port) on which the
	// daemon serves Prometheus metrics at /metrics (see metrics.go).
	// Empty: no metrics server.
	Metrics string `json:"metrics,omitempty"`

	// MuteCoherence makes the daemon drop every coherence message it
	// receives while its transport stays up: injected, for tests, a peer
	// that is up but never answers.
	MuteCoherence bool `json:"mute_coherence,omitempty"`

	// WrapConn, when set, wraps the transport's UDP socket (fault injection).
	WrapConn func(net.PacketConn) net.PacketConn `json:"-"`
	// Logger receives the daemon's log; nil means stderr.
	Logger *slog.Logger `json:"-"`
}

// Duration is a time.Duration that reads and writes as text in JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.PageSize == 0 {
		c.PageSize = os.Getpagesize()
	}
	if c.PageSize != os.Getpagesize() {
		return fmt.Errorf("page size %d: this machine's page size is %d, and userfaultfd works in whole pages", c.PageSize, os.Getpagesize())
	}
	if c.Base == 0 {
		c.Base = DefaultBase
	}
	if c.Size == 0 {
		c.Size = 64 << 20
	}
	if c.Size%uint64(c.PageSize) != 0 || c.Base%uint64(c.PageSize) != 0 {
		return fmt.Errorf("region base 0x%x and size %d must be multiples of the page size %d", c.Base, c.Size, c.PageSize)
	}
	if c.RCSize > 0 {
		if _, err := heaplayout.New(c.Size, uint64(c.PageSize), c.RCSize); err != nil {
			return fmt.Errorf("rc_size %d: %w", c.RCSize, err)
		}
	}
	if c.Size/uint64(c.PageSize) > 1<<31 {
		return fmt.Errorf("region of %d bytes has too many pages", c.Size)
	}
	if c.Nodes < 1 || c.Nodes > 1<<15 {
		return fmt.Errorf("nodes = %d: need 1 .. 32768", c.Nodes)
	}
	if c.ID < 0 || c.ID >= c.Nodes {
		return fmt.Errorf("node id %d out of range 0..%d", c.ID, c.Nodes-1)
	}
	for i := 0; i < c.Nodes; i++ {
		if i == c.ID {
			continue
		}
		if c.Peers[i] == "" {
			return fmt.Errorf("no address for peer node %d: give every other node's UDP address", i)
		}
	}
	if len(c.Key) < 16 {
		return errors.New("cluster key missing or shorter than 16 bytes: give every node the same secret (dsmnode keygen makes one)")
	}
	if c.Socket == "" {
		return errors.New("no socket path: programs attach through a unix socket (--socket)")
	}
	if c.FaultTimeout == 0 {
		c.FaultTimeout = Duration(30 * time.Second)
	}
	if c.MTU != 0 && (c.MTU < dsmnet.MinMTU || c.MTU > dsmnet.MaxMTU) {
		return fmt.Errorf("mtu %d: give %d to %d bytes, or 0 for %d on loopback and %d otherwise", c.MTU, dsmnet.MinMTU, dsmnet.MaxMTU, dsmnet.LoopbackMTU, dsmnet.DefaultMTU)
	}
	switch {
	case c.ReadAhead == 0:
		c.ReadAhead = DefaultReadAhead
	case c.ReadAhead < 0:
		c.ReadAhead = -1
	case c.ReadAhead > 1024:
		return fmt.Errorf("read_ahead %d: give at most 1024 pages (or -1 for none)", c.ReadAhead)
	}
	if c.MinHold == 0 {
		c.MinHold = Duration(20 * time.Microsecond)
	}
	if c.MaxHold == 0 {
		c.MaxHold = Duration(200 * time.Microsecond)
	}
	if c.Tick == 0 {
		c.Tick = Duration(5 * time.Millisecond)
	}
	return checkMetricsAddr(c.Metrics)
}

// Node is a running node daemon.
type Node struct {
	cfg   Config
	log   *slog.Logger
	pages int
	ps    int

	memfd  int
	tr     *dsmnet.Transport
	ring   *dht.Ring
	eng    *coherence.Engine
	ln     *net.UnixListener
	access socketAccess // who may use ln

	done chan struct{}
	lp   *eventLoop

	// mu guards the engines and everything below: the event loop serves
	// faults, messages and ticks under it, and control requests are served
	// under it by the goroutine they arrive on (offLoop).
	mu             sync.Mutex
	stopped        bool
	lastStuckCheck time.Time
	incarnation    uint64            // random, per start of this daemon
	peerInc        map[uint16]uint64 // each peer's incarnation, as first heard
	fatal          error
	cancel         context.CancelFunc
	progs          map[int]*prog
	joins          map[string]*prog // attached programs by their join secret
	nextID         int
	pg             *pager.Pager      // the page logic: states, waiting faults, twins, holds
	outbox         []lazyBox         // by node: messages that ride on the next one
	sendBuf        []byte            // scratch: the message being sent
	dec            coherence.Decoder // decodes received coherence messages, one at a time
	lazyNext       time.Time         // when the first of them is due
	an             *analyzer.Analyzer
	vars           map[string]analyzer.Var
	stats          stats
	locks          lockState
	metrics        *metricsServer // nil unless Config.Metrics is set
	rcs            *rcState       // nil unless Config.RCSize is set

	wg sync.WaitGroup
}

// New creates a node: it checks the machine, creates the memfd and binds
// the transport and the socket. Run serves it.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("node", cfg.ID)
	}
	n := &Node{
		cfg:     cfg,
		log:     log,
		ps:      cfg.PageSize,
		pages:   int(cfg.Size / uint64(cfg.PageSize)),
		done:    make(chan struct{}),
		progs:   map[int]*prog{},
		joins:   map[string]*prog{},
		peerInc: map[uint16]uint64{},
		vars:    map[string]analyzer.Var{},
		an:      analyzer.New(cfg.PageSize),
	}
	n.outbox = make([]lazyBox, cfg.Nodes)
	var inc [8]byte
	rand.Read(inc[:])
	n.incarnation = binary.LittleEndian.Uint64(inc[:])
	n.ring = dht.ClusterRing(cfg.Nodes)
	eng, err := coherence.New(coherence.Config{
		ID:    coherence.NodeID(cfg.ID),
		Nodes: cfg.Nodes,
		Pages: n.pages,
		Home:  n.Home,
		Hold:  !cfg.NoHold,
	})
	if err != nil {
		return nil, fmt.Errorf("coherence engine: %w", err)
	}
	n.eng = eng
	if err := n.initLocks(cfg.FreshLocks); err != nil {
		return nil, err
	}
	if err := n.initRC(); err != nil {
		return nil, err
	}
	fd, err := uffd.Memfd(fmt.Sprintf("dsm-node-%d", cfg.ID), int64(cfg.Size))
	if err != nil {
		return nil, fmt.Errorf("create the region's memfd (%d bytes): %w", cfg.Size, err)
	}
	n.memfd = fd
	readAhead := cfg.ReadAhead
	if readAhead < 0 {
		readAhead = 0
	}
	n.pg, err = pager.New(pager.Config{
		ID: coherence.NodeID(cfg.ID), Engine: eng, Pages: n.pages, PageSize: n.ps,
		Store: memfdStore{fd: fd, ps: n.ps}, Sender: coherenceSender{n},
		MinHold: time.Duration(cfg.MinHold), MaxHold: time.Duration(cfg.MaxHold),
		ReadAhead: readAhead, NoCompress: cfg.NoCompress,
		Analyzer: n.an, Locks: lockNotes{n}, Observer: (*statsObserver)(&n.stats),
		Fail: n.fail, Log: log,
	})
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := n.openLoop(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := n.listenSocket(); err != nil {
		n.closeLoop()
		unix.Close(fd)
		return nil, err
	}
	peers := map[dsmnet.NodeID]string{}
	for id, a := range cfg.Peers {
		if id != cfg.ID {
			peers[dsmnet.NodeID(id)] = a
		}
	}
	wrap := cfg.WrapConn
	if cfg.Loss > 0 {
		if cfg.Loss >= 1 {
			return nil, fmt.Errorf("loss %.2f: must be below 1", cfg.Loss)
		}
		inner := wrap
		wrap = func(c net.PacketConn) net.PacketConn {
			if inner != nil {
				c = inner(c)
			}
			return dsmnet.NewFaultConn(c, dsmnet.Faults{Seed: int64(cfg.ID) + 1, Loss: cfg.Loss})
		}
	}
	tr, err := dsmnet.Listen(dsmnet.Config{
		ID:    dsmnet.NodeID(cfg.ID),
		Addr:  cfg.Addr,
		Peers: peers,
		Key:   []byte(cfg.Key),
		Geometry: dsmnet.Geometry{
			Nodes: uint16(cfg.Nodes), PageSize: uint32(cfg.PageSize),
			RegionSize: cfg.Size, Base: cfg.Base, RCSize: cfg.RCSize,
		},
		Handler:  n.onMessage,
		OnPeer:   n.onPeer,
		WrapConn: wrap,
		FEC:      dsmnet.FECConfig{Data: cfg.FECData, Parity: cfg.FECParity},
		MTU:      cfg.MTU,
		Logger:   log,
		Driven:   true,
	})
	if err == nil {
		n.tr = tr
		err = n.watch(tr.Fd(), tagSocket)
		if err != nil {
			tr.Close()
		}
	}
	if err != nil {
		n.ln.Close()
		n.closeLoop()
		unix.Close(fd)
		return nil, fmt.Errorf("transport on %s: %w", cfg.Addr, err)
	}
	if err := n.listenMetrics(); err != nil {
		tr.Close()
		n.ln.Close()
		n.closeLoop()
		unix.Close(fd)
		return nil, err
	}
	return n, nil
}

// Home is the home node of a page, found through the DHT.
func (n *Node) Home(p coherence.PageID) coherence.NodeID {
	return coherence.NodeID(n.ring.Home(dht.PageKey(uint32(p))))
}

// Config returns the node's configuration (with defaults filled in).
func (n *Node) Config() Config { return n.cfg }

func (n *Node) listenSocket() error {
	path := n.cfg.Socket
	if fi, err := os.Stat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("socket path %s exists and is not a socket: choose another path", path)
		}
		// A socket file: in use by a live daemon, or left by a dead one.
		if c, err := net.Dial("unixpacket", path); err == nil {
			c.Close()
			return fmt.Errorf("socket %s is in use by a running daemon: stop it or choose another path", path)
		}
		os.Remove(path)
	}
	gid, err := resolveSocketGroup(n.cfg.SocketGroup)
	if err != nil {
		return err
	}
	n.access = socketAccess{uid: os.Geteuid(), gid: gid, group: n.cfg.SocketGroup}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := n.access.secure(path); err != nil {
		ln.Close()
		return err
	}
	n.ln = ln
	return nil
}

// onMessage is the transport's handler: the event loop's Receive calls it,
// with n.mu held, and the message is served right there, so that a reply
// leaves on the same thread.
func (n *Node) onMessage(from dsmnet.NodeID, msg []byte) {
	n.onPeerMessage(uint16(from), msg)
	n.flush()
}

func (n *Node) onPeer(ev dsmnet.PeerEvent) {
	switch ev.Kind {
	case dsmnet.PeerUp:
		n.log.Info("peer up", "peer", ev.Peer)
		// Tell the peer who we are, so that it notices if we restart.
		msg := binary.LittleEndian.AppendUint64([]byte{protoIncarnation}, n.incarnation)
		n.tr.Send(ev.Peer, msg)
	case dsmnet.PeerDown:
		if errors.Is(ev.Err, dsmnet.ErrPeerClosed) {
			n.log.Info("peer stopped", "peer", ev.Peer)
		} else {
			n.log.Warn("peer down: faults on pages it holds wait until it returns", "peer", ev.Peer, "err", ev.Err)
		}
	case dsmnet.PeerRefused:
		n.log.Error("peer refused", "peer", ev.Peer, "err", ev.Err)
	}
	// The lock manager is not told of a peer going down (lockmgr's
	// PeerDown): a peer that is silent for DeadAfter may be stalled (a long
	// pause, a frozen VM, SIGSTOP) rather than dead. Requests for locks
	// homed there are retransmitted until it answers or the program's
	// context ends (the program then withdraws them); holders of such locks
	// lose them when their lease belief runs out, since they cannot renew;
	// and as a home this node keeps the silent node's holders until their
	// leases expire, as it would anyway. The coherence engine likewise
	// keeps retrying, and a fault that waits FaultTimeout stops its program.
}

// do runs fn under the node's lock on the calling goroutine (not the
// loop's), then applies what the engines produced.
func (n *Node) do(ctx context.Context, fn func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !n.offLoop(fn) {
		return errors.New("node stopped")
	}
	return nil
}

// WaitPeers blocks until every peer has completed the handshake.
func (n *Node) WaitPeers(ctx context.Context) error { return n.tr.WaitPeers(ctx) }

// failStuckFaults tells every program whose fault has waited longer than
// FaultTimeout that it cannot go on, with the reason: the peers that are
// down, or, when every peer is up, the page's home, which has not answered.
// The program exits with it; its thread would otherwise wait in the fault
// forever. Called with n.mu held.
func (n *Node) failStuckFaults(now time.Time) {
	limit := time.Duration(n.cfg.FaultTimeout)
	stuck := n.pg.Stuck(now.Add(-limit))
	if len(stuck) == 0 {
		return
	}
	var down []string
	for _, p := range n.tr.Peers() {
		if !p.Up {
			down = append(down, fmt.Sprintf("node %d (%s)", p.ID, p.Addr))
		}
	}
	for _, w := range stuck {
		pr := n.progs[w.Prog.ID]
		if pr == nil {
			continue
		}
		page := w.Page
		waited := now.Sub(w.At).Round(time.Second)
		var err error
		if len(down) > 0 {
			err = fmt.Errorf("a fault on page %d (offset 0x%x) has waited %v and %s down: the page may be there, so the program cannot go on",
				page, uint64(page)*uint64(n.ps), waited, strings.Join(down, ", ")+" is")
		} else if home := n.Home(page); int(home) != n.cfg.ID {
			err = fmt.Errorf("a fault on page %d (offset 0x%x) has waited %v with every node up: the page's home, node %d (%s), has not answered, so the program cannot go on",
				page, uint64(page)*uint64(n.ps), waited, home, n.cfg.Peers[int(home)])
		} else {
			err = fmt.Errorf("a fault on page %d (offset 0x%x) has waited %v with every node up: its home is this node, and the node holding the page has not answered, so the program cannot go on",
				page, uint64(page)*uint64(n.ps), waited)
		}
		n.log.Error("program stopped: fault cannot complete", "pid", pr.pid, "err", err)
		reply(pr.conn, 0, nil, err)
	}
}

// onIncarnation checks a peer's incarnation. A peer that restarted lost the
// pages it held and the directory entries homed on it: the cluster can no
// longer be kept coherent, and this node stops (its programs fail loudly)
// rather than serve anything wrong. Called with n.mu held.
func (n *Node) onIncarnation(from uint16, b []byte) {
	if len(b) != 8 {
		n.log.Warn("malformed incarnation message dropped", "peer", from)
		return
	}
	inc := binary.LittleEndian.Uint64(b)
	old, seen := n.peerInc[from]
	if !seen {
		n.peerInc[from] = inc
		return
	}
	if old != inc {
		n.fail(fmt.Errorf("node %d restarted: the pages it held and the directory it kept are gone, so the region is no longer coherent; restart the whole cluster", from))
	}
}

// fail stops the node because it can no longer keep its pages coherent.
// Its programs see the daemon go and fail loudly; nothing goes on with
// memory that is wrong. Called with n.mu held.
func (n *Node) fail(err error) {
	if n.fatal == nil {
		n.fatal = err
		n.log.Error("node stopping: it cannot keep the region coherent", "err", err)
		for _, p := range n.progs {
			if !p.Gone {
				reply(p.conn, 0, nil, err) // the program stops with the reason
			}
		}
		n.cancel()
	}
}

// Run serves the node until ctx ends. It closes everything it owns before it
// returns.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n.mu.Lock()
	n.cancel = cancel
	n.mu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.acceptLoop(ctx)
	}()
	n.serveMetrics()
	err := n.runLoop(ctx)
	n.stopMetrics()
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
	close(n.done)
	n.ln.Close()
	os.Remove(n.cfg.Socket)
	n.tr.Close()
	n.wg.Wait()
	for _, p := range n.progs {
		p.close()
	}
	n.closeLoop()
	unix.Close(n.memfd)
	if n.fatal != nil {
		return n.fatal
	}
	return err
}

// Protocol bytes that start every transport message.
const (
	protoCoherence   = 1
	protoLock        = 2
	protoIncarnation = 3 // a node's incarnation, sent to each peer when it comes up
	// protoRC = 4: the release-consistent protocol (rc.go)
	// protoRCHomes = 5: release-consistent home ranges (rchomes.go)
)

func (n *Node) onPeerMessage(from uint16, b []byte) {
	if len(b) == 0 {
		n.log.Warn("empty message from peer", "peer", from)
		return
	}
	switch b[0] {
	case protoCoherence:
		if n.cfg.MuteCoherence {
			return
		}
		// The page stays in the transport's buffer, which lasts the
		// handler's call, and the message in the decoder's, which lasts
		// until the next: the pager installs the page and advances the
		// engine within Step (Engine.Step's contract).
		m, err := n.dec.Decode(b[1:])
		if err != nil {
			n.log.Warn("malformed coherence message dropped", "peer", from, "err", err)
			return
		}
		if int(m.From) != int(from) {
			n.log.Warn("coherence message claims another sender; dropped", "peer", from, "claims", m.From)
			return
		}
		if err := n.pg.Step(m); err != nil {
			n.log.Warn("coherence message refused", "peer", from, "err", err)
		}
	case protoLock:
		n.onLockMessage(from, b[1:])
	case protoIncarnation:
		n.onIncarnation(from, b[1:])
	case protoRC:
		n.onRCMessage(from, b[1:])
	case protoRCHomes:
		n.onHomesMessage(from, b[1:])
	default:
		n.log.Warn("message of unknown protocol dropped", "peer", from, "proto", b[0])
	}
}

// flush applies everything the engines produced, in order.
func (n *Node) flush() {
	for {
		if n.pg.Flush() {
			continue
		}
		if n.flushLocks() {
			continue
		}
		if n.flushRC() {
			continue
		}
		return
	}
}

func (n *Node) pageOff(p coherence.PageID) int64 { return int64(p) * int64(n.ps) }

// send hands a coherence message the pager filled to the transport, or
// to the outbox of messages that may wait for the next one.
func (n *Node) send(m *coherence.Message) {
	if d := lazyDelay(m.Type); d > 0 {
		box := &n.outbox[m.To]
		start := len(box.buf)
		box.buf = m.AppendBinary(append(box.buf, protoCoherence))
		n.stats.bytesOut += uint64(len(box.buf) - start)
		n.postLazy(m.To, d)
		return
	}
	n.flushBox(m.To)
	// The transport copies what it is given: one buffer serves every
	// message (the loop, or a goroutine under n.mu, is the only sender).
	b := m.AppendBinary(append(n.sendBuf[:0], protoCoherence))
	n.sendBuf = b
	n.stats.bytesOut += uint64(len(b))
	if err := n.tr.Send(dsmnet.NodeID(m.To), b); err != nil {
		// The engine retransmits on ticks; a dead peer is logged once by
		// the transport's peer event.
		n.log.Debug("send failed", "to", m.To, "err", err)
	}
}
