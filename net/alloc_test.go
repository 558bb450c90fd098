package net

import (
	"errors"
	"log/slog"
	"math/rand"
	"testing"
	"time"

	kcp "github.com/xtaci/kcp-go/v5"
	"golang.org/x/sys/unix"
)

// drivenPair is two driven transports on loopback (real UDP sockets on
// 127.0.0.1), both served by the goroutine that calls roundTrip, as a node
// daemon's event loop serves its transport: node 0 sends a small request,
// node 1's handler answers it with an encoded page, and node 0's handler
// decodes the page. No goroutine of the test or of the transports runs
// besides the caller, so that testing.AllocsPerRun counts the path of a
// page fault and nothing else.
type drivenPair struct {
	a, b   *Transport
	corked bool // serve as the daemon's loop does: Cork, Receive, Tick, Uncork
	// ackAlone: see pairOptions.
	ackAlone bool
	fds      []unix.PollFd
	req      []byte
	page     []byte // the page node 1 serves
	enc      []byte // node 1's buffer for the encoded page
	got      []byte // the page as node 0 decoded it
	encode   func(dst, page []byte) []byte
	replies  int
	err      error // from a handler
}

// Page contents for the round trips: what EncodePage and
// EncodePageUncompressed see on a fault.
const (
	pageRandom = iota // incompressible: travels raw
	pageText          // compressible: s2 with EncodePage
	pageZeros         // a flag byte
)

// pairOptions vary a drivenPair.
type pairOptions struct {
	kind      int // pageRandom, pageText or pageZeros
	encode    func(dst, page []byte) []byte
	uncorked  bool          // send each message at once rather than at Uncork
	heartbeat time.Duration // Config.HeartbeatInterval, if not zero
	// ackAlone: before the next request, wait until node 0's ACK of the
	// reply, delayed for want of a message to ride on, has gone alone
	// and reached node 1 (Tick sends it after ackDelay).
	ackAlone bool
}

func newDrivenPair(tb testing.TB, o pairOptions) *drivenPair {
	tb.Helper()
	addrs := freeAddrs(tb, 2)
	pr := &drivenPair{
		corked:   !o.uncorked,
		ackAlone: o.ackAlone,
		req:      make([]byte, 60),
		page:     make([]byte, testGeometry.PageSize),
		enc:      make([]byte, 0, 2*testGeometry.PageSize),
		got:      make([]byte, testGeometry.PageSize),
		encode:   o.encode,
	}
	rng := rand.New(rand.NewSource(1))
	rng.Read(pr.req)
	switch o.kind {
	case pageRandom:
		rng.Read(pr.page)
	case pageText:
		copy(pr.page, testPages(len(pr.page))["text"])
	}
	quiet := slog.New(slog.DiscardHandler)
	var err error
	pr.a, err = Listen(Config{
		ID: 0, Addr: addrs[0], Peers: map[NodeID]string{1: addrs[1]}, Key: testKey,
		Geometry: testGeometry, Logger: quiet, Driven: true, HeartbeatInterval: o.heartbeat,
		Handler: func(_ NodeID, msg []byte) {
			if err := DecodePage(pr.got, msg); err != nil && pr.err == nil {
				pr.err = err
			}
			pr.replies++
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pr.a.Close() })
	pr.b, err = Listen(Config{
		ID: 1, Addr: addrs[1], Peers: map[NodeID]string{0: addrs[0]}, Key: testKey,
		Geometry: testGeometry, Logger: quiet, Driven: true, HeartbeatInterval: o.heartbeat,
		Handler: func(from NodeID, msg []byte) {
			pr.enc = pr.encode(pr.enc[:0], pr.page)
			if err := pr.b.Send(from, pr.enc); err != nil && pr.err == nil {
				pr.err = err
			}
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pr.b.Close() })
	pr.fds = []unix.PollFd{{Fd: int32(pr.a.Fd()), Events: unix.POLLIN}, {Fd: int32(pr.b.Fd()), Events: unix.POLLIN}}
	deadline := time.Now().Add(10 * time.Second)
	for !pr.up() {
		if time.Now().After(deadline) {
			tb.Fatalf("the transports did not come up: %+v %+v", pr.a.Peers(), pr.b.Peers())
		}
		pr.serve(time.Millisecond)
	}
	return pr
}

func (pr *drivenPair) up() bool { return pr.a.Peers()[0].Up && pr.b.Peers()[0].Up }

// serve runs one turn of each transport's event loop (node 1's first, so
// that its reply is there for node 0's); when neither socket had anything,
// it then waits up to wait for a datagram.
func (pr *drivenPair) serve(wait time.Duration) {
	n := pr.step(pr.b) + pr.step(pr.a)
	if n == 0 {
		unix.Poll(pr.fds, int(wait/time.Millisecond))
	}
}

// step is one turn of a node daemon's loop: what the turn sends leaves at
// Uncork, sharing datagrams.
func (pr *drivenPair) step(t *Transport) int {
	if pr.corked {
		t.Cork()
	}
	n := t.Receive(16)
	t.Tick(time.Now())
	if pr.corked {
		t.Uncork()
	}
	return n
}

var errNoReply = errors.New("no reply (or no ACK) within 10s")

// roundTrip sends one request and serves both transports until its reply
// has been decoded.
func (pr *drivenPair) roundTrip() error {
	want := pr.replies + 1
	// A fault read by node 0's loop: its request leaves at Uncork.
	if pr.corked {
		pr.a.Cork()
	}
	err := pr.a.Send(1, pr.req)
	if pr.corked {
		pr.a.Uncork()
	}
	if err != nil {
		return err
	}
	// Loopback delivers a datagram within sendto, so the reply is there
	// after one turn of each loop, unless a retransmission or a heartbeat
	// came in between; the ACK that goes alone takes ackDelay.
	var deadline time.Time
	for pr.err == nil && (pr.replies < want || pr.ackAlone && pr.unacked() > 0) {
		pr.serve(time.Millisecond)
		if deadline.IsZero() {
			deadline = time.Now().Add(10 * time.Second)
		} else if time.Now().After(deadline) {
			return errNoReply
		}
	}
	return pr.err
}

// unacked is how many segments node 1 waits to see acknowledged.
func (pr *drivenPair) unacked() int {
	p := pr.b.peers[0]
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kcp.WaitSnd()
}

// roundTripCases are the variants of a round trip measured: the page
// encoders (each on the page it is meant for), a transport that sends each
// message at once instead of at Uncork, heartbeats every millisecond
// (pings and pongs among the round trips), and a reply's ACK that goes
// alone, as when no fault follows.
var roundTripCases = []struct {
	name string
	opts pairOptions
}{
	{"raw", pairOptions{kind: pageRandom, encode: EncodePageUncompressed}},
	{"s2", pairOptions{kind: pageText, encode: EncodePage}},
	{"zero", pairOptions{kind: pageZeros, encode: EncodePageUncompressed}},
	{"raw-uncorked", pairOptions{kind: pageRandom, encode: EncodePageUncompressed, uncorked: true}},
	{"raw-heartbeats", pairOptions{kind: pageRandom, encode: EncodePageUncompressed, heartbeat: time.Millisecond}},
	{"raw-ack-alone", pairOptions{kind: pageRandom, encode: EncodePageUncompressed, ackAlone: true}},
}

// BenchmarkDrivenRoundTrip measures one page fault's exchange between two
// driven transports on loopback, in one goroutine: a 60-byte request, a
// 4 KiB page encoded, sent, received, decrypted, reassembled and decoded,
// and the acknowledgements (which ride on the next message). Its
// allocs/op is what TestTransportAllocsPerRoundTrip bounds.
func BenchmarkDrivenRoundTrip(b *testing.B) {
	for _, c := range roundTripCases {
		b.Run(c.name, func(b *testing.B) {
			pr := newDrivenPair(b, c.opts)
			for range 200 {
				if err := pr.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := pr.roundTrip(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// kcpAllocsPerSegment measures what kcp-go itself allocates for one data
// segment sent, received, read and acknowledged, between two bare KCP
// state machines in memory (no transport): it boxes the segment into an
// interface twice in its receive heap (container/heap's Push and Pop in
// parse_data) and its 24-byte slice header each time it returns a
// segment's buffer to its sync.Pool (bufferPool.Put, once on each side).
// That is 4 allocations in kcp-go v5.7.5, none of which the transport can
// avoid without forking it: they happen inside Input and Recv, on buffers
// kcp-go owns, for every data segment whatever its size.
func kcpAllocsPerSegment(t *testing.T) float64 {
	t.Helper()
	type wire struct {
		buf  []byte
		ends []int
	}
	var toA, toB wire
	out := func(w *wire) func([]byte, int) {
		return func(b []byte, n int) {
			w.buf = append(w.buf, b[:n]...)
			w.ends = append(w.ends, len(w.buf))
		}
	}
	deliver := func(w *wire, k *kcp.KCP) {
		start := 0
		for _, end := range w.ends {
			if rc := k.Input(w.buf[start:end], kcp.IKCP_PACKET_REGULAR, false); rc < 0 {
				t.Fatalf("kcp input: %d", rc)
			}
			start = end
		}
		w.buf, w.ends = w.buf[:0], w.ends[:0]
	}
	a, b := kcp.NewKCP(1, out(&toB)), kcp.NewKCP(1, out(&toA))
	for _, k := range []*kcp.KCP{a, b} {
		k.NoDelay(1, kcpInterval, kcpResend, 1)
		k.WndSize(kcpSndWnd, kcpRcvWnd)
		k.SetMtu(kcpMaxMTU)
	}
	msg, got := make([]byte, 100), make([]byte, kcpMaxSegData)
	exchange := func() {
		a.Send(msg)
		kcpFlush(a, kcp.IKCP_FLUSH_FULL)
		deliver(&toB, b)
		if n := b.Recv(got); n != len(msg) {
			t.Fatalf("kcp recv: %d", n)
		}
		kcpFlush(b, kcp.IKCP_FLUSH_FULL) // the ACK
		deliver(&toA, a)
	}
	for range 100 {
		exchange()
	}
	return testing.AllocsPerRun(1000, exchange)
}

// kcpSegments is how many KCP data segments carry a message of n bytes.
func (pr *drivenPair) kcpSegments(n int) int {
	mss := pr.a.peers[1].kcpMTU - kcpOverhead
	return (msgHeaderLen + n + mss - 1) / mss
}

// TestTransportAllocsPerRoundTrip counts the heap allocations of a page
// fault's exchange between two driven transports (see drivenPair): a
// request, a page reply, their acknowledgements and, in one case,
// heartbeats. The transport itself allocates nothing per message in steady
// state (the handler's messages live in a reused arena, datagrams are
// sealed and opened in place); what is left is kcp-go's, per data segment
// (kcpAllocsPerSegment), so the ceiling is kcp-go's count times the data
// segments of the exchange: 1 for the request, 3 for a raw page, 1 for a
// zero or compressible page.
func TestTransportAllocsPerRoundTrip(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector sync.Pool drops buffers at random, and kcp-go allocates new ones")
	}
	perSeg := kcpAllocsPerSegment(t)
	t.Logf("kcp-go alone: %.0f allocations per data segment", perSeg)
	for _, c := range roundTripCases {
		t.Run(c.name, func(t *testing.T) {
			pr := newDrivenPair(t, c.opts)
			// Warm up: the arena, the pools, KCP's queues and the
			// slices of the reader grow to their steady size.
			for range 200 {
				if err := pr.roundTrip(); err != nil {
					t.Fatal(err)
				}
			}
			segs := pr.kcpSegments(len(pr.req)) + pr.kcpSegments(len(c.opts.encode(nil, pr.page)))
			runs := 1000
			if c.opts.ackAlone {
				runs = 200 // each waits ackDelay
			}
			var err error
			got := testing.AllocsPerRun(runs, func() {
				if e := pr.roundTrip(); e != nil && err == nil {
					err = e
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			ceiling := perSeg * float64(segs)
			t.Logf("%.0f allocations per round trip (%d data segments; kcp-go's share %.0f)", got, segs, ceiling)
			if got > ceiling {
				t.Errorf("%.0f allocations per round trip, more than the %.0f kcp-go makes for its %d data segments: the transport allocates on the path of a fault", got, ceiling, segs)
			}
		})
	}
}

// TestPageCodecAllocs checks that the page encoders and the decoder
// allocate nothing when dst has room: a fault's reply is encoded into a
// buffer its sender reuses, and decoded into the page itself.
func TestPageCodecAllocs(t *testing.T) {
	dst := make([]byte, 0, 2*testGeometry.PageSize)
	out := make([]byte, testGeometry.PageSize)
	for name, page := range testPages(int(testGeometry.PageSize)) {
		for _, enc := range []struct {
			name string
			fn   func(dst, page []byte) []byte
		}{{"EncodePage", EncodePage}, {"EncodePageUncompressed", EncodePageUncompressed}} {
			encoded := enc.fn(nil, page)
			if got := testing.AllocsPerRun(100, func() { enc.fn(dst[:0], page) }); got != 0 {
				t.Errorf("%s of a %s page: %.0f allocations", enc.name, name, got)
			}
			if got := testing.AllocsPerRun(100, func() {
				if err := DecodePage(out, encoded); err != nil {
					t.Fatal(err)
				}
			}); got != 0 {
				t.Errorf("DecodePage of a %s page from %s: %.0f allocations", name, enc.name, got)
			}
		}
	}
}
