package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/internal/ctl"
	dsmnet "github.com/dsmrt/dsm/net"
)

// freeAddrs returns n loopback UDP addresses that were free a moment ago.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		require.NoError(t, err)
		out = append(out, pc.LocalAddr().String())
		pc.Close()
	}
	return out
}

// pair builds two node configs that agree on everything; tweak changes the
// second.
func pair(t *testing.T, tweak func(*Config)) (Config, Config) {
	dir := t.TempDir()
	addrs := freeAddrs(t, 2)
	mk := func(id int) Config {
		return Config{
			ID: id, Nodes: 2, Addr: addrs[id], Peers: map[int]string{1 - id: addrs[1-id]},
			Key: "0123456789abcdef0123456789abcdef", Socket: filepath.Join(dir, "n"+string(rune('0'+id))+".sock"),
			Size: 1 << 20,
		}
	}
	a, b := mk(0), mk(1)
	if tweak != nil {
		tweak(&b)
	}
	return a, b
}

// start runs a node until the test ends.
func start(t *testing.T, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// A peer with another region size, or another key, is refused with an error
// that says why; the nodes never exchange pages.
func TestPeerMismatchRefused(t *testing.T) {
	cases := []struct {
		name  string
		tweak func(*Config)
		want  string
	}{
		{"region size", func(c *Config) { c.Size = 2 << 20 }, "1048576"},
		{"base address", func(c *Config) { c.Base = DefaultBase + 1<<30 }, "geometry"},
		{"cluster key", func(c *Config) { c.Key = "another key that is long enough" }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t, tc.tweak)
			na := start(t, a)
			start(t, b)
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			err := na.WaitPeers(ctx)
			require.Error(t, err)
			require.Contains(t, err.Error(), "node 1")
			if tc.want != "" {
				require.Contains(t, err.Error(), tc.want)
			}
		})
	}
}

// Two agreeing nodes form a cluster and report each other up.
func TestPairForms(t *testing.T) {
	a, b := pair(t, nil)
	na := start(t, a)
	start(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, na.WaitPeers(ctx))
	var st Status
	require.NoError(t, ctl.Call(a.Socket, ctl.Request{Op: ctl.OpStatus}, &st))
	require.Equal(t, 2, st.Nodes)
	require.Equal(t, 256, st.Pages["invalid"], "no page is present before anyone faults")
	require.Len(t, st.Peers, 1)
	require.True(t, st.Peers[0].Up)
}

func TestConfigErrors(t *testing.T) {
	good := func() Config {
		return Config{ID: 0, Nodes: 2, Addr: "127.0.0.1:0", Peers: map[int]string{1: "127.0.0.1:1"},
			Key: "0123456789abcdef", Socket: filepath.Join(t.TempDir(), "s")}
	}
	cases := []struct {
		name  string
		tweak func(*Config)
		want  string
	}{
		{"no peers", func(c *Config) { c.Peers = nil }, "no address for peer node 1"},
		{"short key", func(c *Config) { c.Key = "short" }, "cluster key"},
		{"bad id", func(c *Config) { c.ID = 2 }, "out of range"},
		{"odd size", func(c *Config) { c.Size = 5000 }, "multiples of the page size"},
		{"page size", func(c *Config) { c.PageSize = 8192 }, "page size"},
		{"no socket", func(c *Config) { c.Socket = "" }, "socket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.tweak(&c)
			_, err := New(c)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// A socket path that is a file, or a socket of a live daemon, is refused.
func TestSocketPathChecks(t *testing.T) {
	a, _ := pair(t, nil)
	require.NoError(t, os.WriteFile(a.Socket, []byte("x"), 0o644))
	_, err := New(a)
	require.ErrorContains(t, err, "not a socket")
	os.Remove(a.Socket)

	start(t, a)
	b := a
	b.Addr = freeAddrs(t, 1)[0]
	_, err = New(b)
	require.ErrorContains(t, err, "in use by a running daemon")
}

// Dial gives a clear error for each kind of wrong socket.
func TestDialWrongSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	stream := filepath.Join(dir, "stream.sock")
	ln, err := net.Listen("unix", stream)
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	cases := []struct{ path, want string }{
		{"", "DSM_SOCKET"},
		{filepath.Join(dir, "missing"), "no dsmnode socket"},
		{file, "is not a socket"},
		{stream, "another kind"},
	}
	for _, tc := range cases {
		_, err := ctl.Dial(tc.path)
		require.ErrorContains(t, err, tc.want, tc.path)
	}
}

// A program attaching to a node whose peer never came up is told which peer
// is missing, instead of faulting forever.
func TestAttachNamesMissingPeer(t *testing.T) {
	a, _ := pair(t, nil)
	start(t, a) // node 1 never starts
	c, err := ctl.Dial(a.Socket)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, ctl.Write(c, ctl.Request{Op: ctl.OpAttach, Version: ctl.Version, WaitMS: 300}))
	var rep ctl.Reply
	buf := make([]byte, 1<<16)
	fds, err := ctl.Read(c, buf, &rep)
	require.NoError(t, err)
	require.Empty(t, fds, "no memfd for a program that cannot run")
	require.Contains(t, rep.Error, "cannot reach its cluster")
	require.Contains(t, rep.Error, "node 1")
}

func TestValidateMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu int
		ok  bool
	}{
		{0, true}, {dsmnet.MinMTU, true}, {9000, true}, {dsmnet.MaxMTU, true},
		{dsmnet.MinMTU - 1, false}, {dsmnet.MaxMTU + 1, false}, {-1, false},
	} {
		c := Config{Nodes: 1, Key: strings.Repeat("k", 16), Socket: "unused", MTU: tc.mtu}
		err := c.Validate()
		if tc.ok != (err == nil) {
			t.Errorf("MTU %d: Validate() = %v", tc.mtu, err)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("mtu %d: give 576 to 65507 bytes", tc.mtu)) {
			t.Errorf("MTU %d: the error does not say what to give: %v", tc.mtu, err)
		}
	}
}
