package net

import (
	"errors"
	"log/slog"
	"math/rand"
	"testing"
	"time"

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
	a, b    *Transport
	corked  bool // serve as the daemon's loop does: Cork, Receive, Tick, Uncork
	fds     []unix.PollFd
	req     []byte
	page    []byte // the page node 1 serves
	enc     []byte // node 1's buffer for the encoded page
	got     []byte // the page as node 0 decoded it
	encode  func(dst, page []byte) []byte
	replies int
	err     error // from a handler
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
}

func newDrivenPair(tb testing.TB, o pairOptions) *drivenPair {
	tb.Helper()
	addrs := freeAddrs(tb, 2)
	pr := &drivenPair{
		corked: !o.uncorked,
		req:    make([]byte, 60),
		page:   make([]byte, testGeometry.PageSize),
		enc:    make([]byte, 0, 2*testGeometry.PageSize),
		got:    make([]byte, testGeometry.PageSize),
		encode: o.encode,
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

var errNoReply = errors.New("no reply within 10s")

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
	var deadline time.Time
	for pr.replies < want && pr.err == nil {
		pr.serve(time.Millisecond)
		if pr.replies < want {
			// Loopback delivers a datagram within sendto, so this
			// is rare: a retransmission, or a heartbeat in between.
			if deadline.IsZero() {
				deadline = time.Now().Add(10 * time.Second)
			} else if time.Now().After(deadline) {
				return errNoReply
			}
		}
	}
	return pr.err
}

// roundTripCases are the variants of a round trip measured: the page
// encoders (each on the page it is meant for), a transport that sends each
// message at once instead of at Uncork, and heartbeats every millisecond
// (pings and pongs among the round trips).
var roundTripCases = []struct {
	name string
	opts pairOptions
}{
	{"raw", pairOptions{kind: pageRandom, encode: EncodePageUncompressed}},
	{"s2", pairOptions{kind: pageText, encode: EncodePage}},
	{"zero", pairOptions{kind: pageZeros, encode: EncodePageUncompressed}},
	{"raw-uncorked", pairOptions{kind: pageRandom, encode: EncodePageUncompressed, uncorked: true}},
	{"raw-heartbeats", pairOptions{kind: pageRandom, encode: EncodePageUncompressed, heartbeat: time.Millisecond}},
}

// BenchmarkDrivenRoundTrip measures one page fault's exchange between two
// driven transports on loopback, in one goroutine: a 60-byte request, a
// 4 KiB page encoded, sent, received, decrypted, reassembled and decoded,
// and the acknowledgements (which ride on the next message).
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
