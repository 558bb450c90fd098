package net

import (
	"errors"
	stdnet "net"
	"sync"
	"testing"
	"time"
)

// sealRecord remembers every (key, AEAD nonce) pair one node seals with.
type sealRecord struct {
	mu    sync.Mutex
	seen  map[sealUse]int
	keys  map[[32]byte]bool
	dups  int
	first sealUse // the first pair used twice
}

type sealUse struct {
	key   [32]byte
	nonce [12]byte
}

// recordSeals records the (key, nonce) pairs node self seals with, from now
// until the test ends, when it fails the test if a pair was used twice.
// Start it before the nodes: the hook is removed after they are closed
// (cleanups run last-in, first-out).
func recordSeals(t *testing.T, self NodeID) *sealRecord {
	r := &sealRecord{seen: make(map[sealUse]int), keys: make(map[[32]byte]bool)}
	sealHook = func(from, _ NodeID, key [32]byte, nonce [12]byte) {
		if from != self {
			return
		}
		u := sealUse{key, nonce}
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.seen[u]++; r.seen[u] == 2 {
			if r.dups == 0 {
				r.first = u
			}
			r.dups++
		}
		r.keys[key] = true
	}
	t.Cleanup(func() {
		sealHook = nil
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.dups > 0 {
			t.Errorf("node %d used %d (key, nonce) pairs twice (AES-GCM nonce reuse), the first: key %x, nonce %x",
				self, r.dups, r.first.key[:8], r.first.nonce)
		}
	})
	return r
}

// counts returns how many (key, nonce) pairs and keys were used so far.
func (r *sealRecord) counts() (pairs, keys int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen), len(r.keys)
}

// datagramRecorder keeps a copy of every datagram written through it while
// recording.
type datagramRecorder struct {
	stdnet.PacketConn
	mu     sync.Mutex
	on     bool
	hellos [][]byte
	others [][]byte
}

func (r *datagramRecorder) WriteTo(b []byte, addr stdnet.Addr) (int, error) {
	r.mu.Lock()
	if r.on && len(b) > 1 {
		c := append([]byte(nil), b...)
		if b[1] == kindHello {
			r.hellos = append(r.hellos, c)
		} else {
			r.others = append(r.others, c)
		}
	}
	r.mu.Unlock()
	return r.PacketConn.WriteTo(b, addr)
}

func (r *datagramRecorder) captured() (hellos, others [][]byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hellos, r.others
}

// recording makes startNode's configuration record what the node writes
// into r (around the FaultConn, so what the FaultConn drops is recorded
// too).
func recording(r *datagramRecorder) func(*Config) {
	return func(c *Config) {
		inner := c.WrapConn
		c.WrapConn = func(pc stdnet.PacketConn) stdnet.PacketConn {
			r.PacketConn = inner(pc)
			return r
		}
	}
}

// drainEvents returns the events a node has raised so far.
func (n *testNode) drainEvents() []PeerEvent {
	var evs []PeerEvent
	for {
		select {
		case ev := <-n.events:
			evs = append(evs, ev)
		default:
			return evs
		}
	}
}

// replay writes each datagram to node to from node from's own address (on
// from's socket, beneath its transport), as an attacker on the path would.
func replay(t *testing.T, from, to *testNode, dgs [][]byte) {
	t.Helper()
	replayOn(t, from.fault.PacketConn, to, dgs)
}

func replayOn(t *testing.T, c stdnet.PacketConn, to *testNode, dgs [][]byte) {
	t.Helper()
	addr, err := stdnet.ResolveUDPAddr("udp", to.addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range dgs {
		if _, err := c.WriteTo(b, addr); err != nil {
			t.Errorf("replaying: %v", err)
			return
		}
	}
}

// startRestartedPair starts nodes 0 and 1, has them exchange messages while
// node 1 records what it sends, crashes node 1 and starts it again (a new
// process with the same key file and address, recording too), and returns
// node 0, the new node 1 and the recording: the hellos and session
// datagrams of the first run and of the new session's start.
func startRestartedPair(t *testing.T, mod func(*Config)) (a, b *testNode, rec *datagramRecorder) {
	t.Helper()
	addrs := freeAddrs(t, 2)
	rec = &datagramRecorder{on: true}
	withRec := func(c *Config) {
		if mod != nil {
			mod(c)
		}
		recording(rec)(c)
	}
	a = startNode(t, 0, addrs, mod)
	b1 := startNode(t, 1, addrs, withRec)
	waitAll(t, []*testNode{a, b1})
	exchange(t, []*testNode{a, b1}, 50, false, 10*time.Second)
	b1.fault.Partition(nil, true) // no goodbye: a crash
	b1.Close()
	a.drainEvents()
	b = startNode(t, 1, addrs, withRec)
	if ev := a.waitEvent(t, 1, PeerDown, 5*time.Second); !errors.Is(ev.Err, ErrPeerRestarted) {
		t.Fatalf("node 0: down because %v, want ErrPeerRestarted", ev.Err)
	}
	a.waitEvent(t, 1, PeerUp, 5*time.Second)
	waitAll(t, []*testNode{a, b})
	exchange(t, []*testNode{a, b}, 20, false, 10*time.Second)
	if st := a.Peers()[0]; !st.Up || st.Sessions != 2 {
		t.Fatalf("after node 1 restarted: %+v, want up in a second session", st)
	}
	return a, b, rec
}

// TestReplayedDatagramsKeepSession replays every datagram node 1 sent,
// hellos and session datagrams of its previous run and of the live
// session, at node 0 many times while the live session carries messages:
// the session must go on undisturbed, and node 0 must never seal two
// datagrams with one (key, nonce) pair.
//
// Before sessions were keyed with fresh secrets on both sides and hellos
// had to be fresh to end a live session, this failed: a replayed hello of
// the previous run reset the live session (Sessions went up), and the real
// node 1's next hello derived the same keys again, with the send counter
// back at 0, so node 0 used (key, nonce) pairs twice.
func TestReplayedDatagramsKeepSession(t *testing.T) {
	seals := recordSeals(t, 0)
	a, b, rec := startRestartedPair(t, func(c *Config) {
		// Many hellos and pings to capture; a long DeadAfter, so that
		// the restart is noticed by the handshake.
		c.HeartbeatInterval, c.DeadAfter = 10*time.Millisecond, time.Minute
	})
	hellos, others := rec.captured()
	if len(hellos) < 2 || len(others) < 10 {
		t.Fatalf("captured %d hellos and %d session datagrams; want more to replay", len(hellos), len(others))
	}
	before := a.Peers()[0]
	a.drainEvents()
	b.drainEvents()

	var wg sync.WaitGroup
	stop := make(chan struct{})
	defer func() {
		close(stop)
		wg.Wait()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 50; i++ {
			select {
			case <-stop:
				return
			default:
			}
			replay(t, b, a, hellos)
			replay(t, b, a, others)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	exchange(t, []*testNode{a, b}, 200, false, 20*time.Second)
	wg.Wait()
	// And the messages still flow after the last replay.
	exchange(t, []*testNode{a, b}, 20, false, 10*time.Second)

	after := a.Peers()[0]
	if !after.Up || after.Sessions != before.Sessions {
		t.Errorf("node 0's session with node 1 was reset by replays: before %+v, after %+v", before, after)
	}
	if st := b.Peers()[0]; !st.Up || st.Sessions != 1 {
		t.Errorf("node 1's session was reset: %+v", st)
	}
	for _, n := range []*testNode{a, b} {
		for _, ev := range n.drainEvents() {
			t.Errorf("node %d: event %v about node %d (%v) during the replays", n.id, ev.Kind, ev.Peer, ev.Err)
		}
	}
	if after.Dropped <= before.Dropped {
		t.Errorf("replayed session datagrams were not dropped: %+v", after)
	}
	pairs, keys := seals.counts()
	if pairs < 100 || keys != 2 {
		t.Errorf("node 0 sealed with %d (key, nonce) pairs under %d keys; want many, under one key per session (2)", pairs, keys)
	}
	t.Logf("replayed %d hellos and %d session datagrams 50 times; node 0 used %d (key, nonce) pairs under %d keys, none twice",
		len(hellos), len(others), pairs, keys)
}

// TestReplayedHelloEverySecond replays one hello of node 1's previous run at
// node 0 once a second, as in the report of the defect: the live session
// must not be reset, and once node 1 is gone the replays must not keep it
// up (node 0 must notice the silence).
//
// Before hellos had to be fresh to end a live session, this failed: every
// replay reset the session, and node 1's next hello started it again.
func TestReplayedHelloEverySecond(t *testing.T) {
	recordSeals(t, 0)
	a, b, rec := startRestartedPair(t, nil)
	hellos, _ := rec.captured()
	old := hellos[:1] // the first hello of the previous run
	before := a.Peers()[0]
	a.drainEvents()

	const replays = 4
	for i := 0; i < replays; i++ {
		replay(t, b, a, old)
		time.Sleep(time.Second)
		if st := a.Peers()[0]; !st.Up || st.Sessions != before.Sessions {
			t.Fatalf("after %d replays of an old hello: %+v; want the session of before (%d)", i+1, st, before.Sessions)
		}
	}
	for _, ev := range a.drainEvents() {
		t.Errorf("event %v about node %d (%v) during the replays", ev.Kind, ev.Peer, ev.Err)
	}
	exchange(t, []*testNode{a, b}, 20, false, 10*time.Second)

	// Node 1 dies; the replays go on, from its address. Node 0 must see
	// it go silent.
	b.fault.Partition(nil, true)
	b.Close()
	c, err := stdnet.ListenPacket("udp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	down := make(chan struct{})
	go func() {
		defer close(down)
		ev := a.waitEvent(t, 1, PeerDown, 2*DefaultDeadAfter+2*time.Second)
		if !errors.Is(ev.Err, ErrPeerSilent) {
			t.Errorf("down because %v, want ErrPeerSilent", ev.Err)
		}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for waiting := true; waiting; {
		replayOn(t, c, a, old)
		select {
		case <-down:
			waiting = false
		case <-tick.C:
		}
	}
	replayOn(t, c, a, old)
	time.Sleep(time.Second)
	if st := a.Peers()[0]; st.Up {
		t.Errorf("a replayed hello brought a dead peer back up: %+v", st)
	}
}
