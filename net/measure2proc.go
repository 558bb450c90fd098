package net

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	stdnet "net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Cross-process round-trip kinds for MeasureRoundTrip. The node daemons are
// separate processes, and two processes on two cores wake each other through
// the scheduler, which one process with two goroutines often does not; these
// kinds measure what a remote page fault really pays. They re-execute the
// current binary as the echo server, so the program (or the test binary's
// TestMain) must call RunEchoIfRequested first.
const (
	// RoundTripUDP2Proc: raw UDP, the echo server in another process.
	RoundTripUDP2Proc = "udp-2proc"
	// RoundTripKCP2Proc: this package's Transport, the replying node in
	// another process.
	RoundTripKCP2Proc = "kcp-2proc"
)

// EchoEnv is the environment variable that makes RunEchoIfRequested run
// an echo server instead of returning. Its value is the kind of server
// and its parameters; it is set by MeasureRoundTrip only.
const EchoEnv = "DSM_NET_ECHO"

// echoReadyTimeout bounds how long MeasureRoundTrip waits for the echo
// process to start.
const echoReadyTimeout = 20 * time.Second

// RunEchoIfRequested runs the echo server of a cross-process round-trip
// measurement and exits, if the environment asks for one (EchoEnv is set);
// otherwise it returns at once. A program that measures RoundTripUDP2Proc
// or RoundTripKCP2Proc must call it first thing in main (or TestMain),
// because those measurements re-execute the program's own binary. The
// server exits when its standard input closes, so it never outlives the
// measuring process.
func RunEchoIfRequested() {
	spec, ok := os.LookupEnv(EchoEnv)
	if !ok {
		return
	}
	if err := runEcho(spec); err != nil {
		fmt.Fprintf(os.Stderr, "net echo server: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// echoSpec is what the measuring process tells the echo server.
type echoSpec struct {
	kind         string
	reply        int
	key          []byte // kcp-2proc
	self, parent string // kcp-2proc: the addresses of both nodes
	mtu          int
}

func (s echoSpec) String() string {
	return strings.Join([]string{s.kind, strconv.Itoa(s.reply), hex.EncodeToString(s.key), s.self, s.parent, strconv.Itoa(s.mtu)}, ";")
}

func parseEchoSpec(v string) (echoSpec, error) {
	f := strings.Split(v, ";")
	if len(f) != 6 {
		return echoSpec{}, fmt.Errorf("%s=%q: want 6 fields separated by ';'", EchoEnv, v)
	}
	s := echoSpec{kind: f[0], self: f[3], parent: f[4]}
	var err error
	if s.reply, err = strconv.Atoi(f[1]); err != nil {
		return s, fmt.Errorf("%s: reply size: %w", EchoEnv, err)
	}
	if s.key, err = hex.DecodeString(f[2]); err != nil {
		return s, fmt.Errorf("%s: key: %w", EchoEnv, err)
	}
	if s.mtu, err = strconv.Atoi(f[5]); err != nil {
		return s, fmt.Errorf("%s: mtu: %w", EchoEnv, err)
	}
	return s, nil
}

func runEcho(v string) error {
	s, err := parseEchoSpec(v)
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin) // returns when the parent goes
		close(stop)
	}()
	switch s.kind {
	case RoundTripUDP2Proc:
		lo := stdnet.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0"))
		c, err := stdnet.ListenUDP("udp", lo)
		if err != nil {
			return err
		}
		go func() { <-stop; c.Close() }()
		fmt.Printf("ready %s\n", c.LocalAddr())
		in, reply := make([]byte, 65536), make([]byte, s.reply)
		for {
			_, from, err := c.ReadFromUDPAddrPort(in)
			if err != nil {
				if errors.Is(err, stdnet.ErrClosed) {
					return nil
				}
				return err
			}
			c.WriteToUDPAddrPort(reply, from)
		}
	case RoundTripKCP2Proc:
		reply := make([]byte, s.reply)
		var self atomic.Pointer[Transport]
		tr, err := Listen(Config{
			ID: 1, Addr: s.self, Peers: map[NodeID]string{0: s.parent}, Key: s.key,
			Geometry: rtGeometry, MTU: s.mtu, Logger: slog.New(slog.DiscardHandler),
			Handler: func(from NodeID, _ []byte) {
				if t := self.Load(); t != nil {
					t.Send(from, reply)
				}
			},
		})
		if err != nil {
			return err
		}
		self.Store(tr)
		fmt.Printf("ready %s\n", tr.LocalAddr())
		<-stop
		return tr.Close()
	}
	return fmt.Errorf("%s: unknown kind %q", EchoEnv, s.kind)
}

// rtGeometry is the geometry both ends of a measured Transport use.
var rtGeometry = Geometry{Nodes: 2, PageSize: 4096, RegionSize: 1 << 30, Base: 0x600000000000}

// echoProc is a running echo server process.
type echoProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string // the address it reported
	done  chan error
}

// startEcho re-executes this binary as an echo server and waits until it
// reports its address.
func startEcho(ctx context.Context, s echoSpec) (*echoProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("net: find own binary for the echo process: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), EchoEnv+"="+s.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("net: start the echo process: %w", err)
	}
	e := &echoProc{cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		io.Copy(io.Discard, stdout)
		e.done <- cmd.Wait()
	}()
	timer := time.NewTimer(echoReadyTimeout)
	defer timer.Stop()
	select {
	case l := <-lines:
		addr, ok := strings.CutPrefix(l, "ready ")
		if !ok {
			e.Close()
			return nil, fmt.Errorf("net: echo process said %q, want \"ready ADDR\"", l)
		}
		e.addr = addr
		return e, nil
	case err := <-e.done:
		e.done <- err
		return nil, fmt.Errorf("net: echo process exited before it was ready (does main or TestMain call RunEchoIfRequested first?): %v", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("net: echo process not ready after %v (does main or TestMain call RunEchoIfRequested first?)", echoReadyTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}

// Close stops the echo process: it closes its standard input (the orderly
// way) and kills it if it has not exited shortly after.
func (e *echoProc) Close() error {
	e.stdin.Close()
	select {
	case err := <-e.done:
		return err
	case <-time.After(2 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
		return errors.New("net: echo process killed after it ignored its closed stdin")
	}
}

type udp2ProcRoundTripper struct {
	*udpRoundTripper
	echo *echoProc
}

func newUDP2ProcRoundTripper(ctx context.Context, o rtOptions) (*udp2ProcRoundTripper, error) {
	e, err := startEcho(ctx, echoSpec{kind: RoundTripUDP2Proc, reply: o.reply})
	if err != nil {
		return nil, err
	}
	to, err := netip.ParseAddrPort(e.addr)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("net: echo process address: %w", err)
	}
	c, err := stdnet.ListenUDP("udp", stdnet.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		e.Close()
		return nil, err
	}
	return &udp2ProcRoundTripper{
		udpRoundTripper: &udpRoundTripper{client: c, to: to, req: make([]byte, o.req), buf: make([]byte, 65536), replySize: o.reply},
		echo:            e,
	}, nil
}

func (r *udp2ProcRoundTripper) Close() error {
	r.client.Close()
	return r.echo.Close()
}

type kcp2ProcRoundTripper struct {
	transportRoundTripper
	echo *echoProc
}

func newKCP2ProcRoundTripper(ctx context.Context, o rtOptions) (*kcp2ProcRoundTripper, error) {
	key := make([]byte, 32)
	rand.Read(key)
	addrA, addrB, err := twoLoopbackPorts()
	if err != nil {
		return nil, err
	}
	e, err := startEcho(ctx, echoSpec{kind: RoundTripKCP2Proc, reply: o.reply, key: key, self: addrB, parent: addrA, mtu: o.mtu})
	if err != nil {
		return nil, err
	}
	r := &kcp2ProcRoundTripper{
		transportRoundTripper: transportRoundTripper{req: make([]byte, o.req), replies: make(chan time.Time, 1), failed: make(chan error, 1)},
		echo:                  e,
	}
	r.a, err = Listen(Config{
		ID: 0, Addr: addrA, Peers: map[NodeID]string{1: addrB}, Key: key, Geometry: rtGeometry,
		MTU: o.mtu, Logger: slog.New(slog.DiscardHandler),
		Handler: func(NodeID, []byte) { r.replies <- time.Now() },
		OnPeer:  r.onPeer,
	})
	if err != nil {
		e.Close()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.a.WaitPeers(wctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *kcp2ProcRoundTripper) Close() error {
	err := r.a.Close()
	return errors.Join(err, r.echo.Close())
}
