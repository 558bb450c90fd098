package dsm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/node"
)

// netLab is a network of our own for one test: a namespace per node, each
// with an address on 10.213.0.0/24, joined by a bridge in a hub namespace,
// so that a node can be cut off by taking its port on the bridge down.
type netLab struct {
	prefix string
	ns     []string
	addrs  []string
}

// requireNetns skips the test with the reason when network namespaces
// cannot be made here, or fails it when DSM_REQUIRE_NETNS=1 (CI sets it
// where the machine can).
func requireNetns(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("DSM_REQUIRE_NETNS") == "1" {
		t.Fatalf("network namespaces required (DSM_REQUIRE_NETNS=1): %s", reason)
	}
	t.Skipf("network namespaces unavailable: %s", reason)
}

func newNetLab(t *testing.T, nodes int) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		requireNetns(t, "not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		requireNetns(t, "no ip command (Debian's iproute2)")
	}
	l := &netLab{prefix: fmt.Sprintf("dsmt%d", os.Getpid()%100000)}
	hub := l.prefix + "h"
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", hub).CombinedOutput(); err != nil {
		requireNetns(t, fmt.Sprintf("ip netns add: %v: %s", err, bytes.TrimSpace(out)))
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", hub).Run() })
	ip("-n", hub, "link", "add", "br0", "type", "bridge")
	ip("-n", hub, "link", "set", "br0", "up")
	for i := 0; i < nodes; i++ {
		ns := fmt.Sprintf("%sn%d", l.prefix, i)
		in, out := fmt.Sprintf("%sa%d", l.prefix, i), fmt.Sprintf("%sb%d", l.prefix, i)
		ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		ip("-n", ns, "link", "set", "lo", "up")
		ip("link", "add", in, "type", "veth", "peer", "name", out)
		ip("link", "set", in, "netns", ns)
		ip("link", "set", out, "netns", hub)
		ip("-n", hub, "link", "set", out, "master", "br0")
		ip("-n", hub, "link", "set", out, "up")
		ip("-n", ns, "addr", "add", fmt.Sprintf("10.213.0.%d/24", i+1), "dev", in)
		ip("-n", ns, "link", "set", in, "up")
		l.ns = append(l.ns, ns)
		l.addrs = append(l.addrs, fmt.Sprintf("10.213.0.%d:%d", i+1, 7100+i))
	}
	return l
}

// cut takes node i's port on the bridge down (or up again).
func (l *netLab) cut(t *testing.T, i int, down bool) {
	t.Helper()
	state := "up"
	if down {
		state = "down"
	}
	if out, err := exec.Command("ip", "-n", l.prefix+"h", "link", "set", fmt.Sprintf("%sb%d", l.prefix, i), state).CombinedOutput(); err != nil {
		t.Fatalf("cut node %d: %v: %s", i, err, out)
	}
}

func init() { workers["countfor"] = workCountFor }

// workCountFor: every node increments two shared words (one page homed on
// node 0, one elsewhere) for 5 s, counts its own increments, publishes its
// count on a page of its own, and checks after a barrier that each word
// holds the sum of the counts.
func workCountFor(r *dsm.Region) error {
	ps := r.PageSize()
	shared, far := ps, remotePage(r, 0, 20)*ps
	slots := 30 * ps // node i's count at slots + i*ps
	if err := syncStart(r, 2*ps); err != nil {
		return err
	}
	var n uint64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); n++ {
		atomic.AddUint64(word(r, shared), 1)
		atomic.AddUint64(word(r, far+8), 1)
		if n%64 == 0 {
			runtime.Gosched() // the nodes share this machine's cores
		}
	}
	atomic.StoreUint64(word(r, slots+r.NodeID()*ps), n)
	if err := barrier(r, 3*ps, 1); err != nil {
		return err
	}
	var want uint64
	for i := 0; i < r.Nodes(); i++ {
		want += atomic.LoadUint64(word(r, slots+i*ps))
	}
	if got := atomic.LoadUint64(word(r, shared)); got != want {
		return fmt.Errorf("shared word = %d, the nodes counted %d", got, want)
	}
	if got := atomic.LoadUint64(word(r, far+8)); got != want {
		return fmt.Errorf("word on page %d = %d, the nodes counted %d", far/ps, got, want)
	}
	fmt.Printf("totals exact: %d increments on each word\n", want)
	return barrier(r, 3*ps, 2)
}

// Three nodes in namespaces of their own, 5% of every node's datagrams
// lost, and node 2 cut off the network for 3 s in the middle of the run
// (longer than the 1.5 s after which the others declare it down): the
// atomic counters and the Mutex-protected counter still end exact.
func TestTotalsExactUnderLossAndPartition(t *testing.T) {
	lab := newNetLab(t, 3)
	log := &syncWriter{w: &bytes.Buffer{}}
	c, err := cluster.Start(context.Background(), cluster.Options{
		Nodes: 3, Size: 16 << 20, Log: log, Addrs: lab.addrs, Netns: lab.ns,
		Tune: func(cfg *node.Config) { cfg.Loss = 0.05 },
	})
	require.NoError(t, err, "daemon log:\n%s", log.String())
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	done := make(chan string, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var out syncWriter
		out.w = &bytes.Buffer{}
		err := c.Run(ctx, []string{os.Args[0], "-test.run=^$"}, &out, envWorker+"=countfor")
		if err != nil {
			fmt.Fprintf(&out, "\nrun: %v", err)
		}
		done <- out.String()
	}()
	time.Sleep(time.Second) // the workers attach and start counting
	lab.cut(t, 2, true)
	time.Sleep(3 * time.Second)
	lab.cut(t, 2, false)
	out := <-done
	require.Equal(t, 3, strings.Count(out, "totals exact: "), out)
	st, err := c.Status(0)
	require.NoError(t, err)
	var sessions []uint64
	for _, p := range st.Peers {
		sessions = append(sessions, p.Sessions)
	}
	t.Logf("%s; node 0's sessions with its peers: %v", strings.TrimSpace(out[strings.LastIndex(out, "totals exact"):]), sessions)
}
