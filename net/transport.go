package net

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	stdnet "net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Socket buffer sizes requested for the UDP socket: a full KCP window of
// 256 segments of 1.5 KiB must fit, with room for several peers.
const socketBuffer = 4 << 20

// Transport carries messages between this node and its peers. It is safe
// for concurrent use.
type Transport struct {
	cfg   *config
	conn  stdnet.PacketConn
	udp   *stdnet.UDPConn // the socket, when not wrapped (allocation-free I/O)
	raw   *rawConn        // the socket of a driven transport, when not wrapped
	log   *slog.Logger
	peers map[NodeID]*peer
	order []*peer // by id
	epoch time.Time

	closed    atomic.Bool
	done      chan struct{}
	wake      chan struct{}
	timer     *time.Timer  // wakes timerLoop
	timerMu   sync.Mutex   // serialises changes of timerNext and timer
	timerNext atomic.Int64 // UnixNano of the timer's next planned wake
	wg        sync.WaitGroup
	closeErr  error
	closeOnce sync.Once

	mu      sync.Mutex // guards changed
	changed chan struct{}

	evMu      sync.Mutex // guards evq
	evq       []PeerEvent
	evPending atomic.Int32
	dlvMu     sync.Mutex // serialises OnPeer calls

	logMu        sync.Mutex
	logged       map[string]bool
	warnOnceFull sync.Once

	unknownSender, misaddressed, malformed, impostor atomic.Uint64

	// driven: no goroutines; the caller's loop calls Receive and Tick.
	driven bool
	// corked: Send queues messages and Uncork puts them on the wire, so
	// that the messages of one batch share datagrams.
	corked      atomic.Bool
	corkMu      sync.Mutex
	corkedPeers []*peer
	corkSpare   []*peer // the other buffer of corkedPeers, reused
	fd          int     // the socket's descriptor, in driven mode

	// Reader goroutine only (in driven mode, the caller of Receive and
	// Tick).
	rx      payload
	rxBatch *recvBatch // the datagrams of one read by Receive
	rxFEC   payload
	// rxMsgs are the messages the datagram being served completed, for
	// the handler; rxArena holds those that were not reassembled from
	// parts. Both are reused for the next datagram, so that a message
	// costs no allocation: the handler's msg is valid only during the
	// call (Config.Handler).
	rxMsgs  [][]byte
	rxArena []byte
	// ackPeers have ACKs waiting (see peer.flushACKs).
	ackPeers []*peer
}

// Listen opens the transport's UDP socket and starts the handshake with
// every peer. It returns once the socket is open; use WaitPeers to wait for
// the peers.
func Listen(cfg Config) (*Transport, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	var (
		conn stdnet.PacketConn
		udp  *stdnet.UDPConn
		raw  *rawConn
	)
	if c.Driven {
		if raw, err = listenRaw(c.local, c.anyV6); err != nil {
			return nil, fmt.Errorf("net: listen on %s: %w", c.Addr, err)
		}
		conn = raw
	} else {
		if udp, err = stdnet.ListenUDP("udp", stdnet.UDPAddrFromAddrPort(c.local)); err != nil {
			return nil, fmt.Errorf("net: listen on %s: %w", c.Addr, err)
		}
		setSocketBuffers(udp)
		conn = udp
	}
	t := &Transport{
		cfg:     c,
		conn:    conn,
		udp:     udp,
		raw:     raw,
		log:     c.Logger.With("component", "net", "node", c.ID),
		peers:   make(map[NodeID]*peer, len(c.Peers)),
		epoch:   time.Now(),
		done:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		timer:   time.NewTimer(0),
		changed: make(chan struct{}),
		logged:  make(map[string]bool),
		driven:  c.Driven,
		fd:      -1,
		// Most datagrams complete at most an MTU of messages; a burst
		// that completes more grows it once.
		rxArena: make([]byte, 0, c.MTU),
	}
	if raw != nil {
		t.fd = raw.fd
		t.rxBatch = newRecvBatch(rxBatch, MaxMTU+1)
	}
	if c.WrapConn != nil {
		t.conn = c.WrapConn(conn)
		t.udp, t.raw = nil, nil
		if t.conn == nil {
			conn.Close()
			return nil, errors.New("net: WrapConn returned nil")
		}
	}
	for id, addr := range c.peerAddrs {
		p, err := newPeer(t, id, addr)
		if err != nil {
			t.conn.Close()
			return nil, err
		}
		t.peers[id] = p
		t.order = append(t.order, p)
	}
	slices.SortFunc(t.order, func(a, b *peer) int { return int(a.id) - int(b.id) })
	if t.driven {
		// Due at once: the first Tick sends the hellos.
		t.timer.Stop()
		return t, nil
	}
	t.wg.Add(2)
	go t.readLoop()
	go t.timerLoop()
	return t, nil
}

// LocalAddr returns the address of the transport's socket.
func (t *Transport) LocalAddr() stdnet.Addr { return t.conn.LocalAddr() }

// Send queues msg for the peer and puts it on the wire at once. Messages to
// one peer arrive in order and exactly once while the peer stays up. Before
// the first handshake with the peer completes, messages wait (up to 64 MiB)
// and are sent when it does. Send does not wait for the peer: it fails with
// an error matching ErrPeerDown if the peer is known to be down or was
// refused, ErrUnknownPeer, ErrMessageTooLarge, ErrQueueFull or ErrClosed.
// Send does not keep msg.
func (t *Transport) Send(to NodeID, msg []byte) error {
	if t.closed.Load() {
		return ErrClosed
	}
	p := t.peers[to]
	if p == nil {
		return fmt.Errorf("%w: node %d is not in Config.Peers", ErrUnknownPeer, to)
	}
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrMessageTooLarge, len(msg), MaxMessageSize)
	}
	now := time.Now()
	p.mu.Lock()
	err := p.send(msg, now)
	p.mu.Unlock()
	// The timer may sleep until the next heartbeat; tail-loss probes and
	// retransmissions of what was just queued need it sooner. Moving the
	// timer earlier wakes no goroutine now (a poke would cost a thread
	// wake-up per message, which on two cores competes with the reader
	// and the peer's process); when it fires, tick plans the next wake.
	if err == nil {
		t.wakeBy(now.Add(tlpMin))
	}
	return err
}

// WaitPeers waits until the handshake with every peer has completed and
// all are up. When ctx ends first, the error (a *WaitError) names each
// missing peer and why it is missing.
func (t *Transport) WaitPeers(ctx context.Context) error {
	for {
		if t.closed.Load() {
			return ErrClosed
		}
		t.mu.Lock()
		ch := t.changed
		t.mu.Unlock()
		missing := t.missing()
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-t.done:
			return ErrClosed
		case <-ctx.Done():
			return &WaitError{Missing: t.missing(), Err: ctx.Err()}
		}
	}
}

// MissingPeer is a peer WaitPeers did not see come up.
type MissingPeer struct {
	ID     NodeID
	Addr   string
	Reason error
}

// WaitError is returned by WaitPeers when its context ends first.
type WaitError struct {
	Missing []MissingPeer
	Err     error // the context's error
}

// Error names every missing peer and why it is missing.
func (e *WaitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "net: %d peer(s) not up", len(e.Missing))
	for i, m := range e.Missing {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(&b, "%snode %d at %s: %v", sep, m.ID, m.Addr, m.Reason)
	}
	fmt.Fprintf(&b, " (%v)", e.Err)
	return b.String()
}

// Unwrap returns the context's error and every peer's reason.
func (e *WaitError) Unwrap() []error {
	errs := []error{e.Err}
	for _, m := range e.Missing {
		errs = append(errs, m.Reason)
	}
	return errs
}

func (t *Transport) missing() []MissingPeer {
	var out []MissingPeer
	for _, p := range t.order {
		p.mu.Lock()
		if p.state != stUp {
			out = append(out, MissingPeer{ID: p.id, Addr: p.addr.String(), Reason: p.whyNotUp()})
		}
		p.mu.Unlock()
	}
	return out
}

// PeerStatus describes one peer.
type PeerStatus struct {
	ID    NodeID
	Addr  string
	Up    bool
	State string // "connecting", "up", "down" or "refused"
	// Err says why the peer is not up (nil when up).
	Err error `json:"-"`
	// Reason is Err's message, for JSON ("" when up).
	Reason string `json:",omitempty"`
	// LastHeard is when the last authenticated datagram arrived.
	LastHeard time.Time
	// RTT is the last ping round trip (zero before the first pong).
	RTT time.Duration
	// Sessions counts the handshakes completed with the peer.
	Sessions uint64
	// Datagram and byte counters, for both directions.
	BytesIn, BytesOut, PacketsIn, PacketsOut uint64
	// Retransmits counts KCP data segments sent more than once.
	Retransmits uint64
	// MessagesOut counts the messages Send accepted for the peer while
	// its session was up; SegmentsOut the KCP data segments that carried
	// them, each counted once. Small messages sent while corked share
	// segments (see Cork).
	MessagesOut, SegmentsOut uint64
	// AuthFailures counts datagrams that failed authentication.
	AuthFailures uint64
	// Dropped counts authenticated datagrams dropped as stale (another
	// session), replayed or duplicated, or malformed.
	Dropped uint64
	// FECRecovered counts datagrams rebuilt from parity.
	FECRecovered uint64
}

// Peers returns the status of every peer, ordered by id.
func (t *Transport) Peers() []PeerStatus {
	out := make([]PeerStatus, 0, len(t.order))
	for _, p := range t.order {
		p.mu.Lock()
		s := p.stats
		s.ID, s.Addr, s.Up, s.State = p.id, p.addr.String(), p.state == stUp, p.state.String()
		if !s.Up {
			s.Err = p.whyNotUp()
			s.Reason = s.Err.Error()
		}
		s.LastHeard, s.RTT = p.lastHeard, p.rtt
		p.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// Stats counts datagrams that could not be attributed to a peer.
type Stats struct {
	// UnknownSender: datagrams claiming a node id not in Config.Peers.
	UnknownSender uint64
	// Misaddressed: datagrams addressed to another node id.
	Misaddressed uint64
	// Malformed: datagrams whose header could not be decoded.
	Malformed uint64
	// Impostor: datagrams claiming a peer's id from an address other than
	// the one configured for it.
	Impostor uint64
}

// Stats returns counters of datagrams no peer could be charged with.
func (t *Transport) Stats() Stats {
	return Stats{UnknownSender: t.unknownSender.Load(), Misaddressed: t.misaddressed.Load(), Malformed: t.malformed.Load(), Impostor: t.impostor.Load()}
}

// Close says goodbye to the peers that are up, closes the socket and waits
// for the transport's goroutines. Messages not yet acknowledged are lost.
// Close must not be called from Handler or OnPeer; a driven transport is
// closed by the goroutine that drives it, or once it has stopped.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		t.closed.Store(true) // no more events
		for _, p := range t.order {
			p.mu.Lock()
			if p.state == stUp {
				p.flushDatagram() // delayed ACKs
				p.sendControl(frameBye, nil)
			}
			p.down(ErrClosed, true)
			p.mu.Unlock()
		}
		close(t.done)
		t.closeErr = t.conn.Close()
		t.wg.Wait()
	})
	return t.closeErr
}

// wakeBy makes the timer goroutine run no later than at; in driven mode it
// moves Deadline.
func (t *Transport) wakeBy(at time.Time) {
	ns := at.UnixNano()
	if t.timerNext.Load() <= ns {
		return
	}
	if t.driven {
		for {
			old := t.timerNext.Load()
			if old <= ns || t.timerNext.CompareAndSwap(old, ns) {
				return
			}
		}
	}
	t.timerMu.Lock()
	if t.timerNext.Load() > ns {
		t.timerNext.Store(ns)
		t.timer.Reset(time.Until(at))
	}
	t.timerMu.Unlock()
}

// poke makes the timer goroutine run now (in driven mode: Tick is due).
func (t *Transport) poke() {
	if t.driven {
		t.wakeBy(time.Unix(0, 0))
		return
	}
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *Transport) notifyChanged() {
	t.mu.Lock()
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

func (t *Transport) emit(ev PeerEvent) {
	if t.cfg.OnPeer == nil || t.closed.Load() {
		return
	}
	t.evMu.Lock()
	t.evq = append(t.evq, ev)
	t.evMu.Unlock()
	t.evPending.Add(1)
}

// deliverEvents calls OnPeer for queued events, in order, one at a time.
// Callers hold no peer lock.
func (t *Transport) deliverEvents() {
	if t.evPending.Load() == 0 {
		return
	}
	t.dlvMu.Lock()
	defer t.dlvMu.Unlock()
	for {
		t.evMu.Lock()
		if len(t.evq) == 0 {
			t.evMu.Unlock()
			return
		}
		ev := t.evq[0]
		t.evq = t.evq[1:]
		t.evMu.Unlock()
		t.evPending.Add(-1)
		t.cfg.OnPeer(ev)
	}
}

// maxLogKeys bounds the memory warnOnce spends on remembering what it
// logged, against datagrams sprayed from many addresses.
const maxLogKeys = 4096

// warnOnce logs a warning the first time key is seen.
func (t *Transport) warnOnce(key, msg string, args ...any) {
	t.logMu.Lock()
	seen := t.logged[key]
	full := len(t.logged) >= maxLogKeys
	if !seen && !full {
		t.logged[key] = true
	}
	t.logMu.Unlock()
	switch {
	case !seen && !full:
		t.log.Warn(msg, args...)
	case full:
		t.warnOnceFull.Do(func() {
			t.log.Warn("too many distinct warnings; further ones are not logged (counters in Peers and Stats go on)")
		})
	}
}

// srcAddr is where a datagram came from, in whichever form the socket gave.
type srcAddr struct {
	ap netip.AddrPort
	a  stdnet.Addr
}

// port returns the address as an unmapped netip.AddrPort.
func (s srcAddr) port() netip.AddrPort {
	ap := s.ap
	if s.a != nil {
		if ua, ok := s.a.(*stdnet.UDPAddr); ok {
			ap = ua.AddrPort()
		}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (s srcAddr) String() string {
	if s.a != nil {
		return s.a.String()
	}
	return s.ap.String()
}

func (t *Transport) readLoop() {
	defer t.wg.Done()
	buf := make([]byte, MaxMTU+1)
	var (
		failures int
		deadline time.Time // read deadline in force
	)
	for {
		var (
			n   int
			src srcAddr
			err error
		)
		// Keep the read deadline at or before the first delayed ACK. A
		// deadline left over from ACKs that went out with data costs one
		// spurious wake-up; clearing it each time would cost two timer
		// updates per message.
		if len(t.ackPeers) > 0 {
			want := t.ackTimer(time.Now())
			if !want.IsZero() && (deadline.IsZero() || want.Before(deadline)) {
				t.conn.SetReadDeadline(want)
				deadline = want
			}
		}
		if t.udp != nil {
			n, src.ap, err = t.udp.ReadFromUDPAddrPort(buf)
		} else {
			n, src.a, err = t.conn.ReadFrom(buf)
		}
		if err != nil {
			if t.closed.Load() || errors.Is(err, stdnet.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Delayed ACKs are due; the next deadline, if any, is
				// set above.
				deadline = t.ackTimer(time.Now())
				t.conn.SetReadDeadline(deadline)
				continue
			}
			t.warnOnce("read-error", "reading the UDP socket failed; retrying", "err", err)
			if failures++; failures > 100 {
				time.Sleep(time.Millisecond)
			}
			continue
		}
		failures = 0
		t.handleDatagram(buf[:n], src)
	}
}

func (t *Transport) handleDatagram(b []byte, src srcAddr) {
	h, err := decodeHeader(b)
	if err != nil {
		t.malformed.Add(1)
		t.warnOnce("malformed|"+src.String(), "dropping undecodable datagrams", "from", src.String(), "err", err)
		return
	}
	p := t.peers[h.from]
	if p == nil {
		t.unknownSender.Add(1)
		t.warnOnce(fmt.Sprintf("unknown|%d|%s", h.from, src), "dropping datagrams from a node id not in Peers",
			"claimed_id", h.from, "from", src.String())
		return
	}
	if src.port() != p.ap {
		// A node id belongs to the address it is configured at: another
		// process with the cluster key claiming it (a second daemon
		// started with the same id, a replay from elsewhere) must not
		// disturb the live session.
		t.impostor.Add(1)
		t.warnOnce(fmt.Sprintf("impostor|%d|%s", h.from, src), "dropping datagrams from a process that claims to be node "+strconv.Itoa(int(h.from))+" from another address (two daemons with one id?)",
			"claimed_id", h.from, "from", src.String(), "configured", p.ap.String())
		return
	}
	if h.to != t.cfg.ID {
		t.misaddressed.Add(1)
		t.warnOnce(fmt.Sprintf("misaddressed|%d|%s", h.to, src), "dropping datagrams addressed to another node id (check the cluster's address list)",
			"to", h.to, "claimed_id", h.from, "from", src.String())
		return
	}
	if h.kind == kindHello {
		p.onHelloDatagram(h, b, src)
		t.deliverEvents()
		return
	}
	msgs := p.onSessionDatagram(h, b, src)
	t.deliverEvents()
	if len(msgs) > 0 {
		if t.cfg.Handler != nil {
			for _, m := range msgs {
				t.cfg.Handler(p.id, m)
			}
		}
		clear(msgs)
	}
	// Acknowledge, unless a reply sent by the handler already did.
	now := time.Now()
	p.mu.Lock()
	wait := p.flushACKs(now)
	p.mu.Unlock()
	if wait && !slices.Contains(t.ackPeers, p) {
		t.ackPeers = append(t.ackPeers, p)
		if t.driven {
			p.mu.Lock()
			dl := p.ackDeadline
			p.mu.Unlock()
			t.wakeBy(dl)
		}
	}
}

// ackTimer returns when the reader must wake to send delayed ACKs, and
// sends those already due.
func (t *Transport) ackTimer(now time.Time) time.Time {
	var next time.Time
	keep := t.ackPeers[:0]
	for _, p := range t.ackPeers {
		p.mu.Lock()
		p.flushDelayedACKs(now)
		dl := p.ackDeadline
		p.mu.Unlock()
		if !dl.IsZero() {
			keep = append(keep, p)
			if next.IsZero() || dl.Before(next) {
				next = dl
			}
		}
	}
	clear(t.ackPeers[len(keep):])
	t.ackPeers = keep
	return next
}

const minTimerWait = time.Millisecond

// tickPeers runs every peer's timers and delivers the events they raised.
// It returns how long until they need to run again (at least
// minTimerWait, so that a peer whose timer is due keeps no thread busy).
func (t *Transport) tickPeers(now time.Time) time.Duration {
	next := t.cfg.HeartbeatInterval
	for _, p := range t.order {
		p.mu.Lock()
		next = min(next, p.tick(now))
		p.mu.Unlock()
	}
	t.deliverEvents()
	return max(next, minTimerWait)
}

// Cork makes Send queue messages instead of sending each at once, until
// Uncork: the messages of one batch of work (the replies to every request
// that one wake-up read, the requests of a read-ahead) then go in as few
// datagrams as the MTU allows, and the small ones to the same peer (up to
// 512 bytes each) travel as one KCP message, so that they share a KCP
// segment too; the receiver's Handler still sees each message on its own,
// in order. A caller that corks must uncork before it waits for anything.
func (t *Transport) Cork() { t.corked.Store(true) }

// Uncork sends what Send queued since Cork.
func (t *Transport) Uncork() {
	t.corked.Store(false)
	t.corkMu.Lock()
	peers := t.corkedPeers
	t.corkedPeers, t.corkSpare = t.corkSpare[:0], nil
	t.corkMu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		p.corked = false
		if p.state == stUp {
			if err := p.flushBatch(); err != nil {
				t.log.Error("dropping batched messages", "peer", p.id, "err", err)
			}
			p.flushSent()
		}
		p.mu.Unlock()
	}
	clear(peers)
	t.corkMu.Lock()
	t.corkSpare = peers[:0]
	t.corkMu.Unlock()
}

// corkPeer notes that p has messages waiting for Uncork. Called with p.mu
// held.
func (t *Transport) corkPeer(p *peer) {
	if p.corked {
		return
	}
	p.corked = true
	t.corkMu.Lock()
	t.corkedPeers = append(t.corkedPeers, p)
	t.corkMu.Unlock()
}

// MTU returns the largest datagram the transport sends (Config.MTU, or
// the default it picked).
func (t *Transport) MTU() int { return t.cfg.MTU }

// Fd returns the descriptor of the transport's UDP socket, for the event
// loop of a driven transport to wait on (readable: call Receive). It is -1
// unless Config.Driven was set. The transport owns it: the caller must not
// read, write or close it.
func (t *Transport) Fd() int { return t.fd }

// Deadline returns when a driven transport next needs Tick: retransmissions,
// delayed acknowledgements, heartbeats and handshakes. Send may move it
// earlier from any goroutine; an event loop that computed its wait from an
// older value must recheck Deadline after it publishes its own wake-up time
// (so that a concurrent Send either sees that time or the loop sees the new
// deadline).
func (t *Transport) Deadline() time.Time { return time.Unix(0, t.timerNext.Load()) }

// Tick runs a driven transport's timers if Deadline has come, calling
// OnPeer for the events they raise, and returns the next Deadline. Only the
// goroutine that calls Receive may call it.
func (t *Transport) Tick(now time.Time) time.Time {
	if !t.driven || t.closed.Load() {
		return t.Deadline()
	}
	if now.UnixNano() < t.timerNext.Load() {
		return t.Deadline()
	}
	t.timerNext.Store(math.MaxInt64)
	next := now.Add(t.tickPeers(now))
	if len(t.ackPeers) > 0 {
		if ack := t.ackTimer(now); !ack.IsZero() && ack.Before(next) {
			next = ack
		}
	}
	t.wakeBy(next)
	return t.Deadline()
}

// rxBatch is how many datagrams Receive reads with one system call.
const rxBatch = 8

// Receive reads and serves the datagrams waiting on a driven transport's
// socket, calling Handler and OnPeer, until none waits or max have been
// read; it returns how many it read. It never blocks. Only one goroutine
// may call it (the one that calls Tick).
func (t *Transport) Receive(max int) int {
	if !t.driven {
		return 0
	}
	for i := 0; i < max; {
		if t.closed.Load() {
			return i
		}
		want := min(max-i, rxBatch)
		k, err := t.rxBatch.read(t.fd, want)
		if err != nil {
			if err != errWouldBlock {
				t.warnOnce("read-error", "reading the UDP socket failed", "err", err)
			}
			return i
		}
		for j := range k {
			b, src := t.rxBatch.datagram(j)
			t.handleDatagram(b, srcAddr{ap: src})
		}
		i += k
		if k < want {
			return i // the socket was empty after these
		}
	}
	return max
}

func (t *Transport) timerLoop() {
	defer t.wg.Done()
	defer t.timer.Stop()
	for {
		select {
		case <-t.done:
			return
		case <-t.timer.C:
		case <-t.wake:
		}
		// Until the next wake is planned below, a Send must move the
		// timer itself (wakeBy): tick may have passed its peer already.
		t.timerMu.Lock()
		t.timerNext.Store(math.MaxInt64)
		t.timerMu.Unlock()
		now := time.Now()
		next := t.tickPeers(now)
		t.timerMu.Lock()
		at := min(now.Add(next).UnixNano(), t.timerNext.Load())
		t.timerNext.Store(at)
		t.timer.Reset(time.Duration(at - time.Now().UnixNano()))
		t.timerMu.Unlock()
	}
}
