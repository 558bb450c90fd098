package net

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	stdnet "net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var (
	testGeometry = Geometry{Nodes: 3, PageSize: 4096, RegionSize: 1 << 30, Base: 0x600000000000}
	testKey      = []byte("0123456789abcdef0123456789abcdef")
)

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// received is one message a test node got.
type received struct {
	from NodeID
	msg  []byte
}

// testNode is a Transport with channels of what it received.
type testNode struct {
	*Transport
	id     NodeID
	addr   string
	msgs   chan received
	events chan PeerEvent
	log    *logBuffer
	fault  *FaultConn

	stopDrive func() // stops the driver of a driven transport
}

// freeAddrs reserves n loopback UDP addresses.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		c, err := stdnet.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = c.LocalAddr().String()
		defer c.Close()
	}
	return addrs
}

// startNode starts node id of a cluster whose addresses are addrs. mod may
// adjust the configuration.
func startNode(t *testing.T, id NodeID, addrs []string, mod func(*Config)) *testNode {
	t.Helper()
	n := &testNode{
		id: id, addr: addrs[id],
		msgs:   make(chan received, 100000),
		events: make(chan PeerEvent, 1000),
		log:    &logBuffer{},
	}
	peers := make(map[NodeID]string)
	for i, a := range addrs {
		if NodeID(i) != id {
			peers[NodeID(i)] = a
		}
	}
	cfg := Config{
		ID: id, Addr: addrs[id], Peers: peers, Key: testKey, Geometry: testGeometry,
		// msg is the transport's once the handler returns.
		Handler: func(from NodeID, msg []byte) { n.msgs <- received{from, bytes.Clone(msg)} },
		OnPeer: func(ev PeerEvent) {
			select {
			case n.events <- ev:
			default: // a storm of events (a test that fails) must not block the transport
			}
		},
		Logger: slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		WrapConn: func(c stdnet.PacketConn) stdnet.PacketConn {
			n.fault = NewFaultConn(c, Faults{Seed: int64(id)})
			return n.fault
		},
	}
	cfg.Driven = drivenTests
	if mod != nil {
		mod(&cfg)
	}
	tr, err := Listen(cfg)
	if err != nil {
		t.Fatalf("Listen node %d: %v", id, err)
	}
	n.Transport = tr
	t.Cleanup(func() { tr.Close() })
	if cfg.Driven {
		n.stopDrive = drive(t, tr)
	}
	return n
}

// Close stops the node's driver, if any, then its transport: a driven
// transport is closed by its loop or after it.
func (n *testNode) Close() error {
	if n.stopDrive != nil {
		n.stopDrive()
	}
	return n.Transport.Close()
}

// drivenTests makes startNode start driven transports, served by drive.
var drivenTests bool

// drive serves a driven transport the way an event loop does: it waits
// until the socket is readable or the deadline comes, then calls Receive
// and Tick. The wait is capped at a millisecond because Send, called by
// the tests from other goroutines, does not wake it. It stops before the
// transport is closed (cleanups run last-in, first-out), or when the
// returned function is called.
func drive(t *testing.T, tr *Transport) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(tr.Fd()), Events: unix.POLLIN}}
		for {
			select {
			case <-quit:
				return
			default:
			}
			ms := 0
			if time.Until(tr.Deadline()) > 0 {
				ms = 1
			}
			unix.Poll(fds, ms)
			tr.Receive(64)
			tr.Tick(time.Now())
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return stop
}

// TestDriven runs transport tests with driven transports: no goroutine of
// the transport's own, the socket read by Receive, timers run by Tick.
func TestDriven(t *testing.T) {
	drivenTests = true
	t.Cleanup(func() { drivenTests = false })
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"exchange", TestExchangeInOrder},
		{"queued before handshake", TestMessagesBeforeHandshakeAreQueued},
		{"wrong key", TestWrongKeyRefused},
		{"close and restart", TestPeerCloseAndRestart},
		{"crash and restart", TestCrashedPeerRestartStartsNewSession},
		{"lossy", TestLossyNetwork},
		{"forged datagrams", TestForgedDatagramsIgnored},
		{"replayed datagrams", TestReplayedDatagramsKeepSession},
	} {
		t.Run(tc.name, tc.test)
	}
}

func startCluster(t *testing.T, size int, mod func(NodeID, *Config)) []*testNode {
	t.Helper()
	addrs := freeAddrs(t, size)
	nodes := make([]*testNode, size)
	for i := range nodes {
		id := NodeID(i)
		nodes[i] = startNode(t, id, addrs, func(c *Config) {
			if mod != nil {
				mod(id, c)
			}
		})
	}
	return nodes
}

func waitAll(t *testing.T, nodes []*testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range nodes {
		if err := n.WaitPeers(ctx); err != nil {
			t.Fatalf("node %d: %v", n.id, err)
		}
	}
}

// waitEvent waits for an event of the given kind about peer.
func (n *testNode) waitEvent(t *testing.T, peer NodeID, kind PeerEventKind, timeout time.Duration) PeerEvent {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-n.events:
			if ev.Peer == peer && ev.Kind == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("node %d: no %v event about node %d within %v", n.id, kind, peer, timeout)
		}
	}
}

// makeMsg builds a message with a sequence number and a size-dependent,
// checkable body.
func makeMsg(seq uint32, size int) []byte {
	size = max(size, 8)
	m := make([]byte, size)
	binary.BigEndian.PutUint32(m, seq)
	binary.BigEndian.PutUint32(m[4:], uint32(size))
	for i := 8; i < size; i++ {
		m[i] = byte(seq) ^ byte(i*7)
	}
	return m
}

func checkMsg(m []byte) (seq uint32, err error) {
	if len(m) < 8 {
		return 0, fmt.Errorf("message of %d bytes", len(m))
	}
	seq = binary.BigEndian.Uint32(m)
	if n := binary.BigEndian.Uint32(m[4:]); int(n) != len(m) {
		return seq, fmt.Errorf("message %d: %d bytes, header says %d", seq, len(m), n)
	}
	for i := 8; i < len(m); i++ {
		if m[i] != byte(seq)^byte(i*7) {
			return seq, fmt.Errorf("message %d: byte %d corrupt", seq, i)
		}
	}
	return seq, nil
}

// sizes cycles through small messages, 4 KiB pages, messages larger than
// the MTU and, now and then, a message of several KCP messages.
func msgSize(seq uint32, large bool) int {
	switch {
	case large && seq%97 == 13:
		return 400 << 10 // split into several KCP messages
	case seq%10 == 3:
		return 40 << 10 // > LoopbackMTU: several datagrams
	case seq%3 == 0:
		return 4096
	}
	return 8 + int(seq%200)
}

// exchange has every node send count messages to every other node
// concurrently, then checks that each node received each sender's
// messages exactly once and in order.
func exchange(t *testing.T, nodes []*testNode, count int, large bool, timeout time.Duration) {
	t.Helper()
	var wg sync.WaitGroup
	for _, n := range nodes {
		for _, m := range nodes {
			if m == n {
				continue
			}
			wg.Add(1)
			go func(from *testNode, to NodeID) {
				defer wg.Done()
				for i := 0; i < count; i++ {
					if err := from.Send(to, makeMsg(uint32(i), msgSize(uint32(i), large))); err != nil {
						t.Errorf("node %d send %d to %d: %v", from.id, i, to, err)
						return
					}
				}
			}(n, m.id)
		}
	}
	wg.Wait()
	deadline := time.After(timeout)
	for _, n := range nodes {
		next := make(map[NodeID]uint32)
		want := count * (len(nodes) - 1)
		for got := 0; got < want; got++ {
			select {
			case r := <-n.msgs:
				seq, err := checkMsg(r.msg)
				if err != nil {
					t.Fatalf("node %d from %d: %v", n.id, r.from, err)
				}
				if seq != next[r.from] {
					t.Fatalf("node %d from %d: got message %d, want %d", n.id, r.from, seq, next[r.from])
				}
				if len(r.msg) != max(msgSize(seq, large), 8) {
					t.Fatalf("node %d from %d: message %d has %d bytes, want %d", n.id, r.from, seq, len(r.msg), msgSize(seq, large))
				}
				next[r.from]++
			case <-deadline:
				t.Fatalf("node %d: got %d of %d messages (%v); peers: %+v", n.id, got, want, next, n.Peers())
			}
		}
	}
}

func TestExchangeInOrder(t *testing.T) {
	tests := []struct {
		name  string
		nodes int
		count int
		large bool
		mtu   int
	}{
		{"two nodes", 2, 400, true, 0},
		{"three nodes", 3, 200, false, 0},
		{"two nodes at MTU 1400", 2, 200, false, DefaultMTU},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodes := startCluster(t, tc.nodes, func(_ NodeID, c *Config) { c.MTU = tc.mtu })
			waitAll(t, nodes)
			exchange(t, nodes, tc.count, tc.large, 20*time.Second)
			for _, n := range nodes {
				for _, st := range n.Peers() {
					if !st.Up || st.Sessions != 1 || st.AuthFailures != 0 || st.PacketsIn == 0 || st.BytesOut == 0 {
						t.Errorf("node %d: peer status %+v", n.id, st)
					}
				}
			}
		})
	}
}

func TestMessagesBeforeHandshakeAreQueued(t *testing.T) {
	addrs := freeAddrs(t, 2)
	a := startNode(t, 0, addrs, nil)
	for i := 0; i < 5; i++ {
		if err := a.Send(1, makeMsg(uint32(i), 4096)); err != nil {
			t.Fatalf("send before the peer exists: %v", err)
		}
	}
	b := startNode(t, 1, addrs, nil)
	for i := 0; i < 5; i++ {
		select {
		case r := <-b.msgs:
			if seq, err := checkMsg(r.msg); err != nil || seq != uint32(i) {
				t.Fatalf("got message %d (%v), want %d", seq, err, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("queued message %d never arrived", i)
		}
	}
}

func TestWrongKeyRefused(t *testing.T) {
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		if id == 1 {
			c.Key = []byte("another cluster's key, 32 bytes!")
		}
	})
	for _, n := range nodes {
		// Messages sent to the refused peer must never arrive.
		n.Send(1-n.id, []byte("must not be delivered"))
	}
	for _, n := range nodes {
		ev := n.waitEvent(t, 1-n.id, PeerRefused, 5*time.Second)
		if !errors.Is(ev.Err, ErrAuth) {
			t.Errorf("node %d: refusal %v does not wrap ErrAuth", n.id, ev.Err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := nodes[0].WaitPeers(ctx)
	if !errors.Is(err, ErrAuth) || !errors.Is(err, ErrPeerRefused) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitPeers = %v, want refused, ErrAuth and the deadline", err)
	}
	if err := nodes[0].Send(1, []byte("x")); !errors.Is(err, ErrPeerDown) || !errors.Is(err, ErrAuth) {
		t.Errorf("Send to a refused peer = %v, want ErrPeerDown and ErrAuth", err)
	}
	for _, n := range nodes {
		select {
		case r := <-n.msgs:
			t.Fatalf("node %d delivered %q from a peer with another key", n.id, r.msg)
		default:
		}
		st := n.Peers()[0]
		if st.Up || st.AuthFailures < 2 {
			t.Errorf("node %d: status %+v; want down with several auth failures", n.id, st)
		}
		if c := strings.Count(n.log.String(), "fail authentication"); c != 1 {
			t.Errorf("node %d logged the authentication failure %d times, want once per peer and address:\n%s", n.id, c, n.log)
		}
	}
}

func TestGeometryMismatchRefused(t *testing.T) {
	other := testGeometry
	other.PageSize = 16384
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		if id == 1 {
			c.Geometry = other
		}
	})
	for _, n := range nodes {
		ev := n.waitEvent(t, 1-n.id, PeerRefused, 5*time.Second)
		if !errors.Is(ev.Err, ErrGeometryMismatch) {
			t.Fatalf("node %d: refusal %v does not wrap ErrGeometryMismatch", n.id, ev.Err)
		}
		msg := ev.Err.Error()
		if !strings.Contains(msg, testGeometry.String()) || !strings.Contains(msg, other.String()) {
			t.Errorf("node %d: refusal %q does not name both geometries", n.id, msg)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := nodes[0].WaitPeers(ctx)
	if !errors.Is(err, ErrGeometryMismatch) || !strings.Contains(err.Error(), "PageSize:16384") {
		t.Errorf("WaitPeers = %v, want the geometry mismatch", err)
	}
}

func TestWaitPeersNamesMissingPeer(t *testing.T) {
	addrs := freeAddrs(t, 3)
	// Node 1 runs; node 2 never starts.
	a := startNode(t, 0, addrs, nil)
	startNode(t, 1, addrs, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := a.WaitPeers(ctx)
	var we *WaitError
	if !errors.As(err, &we) {
		t.Fatalf("WaitPeers = %v, want a *WaitError", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnreachable) {
		t.Errorf("WaitPeers = %v, want the deadline and ErrUnreachable", err)
	}
	if len(we.Missing) != 1 || we.Missing[0].ID != 2 {
		t.Fatalf("missing = %+v, want only node 2", we.Missing)
	}
	for _, s := range []string{"node 2", addrs[2], "unreachable"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "node 1") {
		t.Errorf("error %q names node 1, which is up", err)
	}
}

func fastHeartbeats(_ NodeID, c *Config) {
	c.HeartbeatInterval = 10 * time.Millisecond
	c.DeadAfter = 150 * time.Millisecond
}

func TestPartitionDetectedAndHealed(t *testing.T) {
	nodes := startCluster(t, 2, fastHeartbeats)
	waitAll(t, nodes)
	a, b := nodes[0], nodes[1]
	a.fault.Partition(nil, true)
	b.fault.Partition(nil, true)
	for _, n := range nodes {
		ev := n.waitEvent(t, 1-n.id, PeerDown, 5*time.Second)
		if !errors.Is(ev.Err, ErrPeerSilent) {
			t.Errorf("node %d: down because %v, want ErrPeerSilent", n.id, ev.Err)
		}
	}
	if err := a.Send(1, []byte("x")); !errors.Is(err, ErrPeerDown) || !errors.Is(err, ErrPeerSilent) {
		t.Errorf("Send to a silent peer = %v, want ErrPeerDown", err)
	}
	a.fault.Partition(nil, false)
	b.fault.Partition(nil, false)
	for _, n := range nodes {
		n.waitEvent(t, 1-n.id, PeerUp, 5*time.Second)
	}
	waitAll(t, nodes)
	exchange(t, nodes, 50, false, 10*time.Second)
	for _, n := range nodes {
		if st := n.Peers()[0]; st.Sessions != 2 {
			t.Errorf("node %d: %d sessions, want 2 (one new session after the partition)", n.id, st.Sessions)
		}
	}
}

func TestPeerCloseAndRestart(t *testing.T) {
	addrs := freeAddrs(t, 2)
	a := startNode(t, 0, addrs, func(c *Config) { fastHeartbeats(0, c) })
	b := startNode(t, 1, addrs, func(c *Config) { fastHeartbeats(1, c) })
	waitAll(t, []*testNode{a, b})
	b.Close()
	ev := a.waitEvent(t, 1, PeerDown, 5*time.Second)
	if !errors.Is(ev.Err, ErrPeerClosed) {
		t.Errorf("down because %v, want ErrPeerClosed", ev.Err)
	}
	b2 := startNode(t, 1, addrs, func(c *Config) { fastHeartbeats(1, c) })
	a.waitEvent(t, 1, PeerUp, 5*time.Second)
	exchange(t, []*testNode{a, b2}, 50, false, 10*time.Second)
}

func TestCrashedPeerRestartStartsNewSession(t *testing.T) {
	addrs := freeAddrs(t, 2)
	// Long DeadAfter: the restart must be noticed by the new hello, not by
	// silence.
	slow := func(c *Config) { c.HeartbeatInterval, c.DeadAfter = 10*time.Millisecond, time.Minute }
	a := startNode(t, 0, addrs, slow)
	b := startNode(t, 1, addrs, slow)
	waitAll(t, []*testNode{a, b})
	b.fault.Partition(nil, true) // the goodbye is lost: a crash
	b.Close()
	b2 := startNode(t, 1, addrs, slow)
	ev := a.waitEvent(t, 1, PeerDown, 5*time.Second)
	if !errors.Is(ev.Err, ErrPeerRestarted) {
		t.Errorf("down because %v, want ErrPeerRestarted", ev.Err)
	}
	a.waitEvent(t, 1, PeerUp, 5*time.Second)
	exchange(t, []*testNode{a, b2}, 50, false, 10*time.Second)
}

func TestLossyNetwork(t *testing.T) {
	for _, fec := range []FECConfig{{}, {Data: 4, Parity: 2}} {
		t.Run(fmt.Sprintf("fec=%d+%d", fec.Data, fec.Parity), func(t *testing.T) {
			nodes := startCluster(t, 2, func(id NodeID, c *Config) {
				c.FEC = fec
				c.DeadAfter = 5 * time.Second
			})
			waitAll(t, nodes)
			for _, n := range nodes {
				n.fault.SetFaults(Faults{Loss: 0.10, Duplicate: 0.05, Reorder: 0.10, Delay: 500 * time.Microsecond})
			}
			exchange(t, nodes, 300, false, 40*time.Second)
			var fs FaultStats
			var retrans, recovered, dropped uint64
			for _, n := range nodes {
				s := n.fault.Stats()
				fs.Dropped += s.Dropped
				fs.Duplicated += s.Duplicated
				fs.Reordered += s.Reordered
				st := n.Peers()[0]
				retrans += st.Retransmits
				recovered += st.FECRecovered
				dropped += st.Dropped
				if st.Sessions != 1 {
					t.Errorf("node %d: %d sessions; loss must not break the session", n.id, st.Sessions)
				}
			}
			if fs.Dropped == 0 || fs.Duplicated == 0 || fs.Reordered == 0 {
				t.Fatalf("fault injection did not happen: %+v", fs)
			}
			if retrans == 0 && recovered == 0 {
				t.Errorf("datagrams were lost but nothing was retransmitted or recovered")
			}
			if fec.Data > 0 && recovered == 0 {
				t.Errorf("FEC on with %d datagrams lost, but none was rebuilt", fs.Dropped)
			}
			if fec.Data == 0 && recovered != 0 {
				t.Errorf("FEC off, but %d datagrams were rebuilt", recovered)
			}
			if dropped == 0 {
				t.Errorf("%d duplicates injected, but no datagram was dropped as a replay", fs.Duplicated)
			}
			t.Logf("faults %+v; retransmits %d, FEC recovered %d, duplicates dropped %d", fs, retrans, recovered, dropped)
		})
	}
}

func TestFECWithoutLoss(t *testing.T) {
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		if id == 0 {
			c.FEC = FECConfig{Data: 3, Parity: 1} // the ends need not agree
		}
	})
	waitAll(t, nodes)
	exchange(t, nodes, 200, true, 20*time.Second)
}

func TestSendFlushesImmediately(t *testing.T) {
	// Send must put the message on the wire before it returns, not at the
	// next KCP update (which would cost up to 10 ms per message).
	var mu sync.Mutex
	var big int
	counter := func(c stdnet.PacketConn) stdnet.PacketConn {
		return &writeObserver{PacketConn: c, f: func(n int) {
			if n > 3000 {
				mu.Lock()
				big++
				mu.Unlock()
			}
		}}
	}
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		c.WrapConn = counter
		c.HeartbeatInterval = time.Hour / 2 // keep the timer goroutine asleep
		c.DeadAfter = time.Hour
	})
	waitAll(t, nodes)
	// 10 messages of 3 segments stay within KCP's initial window of 32
	// segments, so no ACK is needed before each goes out.
	for i := 1; i <= 10; i++ {
		if err := nodes[0].Send(1, make([]byte, 3500)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		n := big
		mu.Unlock()
		if n != i {
			t.Fatalf("after %d sends, %d large datagrams were written; Send does not flush", i, n)
		}
	}
}

type writeObserver struct {
	stdnet.PacketConn
	f func(n int)
}

func (w *writeObserver) WriteTo(b []byte, addr stdnet.Addr) (int, error) {
	w.f(len(b))
	return w.PacketConn.WriteTo(b, addr)
}

func TestSendErrors(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	waitAll(t, nodes)
	a := nodes[0]
	if err := a.Send(7, []byte("x")); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("Send to an unknown node = %v, want ErrUnknownPeer", err)
	}
	if err := a.Send(1, make([]byte, MaxMessageSize+1)); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Send of a huge message = %v, want ErrMessageTooLarge", err)
	}
	if err := a.Send(1, nil); err != nil {
		t.Errorf("Send of an empty message: %v", err)
	}
	select {
	case r := <-nodes[1].msgs:
		if len(r.msg) != 0 {
			t.Errorf("empty message arrived with %d bytes", len(r.msg))
		}
	case <-time.After(5 * time.Second):
		t.Error("empty message never arrived")
	}
	a.Close()
	if err := a.Send(1, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}
	if err := a.WaitPeers(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitPeers after Close = %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestForgedDatagramsIgnored(t *testing.T) {
	nodes := startCluster(t, 2, nil)
	waitAll(t, nodes)
	a := nodes[0]
	c, err := stdnet.Dial("udp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewSource(1))
	hdr := func(kind byte, from, to NodeID) []byte {
		b := make([]byte, headerLen+40)
		rng.Read(b)
		(&dgHeader{kind: kind, from: from, to: to}).put(b)
		rng.Read(b[nonceOff:])
		return b
	}
	forged := [][]byte{
		{1, 2, 3},                              // too short
		append([]byte{9}, hdr(2, 1, 0)[1:]...), // bad version
		hdr(7, 1, 0),                           // bad kind
		hdr(kindHello, 5, 0),                   // unknown sender
		hdr(kindHello, 1, 0),                   // node 1, from another address
	}
	for _, b := range forged {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// From node 1's own address (written on its socket, under its
	// transport): the address is right, the rest is forged.
	fromPeer := [][]byte{
		hdr(kindHello, 1, 2),   // addressed elsewhere
		hdr(kindHello, 1, 0),   // bad MAC
		hdr(kindSession, 1, 0), // unknown session
	}
	to, err := stdnet.ResolveUDPAddr("udp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range fromPeer {
		if _, err := nodes[1].fault.PacketConn.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
	}
	// The session survives and still works.
	exchange(t, nodes, 20, false, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := a.Stats()
		st := a.Peers()[0]
		if s.Malformed >= 3 && s.UnknownSender >= 1 && s.Impostor >= 1 && s.Misaddressed >= 1 && st.AuthFailures >= 1 && st.Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, peer %+v: forged datagrams not all counted", s, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConfigValidation(t *testing.T) {
	good := Config{ID: 0, Addr: "127.0.0.1:0", Peers: map[NodeID]string{1: "127.0.0.1:9"}, Key: testKey, Geometry: testGeometry}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"short key", func(c *Config) { c.Key = []byte("short") }, "at least 16"},
		{"self in peers", func(c *Config) { c.Peers[0] = "127.0.0.1:10" }, "own id"},
		{"bad page size", func(c *Config) { c.Geometry.PageSize = 3000 }, "power of two"},
		{"region not pages", func(c *Config) { c.Geometry.RegionSize = 5000 }, "multiple of PageSize"},
		{"base unaligned", func(c *Config) { c.Geometry.Base = 12 }, "aligned"},
		{"too many peers", func(c *Config) { c.Geometry.Nodes = 1 }, "exceed"},
		{"peer without port", func(c *Config) { c.Peers[1] = "127.0.0.1" }, "peer 1"},
		{"duplicate peer address", func(c *Config) { c.Peers[2] = "127.0.0.1:9" }, "share the address"},
		{"tiny MTU", func(c *Config) { c.MTU = 100 }, "MTU"},
		{"half FEC", func(c *Config) { c.FEC = FECConfig{Data: 3} }, "FEC"},
		{"DeadAfter too short", func(c *Config) { c.HeartbeatInterval, c.DeadAfter = time.Second, time.Second }, "DeadAfter"},
		{"bad local address", func(c *Config) { c.Addr = "no such host:x" }, "local address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.Peers = map[NodeID]string{1: "127.0.0.1:9"}
			tc.mod(&c)
			tr, err := Listen(c)
			if err == nil {
				tr.Close()
				t.Fatal("Listen accepted a bad configuration")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	tr, err := Listen(good)
	if err != nil {
		t.Fatalf("good configuration: %v", err)
	}
	defer tr.Close()
	if tr.cfg.MTU != LoopbackMTU {
		t.Errorf("MTU on loopback = %d, want LoopbackMTU", tr.cfg.MTU)
	}
	if a, ok := tr.LocalAddr().(*stdnet.UDPAddr); !ok || a.Port == 0 {
		t.Errorf("LocalAddr = %v, want the bound port", tr.LocalAddr())
	}
}

func TestMeasureRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		kind string
		opts []RoundTripOption
	}{
		{RoundTripUDP, nil},
		{RoundTripKCP, nil},
		{RoundTripKCP, []RoundTripOption{WithLoss(0.1, 1), WithFEC(4, 2)}},
		{RoundTripKCPGo, []RoundTripOption{WithSizes(100, 8192)}},
		{RoundTripUDP2Proc, nil},
		{RoundTripKCP2Proc, nil},
		{RoundTripKCP2Proc, []RoundTripOption{WithSizes(100, 20000), WithMTU(1400)}},
	}
	for _, tc := range tests {
		d, err := MeasureRoundTrip(ctx, tc.kind, 50, append(tc.opts, WithWarmup(5))...)
		if err != nil {
			t.Fatalf("%s: %v", tc.kind, err)
		}
		if len(d) != 50 {
			t.Fatalf("%s: %d durations, want 50", tc.kind, len(d))
		}
		for _, x := range d {
			if x <= 0 {
				t.Fatalf("%s: non-positive round trip %v", tc.kind, x)
			}
		}
	}
	if _, err := MeasureRoundTrip(ctx, "carrier pigeon", 1); err == nil {
		t.Error("unknown kind accepted")
	}
	if _, err := MeasureRoundTrip(ctx, RoundTripUDP, 1, WithLoss(0.1, 1)); err == nil {
		t.Error("loss on raw UDP accepted")
	}
	if _, err := MeasureRoundTrip(ctx, RoundTripKCP2Proc, 1, WithFEC(4, 2)); err == nil {
		t.Error("FEC on kcp-2proc accepted")
	}
}

func TestOneWayTrafficIsAcknowledged(t *testing.T) {
	// Node 1 never sends data, so its ACKs cannot ride on replies: they
	// must still go out (after the short ACK delay), or node 0 would keep
	// its messages and retransmit them forever.
	nodes := startCluster(t, 2, nil)
	waitAll(t, nodes)
	for i := 0; i < 50; i++ {
		if err := nodes[0].Send(1, makeMsg(uint32(i), msgSize(uint32(i), false))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 50; i++ {
		select {
		case <-nodes[1].msgs:
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d never arrived", i)
		}
	}
	p := nodes[0].peers[1]
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		waiting := p.kcp.WaitSnd()
		p.mu.Unlock()
		if waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d segments still unacknowledged", waiting)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCorkSharesDatagrams(t *testing.T) {
	// Three pages sent while corked leave in one datagram at Uncork (the
	// loopback MTU holds three), and arrive whole and in order. Only
	// datagrams that carry a page are counted: hellos and ACKs of the
	// handshake may still be on their way.
	var mu sync.Mutex
	var pages, all3 int
	counter := func(c stdnet.PacketConn) stdnet.PacketConn {
		return &writeObserver{PacketConn: c, f: func(n int) {
			mu.Lock()
			if n > 4096 {
				pages++
			}
			if n > 3*4096 {
				all3++
			}
			mu.Unlock()
		}}
	}
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		c.WrapConn = counter
		c.HeartbeatInterval = time.Hour / 2 // no pings in the count
		c.DeadAfter = time.Hour
	})
	waitAll(t, nodes)
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return pages, all3
	}
	nodes[0].Cork()
	for i := 0; i < 3; i++ {
		if err := nodes[0].Send(1, makeMsg(uint32(i), 4096)); err != nil {
			t.Fatal(err)
		}
	}
	if p, _ := count(); p != 0 {
		t.Fatalf("%d datagrams with a page written while corked", p)
	}
	nodes[0].Uncork()
	if p, a := count(); p != 1 || a != 1 {
		t.Fatalf("Uncork wrote %d datagrams with a page (%d holding all three), want one", p, a)
	}
	receiveInOrder(t, nodes[1], 3)
}

// receiveInOrder takes n messages made by makeMsg with sequence numbers
// 0..n-1 from node's handler, in that order.
func receiveInOrder(t *testing.T, node *testNode, n int) {
	t.Helper()
	for i := range n {
		select {
		case r := <-node.msgs:
			if seq, err := checkMsg(r.msg); err != nil || seq != uint32(i) {
				t.Fatalf("got message %d (%v), want %d", seq, err, i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("message %d sent while corked never arrived", i)
		}
	}
}

func TestCorkBatchesSmallMessages(t *testing.T) {
	// Small messages sent while corked share one KCP message (so one
	// segment), a page between them goes on its own and keeps its place,
	// and the receiver sees every message whole, alone and in order.
	nodes := startCluster(t, 2, func(id NodeID, c *Config) {
		c.HeartbeatInterval = time.Hour / 2 // no pings in the count
		c.DeadAfter = time.Hour
	})
	waitAll(t, nodes)
	sizes := []int{60, 8, batchMsgMax, 200, 4096, 64, batchMsgMax + 1, 90, 100}
	// 4 small ones: 1 segment; the page: 3 segments of at most 1,448
	// bytes (loopback MTU); 64: 1; 513 goes alone: 1; 90 and 100: 1.
	const wantSegments = 1 + 3 + 1 + 1 + 1
	before := nodes[0].Peers()[0]
	nodes[0].Cork()
	for i, n := range sizes {
		if err := nodes[0].Send(1, makeMsg(uint32(i), n)); err != nil {
			t.Fatal(err)
		}
	}
	nodes[0].Uncork()
	receiveInOrder(t, nodes[1], len(sizes))
	after := nodes[0].Peers()[0]
	if got := after.MessagesOut - before.MessagesOut; got != uint64(len(sizes)) {
		t.Errorf("MessagesOut grew by %d, want %d", got, len(sizes))
	}
	if got := after.SegmentsOut - before.SegmentsOut; got != wantSegments {
		t.Errorf("%d messages took %d KCP segments, want %d", len(sizes), got, wantSegments)
	}
	// Uncorked, every message is its own KCP message.
	before = after
	for i := range 3 {
		if err := nodes[0].Send(1, makeMsg(uint32(i), 40)); err != nil {
			t.Fatal(err)
		}
		<-nodes[1].msgs
	}
	if got := nodes[0].Peers()[0].SegmentsOut - before.SegmentsOut; got != 3 {
		t.Errorf("3 messages sent uncorked took %d segments, want 3", got)
	}
}

// A second process with the cluster key that claims an existing node id
// from another address is refused: the live session goes on, and the
// impostor is logged once with both addresses.
func TestDuplicateNodeIDRefused(t *testing.T) {
	addrs := freeAddrs(t, 3)
	a := startNode(t, 0, addrs[:2], nil)
	b := startNode(t, 1, addrs[:2], nil)
	waitAll(t, []*testNode{a, b})
	// The impostor: node 1 again, at the third address, knowing node 0.
	imp := startNode(t, 1, []string{addrs[0], addrs[2]}, func(c *Config) {
		c.HeartbeatInterval = 5 * time.Millisecond
		c.DeadAfter = time.Minute
	})
	deadline := time.Now().Add(10 * time.Second)
	for a.Stats().Impostor < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("the impostor's hellos were not refused: %+v", a.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := a.Peers()[0]
	if !st.Up || st.Sessions != 1 {
		t.Fatalf("the live session with node 1 was disturbed: %+v", st)
	}
	if imp.Peers()[0].Up {
		t.Fatal("the impostor completed a handshake")
	}
	exchange(t, []*testNode{a, b}, 20, false, 10*time.Second)
	logs := a.log.String()
	if n := strings.Count(logs, "claims to be node 1"); n != 1 {
		t.Fatalf("the impostor was logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs, addrs[1]) || !strings.Contains(logs, addrs[2]) {
		t.Fatalf("the log does not name both addresses:\n%s", logs)
	}
}
