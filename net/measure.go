package net

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	stdnet "net"
	"net/netip"
	"sync/atomic"
	"time"

	kcpgo "github.com/xtaci/kcp-go/v5"
)

// Round-trip measurement kinds for MeasureRoundTrip.
const (
	// RoundTripUDP: raw UDP on loopback, one datagram each way; the
	// machine's limit.
	RoundTripUDP = "udp"
	// RoundTripKCP: this package's Transport between two nodes on
	// loopback, encrypted, as the daemons use it.
	RoundTripKCP = "kcp"
	// RoundTripKCPGo: kcp-go's stock UDPSession with NoDelay(1,10,2,1),
	// no encryption, no FEC; the reference the Transport improves on.
	RoundTripKCPGo = "kcp-go"
)

// RoundTripOption adjusts MeasureRoundTrip.
type RoundTripOption func(*rtOptions)

type rtOptions struct {
	req, reply int
	faults     *Faults
	fec        FECConfig
	warmup     int
	mtu        int
}

// WithSizes sets the request and reply sizes (default 64 and 4096 bytes).
func WithSizes(request, reply int) RoundTripOption {
	return func(o *rtOptions) { o.req, o.reply = request, reply }
}

// WithFaults injects faults into both ends' sockets (kind "kcp" only: the
// other kinds have no retransmission).
func WithFaults(f Faults) RoundTripOption {
	return func(o *rtOptions) { o.faults = &f }
}

// WithLoss is WithFaults with only a loss probability.
func WithLoss(loss float64, seed int64) RoundTripOption {
	return WithFaults(Faults{Seed: seed, Loss: loss})
}

// WithFEC turns on forward error correction (kind "kcp" only).
func WithFEC(data, parity int) RoundTripOption {
	return func(o *rtOptions) { o.fec = FECConfig{Data: data, Parity: parity} }
}

// WithWarmup sets the round trips run before measuring (default 200).
func WithWarmup(n int) RoundTripOption {
	return func(o *rtOptions) { o.warmup = n }
}

// WithMTU sets the transport's MTU (kinds "kcp" and "kcp-2proc" only;
// default automatic).
func WithMTU(n int) RoundTripOption {
	return func(o *rtOptions) { o.mtu = n }
}

// MeasureRoundTrip measures n round trips of a request and a reply (64
// bytes and 4 KiB unless WithSizes says otherwise) between two endpoints
// on loopback, over the given kind of path (RoundTripUDP, RoundTripKCP,
// RoundTripKCPGo, or, with the server in another process,
// RoundTripUDP2Proc and RoundTripKCP2Proc), and returns each round trip's
// duration in order. The cross-process kinds re-execute the current binary:
// its main or TestMain must call RunEchoIfRequested first.
func MeasureRoundTrip(ctx context.Context, kind string, n int, opts ...RoundTripOption) ([]time.Duration, error) {
	if n < 0 {
		return nil, fmt.Errorf("net: MeasureRoundTrip: n = %d", n)
	}
	rt, err := newRoundTripper(ctx, kind, opts...)
	if err != nil {
		return nil, err
	}
	defer rt.Close()
	out := make([]time.Duration, n)
	for i := range out {
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return out[:i], err
			}
		}
		d, err := rt.RoundTrip(ctx)
		if err != nil {
			return out[:i], err
		}
		out[i] = d
	}
	return out, nil
}

// roundTripper runs one request/reply exchange at a time and measures it
// from just before the request is sent to when the reply is in the
// application's hands: returned by the read for sockets, passed to the
// Handler for a Transport (where a daemon installs a page).
type roundTripper interface {
	RoundTrip(ctx context.Context) (time.Duration, error)
	Close() error
}

func newRoundTripper(ctx context.Context, kind string, opts ...RoundTripOption) (roundTripper, error) {
	o := rtOptions{req: 64, reply: 4096, warmup: 200}
	for _, f := range opts {
		f(&o)
	}
	if o.req < 1 || o.reply < 1 || o.req > 60000 || o.reply > 60000 {
		return nil, fmt.Errorf("net: round-trip sizes %d/%d out of range [1, 60000]", o.req, o.reply)
	}
	if kind != RoundTripKCP && (o.faults != nil || o.fec.enabled()) {
		return nil, fmt.Errorf("net: faults and FEC options apply to kind %q only, not %q", RoundTripKCP, kind)
	}
	if kind != RoundTripKCP && kind != RoundTripKCP2Proc && o.mtu != 0 {
		return nil, fmt.Errorf("net: the MTU option applies to kinds %q and %q only, not %q", RoundTripKCP, RoundTripKCP2Proc, kind)
	}
	var (
		rt  roundTripper
		err error
	)
	switch kind {
	case RoundTripUDP:
		rt, err = newUDPRoundTripper(o)
	case RoundTripKCP:
		rt, err = newTransportRoundTripper(ctx, o)
	case RoundTripKCPGo:
		rt, err = newKCPGoRoundTripper(o)
	case RoundTripUDP2Proc:
		rt, err = newUDP2ProcRoundTripper(ctx, o)
	case RoundTripKCP2Proc:
		rt, err = newKCP2ProcRoundTripper(ctx, o)
	default:
		return nil, fmt.Errorf("net: unknown round-trip kind %q (want %q, %q, %q, %q or %q)", kind,
			RoundTripUDP, RoundTripKCP, RoundTripKCPGo, RoundTripUDP2Proc, RoundTripKCP2Proc)
	}
	if err != nil {
		return nil, err
	}
	for range o.warmup {
		if _, err := rt.RoundTrip(ctx); err != nil {
			rt.Close()
			return nil, fmt.Errorf("net: warming up %s: %w", kind, err)
		}
	}
	return rt, nil
}

type udpRoundTripper struct {
	client, server *stdnet.UDPConn
	to             netip.AddrPort
	req, buf       []byte
	replySize      int
	deadline       time.Time
	done           chan struct{}
}

func newUDPRoundTripper(o rtOptions) (*udpRoundTripper, error) {
	lo := stdnet.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0"))
	server, err := stdnet.ListenUDP("udp", lo)
	if err != nil {
		return nil, err
	}
	client, err := stdnet.ListenUDP("udp", lo)
	if err != nil {
		server.Close()
		return nil, err
	}
	r := &udpRoundTripper{
		client: client, server: server,
		to:  server.LocalAddr().(*stdnet.UDPAddr).AddrPort(),
		req: make([]byte, o.req), buf: make([]byte, 65536),
		replySize: o.reply, done: make(chan struct{}),
	}
	go func() {
		defer close(r.done)
		in, reply := make([]byte, 65536), make([]byte, o.reply)
		for {
			_, from, err := server.ReadFromUDPAddrPort(in)
			if err != nil {
				return
			}
			server.WriteToUDPAddrPort(reply, from)
		}
	}()
	return r, nil
}

func (r *udpRoundTripper) RoundTrip(ctx context.Context) (time.Duration, error) {
	if dl, ok := ctx.Deadline(); ok && !dl.Equal(r.deadline) {
		r.client.SetReadDeadline(dl)
		r.deadline = dl
	}
	t0 := time.Now()
	if _, err := r.client.WriteToUDPAddrPort(r.req, r.to); err != nil {
		return 0, err
	}
	n, _, err := r.client.ReadFromUDPAddrPort(r.buf)
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if n != r.replySize {
		return 0, fmt.Errorf("net: udp reply of %d bytes, want %d", n, r.replySize)
	}
	return d, nil
}

func (r *udpRoundTripper) Close() error {
	r.client.Close()
	err := r.server.Close()
	<-r.done
	return err
}

type transportRoundTripper struct {
	a, b    *Transport
	req     []byte
	replies chan time.Time // when the reply reached the handler
	failed  chan error     // the peer went down
}

func newTransportRoundTripper(ctx context.Context, o rtOptions) (*transportRoundTripper, error) {
	key := make([]byte, 32)
	rand.Read(key)
	geom := rtGeometry
	r := &transportRoundTripper{req: make([]byte, o.req), replies: make(chan time.Time, 1), failed: make(chan error, 1)}
	reply := make([]byte, o.reply)
	quiet := slog.New(slog.DiscardHandler)
	wrap := func(seed int64) func(stdnet.PacketConn) stdnet.PacketConn {
		if o.faults == nil {
			return nil
		}
		f := *o.faults
		f.Seed += seed
		return func(c stdnet.PacketConn) stdnet.PacketConn { return NewFaultConn(c, f) }
	}
	addrA, addrB, err := twoLoopbackPorts()
	if err != nil {
		return nil, err
	}
	r.a, err = Listen(Config{
		ID: 0, Addr: addrA, Peers: map[NodeID]string{1: addrB}, Key: key, Geometry: geom,
		MTU: o.mtu, FEC: o.fec, WrapConn: wrap(0), Logger: quiet,
		Handler: func(NodeID, []byte) { r.replies <- time.Now() },
		OnPeer:  r.onPeer,
	})
	if err != nil {
		return nil, err
	}
	// The handler runs on b's reader, which may start before Listen
	// returns: publish b through an atomic pointer.
	var self atomic.Pointer[Transport]
	tb, err := Listen(Config{
		ID: 1, Addr: addrB, Peers: map[NodeID]string{0: addrA}, Key: key, Geometry: geom,
		MTU: o.mtu, FEC: o.fec, WrapConn: wrap(1), Logger: quiet,
		Handler: func(from NodeID, _ []byte) {
			if b := self.Load(); b != nil {
				b.Send(from, reply)
			}
		},
	})
	if err != nil {
		r.a.Close()
		return nil, err
	}
	self.Store(tb)
	r.b = tb
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.a.WaitPeers(wctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// onPeer fails the round trip in progress when the peer goes down.
func (r *transportRoundTripper) onPeer(ev PeerEvent) {
	if ev.Kind != PeerUp {
		select {
		case r.failed <- fmt.Errorf("net: peer %v: %w", ev.Kind, ev.Err):
		default:
		}
	}
}

// twoLoopbackPorts finds two free UDP ports on 127.0.0.1.
func twoLoopbackPorts() (string, string, error) {
	var addrs [2]string
	for i := range addrs {
		c, err := stdnet.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", "", err
		}
		addrs[i] = c.LocalAddr().String()
		defer c.Close()
	}
	return addrs[0], addrs[1], nil
}

func (r *transportRoundTripper) RoundTrip(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	if err := r.a.Send(1, r.req); err != nil {
		return 0, err
	}
	select {
	case t1 := <-r.replies:
		return t1.Sub(t0), nil
	case err := <-r.failed:
		return 0, err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (r *transportRoundTripper) Close() error {
	r.b.Close()
	return r.a.Close()
}

type kcpGoRoundTripper struct {
	l          *kcpgo.Listener
	c          *kcpgo.UDPSession
	req, reply []byte
	server     chan *kcpgo.UDPSession
	deadline   time.Time
	done       chan struct{}
}

func newKCPGoRoundTripper(o rtOptions) (*kcpGoRoundTripper, error) {
	l, err := kcpgo.ListenWithOptions("127.0.0.1:0", nil, 0, 0)
	if err != nil {
		return nil, err
	}
	r := &kcpGoRoundTripper{l: l, req: make([]byte, o.req), reply: make([]byte, o.reply),
		server: make(chan *kcpgo.UDPSession, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		s, err := l.AcceptKCP()
		if err != nil {
			return
		}
		r.server <- s
		s.SetNoDelay(1, 10, 2, 1)
		in, out := make([]byte, o.req), make([]byte, o.reply)
		for {
			if _, err := io.ReadFull(s, in); err != nil {
				return
			}
			if _, err := s.Write(out); err != nil {
				return
			}
		}
	}()
	c, err := kcpgo.DialWithOptions(l.Addr().String(), nil, 0, 0)
	if err != nil {
		l.Close()
		return nil, err
	}
	c.SetNoDelay(1, 10, 2, 1)
	r.c = c
	return r, nil
}

func (r *kcpGoRoundTripper) RoundTrip(ctx context.Context) (time.Duration, error) {
	if dl, ok := ctx.Deadline(); ok && !dl.Equal(r.deadline) {
		r.c.SetReadDeadline(dl)
		r.deadline = dl
	}
	t0 := time.Now()
	if _, err := r.c.Write(r.req); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(r.c, r.reply); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

func (r *kcpGoRoundTripper) Close() error {
	r.c.Close()
	err := r.l.Close()
	select {
	case s := <-r.server:
		s.Close()
	case <-r.done:
	}
	<-r.done
	return err
}
