package dsm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/internal/uffdtest"
	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/node"
)

// The test binary is also the node daemon and the attached program: a
// cluster started here runs this executable with node.EnvDaemon set, and
// runWorkers runs it with envWorker naming the worker function.
const envWorker = "DSM_TEST_WORKER"

var workers = map[string]func(r *dsm.Region) error{
	"counters":  workCounters,
	"litmus":    workLitmus,
	"pointer":   workPointer,
	"hold":      workHold,
	"faultloop": workFaultLoop,
}

func TestMain(m *testing.M) {
	node.RunDaemonIfChild()
	if name := os.Getenv(envWorker); name != "" {
		os.Exit(runWorker(name))
	}
	os.Exit(m.Run())
}

func runWorker(name string) int {
	w := workers[name]
	if w == nil {
		fmt.Fprintf(os.Stderr, "unknown worker %q\n", name)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "attach:", err)
		return 1
	}
	defer r.Close()
	if err := w(r); err != nil {
		fmt.Fprintf(os.Stderr, "worker %s on node %d: %v\n", name, r.NodeID(), err)
		return 1
	}
	return 0
}

func word(r *dsm.Region, off int) *uint64 { return (*uint64)(r.Ptr(off)) }

// barrier makes every node wait until all have reached generation gen of the
// counter at off, using only the shared memory itself.
func barrier(r *dsm.Region, off int, gen uint64) error {
	atomic.AddUint64(word(r, off), 1)
	deadline := time.Now().Add(30 * time.Second)
	for atomic.LoadUint64(word(r, off)) < gen*uint64(r.Nodes()) {
		if time.Now().After(deadline) {
			return fmt.Errorf("barrier at offset %d generation %d timed out at %d", off, gen, atomic.LoadUint64(word(r, off)))
		}
		time.Sleep(50 * time.Microsecond)
	}
	return nil
}

// syncStart waits until every node arrived at the counter at off, then
// until a common start time (the last to arrive sets it at off+8), so that
// the nodes really contend instead of running one after the other.
func syncStart(r *dsm.Region, off int) error {
	startAt := (*int64)(r.Ptr(off + 8))
	if atomic.AddUint64(word(r, off), 1) == uint64(r.Nodes()) {
		atomic.StoreInt64(startAt, time.Now().Add(30*time.Millisecond).UnixNano())
	}
	deadline := time.Now().Add(30 * time.Second)
	at := atomic.LoadInt64(startAt)
	for ; at == 0; at = atomic.LoadInt64(startAt) {
		if time.Now().After(deadline) {
			return fmt.Errorf("start at offset %d timed out", off)
		}
		time.Sleep(50 * time.Microsecond)
	}
	time.Sleep(time.Until(time.Unix(0, at)))
	return nil
}

// remotePage returns the first page (after skip) whose home is not node.
func remotePage(r *dsm.Region, node, skip int) int {
	ring := dht.ClusterRing(r.Nodes())
	for p := skip; ; p++ {
		if int(ring.Home(dht.PageKey(uint32(p)))) != node {
			return p
		}
	}
}

const increments = 20000

func workCounters(r *dsm.Region) error {
	ps := r.PageSize()
	bar := 0
	shared := ps // page 1: one word everyone increments
	// A page homed on a node other than 0: every node increments a word there.
	far := remotePage(r, 0, 20) * ps
	if err := syncStart(r, 2*ps); err != nil {
		return err
	}
	for i := 0; i < increments; i++ {
		atomic.AddUint64(word(r, shared), 1)
		atomic.AddUint64(word(r, far+8), 1)
	}
	if err := barrier(r, bar, 1); err != nil {
		return err
	}
	want := uint64(increments * r.Nodes())
	if got := atomic.LoadUint64(word(r, shared)); got != want {
		return fmt.Errorf("shared word = %d, want %d", got, want)
	}
	if got := atomic.LoadUint64(word(r, far+8)); got != want {
		return fmt.Errorf("word on remote-homed page %d = %d, want %d", far/ps, got, want)
	}
	fmt.Printf("totals exact: %d and %d\n", want, want)
	return barrier(r, bar, 2)
}

// workLitmus is message passing: node 0 writes data on one page, then a flag
// on another; the others must never see the flag without the data.
func workLitmus(r *dsm.Region) error {
	ps := r.PageSize()
	data, flag := 2*ps, 5*ps
	if err := syncStart(r, 8*ps); err != nil {
		return err
	}
	const rounds = 2000
	if r.NodeID() == 0 {
		for k := uint64(1); k <= rounds; k++ {
			*word(r, data) = k // a plain store
			atomic.StoreUint64(word(r, flag), k)
		}
	} else {
		seen, reads := uint64(0), 0
		deadline := time.Now().Add(60 * time.Second)
		for seen < rounds {
			f := atomic.LoadUint64(word(r, flag))
			d := atomic.LoadUint64(word(r, data))
			if d < f {
				return fmt.Errorf("saw flag %d but data %d after %d reads", f, d, reads)
			}
			seen = f
			reads++
			if time.Now().After(deadline) {
				return fmt.Errorf("flag stuck at %d", f)
			}
		}
	}
	return barrier(r, 0, 1)
}

// workPointer: node 0 stores the address of bytes in the region; every other
// node dereferences it and must read the same bytes.
func workPointer(r *dsm.Region) error {
	ps := r.PageSize()
	msg := []byte("the same address on every node")
	slot := 3 * ps
	if r.NodeID() == 0 {
		target := r.Bytes()[7*ps+100:]
		copy(target, msg)
		// The region is outside the Go heap: a pointer into it may be stored
		// in it and used on another node.
		atomic.StorePointer((*unsafe.Pointer)(r.Ptr(slot)), unsafe.Pointer(&target[0]))
	}
	if err := barrier(r, 0, 1); err != nil {
		return err
	}
	if r.NodeID() != 0 {
		ptr := atomic.LoadPointer((*unsafe.Pointer)(r.Ptr(slot)))
		if uintptr(ptr) != r.Base()+uintptr(7*ps+100) {
			return fmt.Errorf("read pointer %p, node 0 stored 0x%x", ptr, r.Base()+uintptr(7*ps+100))
		}
		got := unsafe.Slice((*byte)(ptr), len(msg))
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("dereferenced %p and read %q", ptr, got)
		}
	}
	return barrier(r, 0, 2)
}

// workHold touches the region and then waits to be killed.
func workHold(r *dsm.Region) error {
	atomic.AddUint64(word(r, 0), 1)
	fmt.Println("attached")
	time.Sleep(time.Minute)
	return nil
}

// workFaultLoop writes pages forever (until killed).
func workFaultLoop(r *dsm.Region) error {
	ps := r.PageSize()
	fmt.Println("looping")
	for i := 0; ; i++ {
		atomic.AddUint64(word(r, (i%8)*ps+ps*10), 1)
		runtime.Gosched()
	}
}

func startCluster(t *testing.T, nodes int) *cluster.Cluster {
	t.Helper()
	return startClusterTuned(t, nodes, nil)
}

// envRCArea, set to 1, gives every test cluster a release-consistent area,
// so that the tests of sequentially consistent memory run beside the
// release-consistent machinery (locks and barriers then release and
// acquire through it): scripts/test.sh runs this package both ways.
const envRCArea = "DSM_TEST_RC_AREA"

func startClusterTuned(t *testing.T, nodes int, tune func(*node.Config)) *cluster.Cluster {
	t.Helper()
	uffdtest.Require(t)
	log := &syncWriter{w: &bytes.Buffer{}}
	if os.Getenv(envRCArea) == "1" {
		inner := tune
		tune = func(c *node.Config) {
			c.RCSize = 4 << 20
			if inner != nil {
				inner(c)
			}
		}
	}
	c, err := cluster.Start(context.Background(), cluster.Options{Nodes: nodes, Size: 16 << 20, Log: log, Tune: tune})
	require.NoError(t, err, "daemon log:\n%s", log.String())
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", log.String())
		}
	})
	return c
}

func runWorkers(t *testing.T, c *cluster.Cluster, name string, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	var out syncWriter
	out.w = &bytes.Buffer{}
	err := c.Run(ctx, []string{os.Args[0], "-test.run=^$"}, &out, append(env, envWorker+"="+name)...)
	require.NoError(t, err, "output:\n%s", out.String())
	return out.String()
}

func TestAtomicCountersExact(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "counters")
	require.Equal(t, 3, strings.Count(out, "totals exact: 60000 and 60000"), out)
	st, err := c.Status(0)
	require.NoError(t, err)
	require.NotZero(t, st.Migrations["in"]+st.Migrations["out"], "the counters must have migrated")
	sg := st.Stages
	require.NotZero(t, sg.Remote.Count, "remote faults are broken down into stages")
	require.Equal(t, sg.Remote.Count, sg.Send.Count)
	require.Equal(t, sg.Remote.Count, sg.Install.Count)
	require.LessOrEqual(t, sg.Remote.Count, st.Latency.Count, "no more traced faults than faults")
}

func TestMessagePassingLitmus(t *testing.T) {
	c := startCluster(t, 3)
	runWorkers(t, c, "litmus")
}

func TestPointerSameAddress(t *testing.T) {
	c := startCluster(t, 3)
	runWorkers(t, c, "pointer")
}

// A program whose daemon dies must fail loudly, not go on.
func TestDaemonDeathFailsProgram(t *testing.T) {
	c := startCluster(t, 2)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), c.Env(0)...), envWorker+"=hold")
	var out syncWriter
	out.w = &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, func() bool { return strings.Contains(out.String(), "attached") })
	c.Kill(0)
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "output:\n%s", out.String())
	require.Equal(t, 3, ee.ExitCode(), out.String())
	require.Contains(t, out.String(), "lost the node daemon")
}

// A program killed with SIGKILL in the middle of faults: the daemon and the
// other programs go on, and the memory stays coherent.
func TestKilledProgramLeavesClusterWorking(t *testing.T) {
	c := startCluster(t, 2)
	var procs []*exec.Cmd
	for i := 0; i < 2; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(append(os.Environ(), c.Env(i)...), envWorker+"=faultloop")
		var out syncWriter
		out.w = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		procs = append(procs, cmd)
		waitFor(t, func() bool { return strings.Contains(out.String(), "looping") })
	}
	time.Sleep(200 * time.Millisecond) // let them fault against each other
	for _, p := range procs {
		require.NoError(t, p.Process.Signal(syscall.SIGKILL))
		p.Wait()
	}
	out := runWorkers(t, c, "counters")
	require.Equal(t, 2, strings.Count(out, "totals exact: 40000 and 40000"), out)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func init() {
	workers["owner"] = workOwner
	workers["reader"] = workReader
}

// workOwner writes page 40 and waits to be killed.
func workOwner(r *dsm.Region) error {
	atomic.StoreUint64(word(r, 40*r.PageSize()), 42)
	fmt.Println("written")
	time.Sleep(time.Minute)
	return nil
}

// workReader reads page 40 once the file named by DSM_TEST_GO exists.
func workReader(r *dsm.Region) error {
	fmt.Println("ready")
	for {
		if _, err := os.Stat(os.Getenv("DSM_TEST_GO")); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	v := atomic.LoadUint64(word(r, 40*r.PageSize()))
	return fmt.Errorf("read %d from a page whose owner is gone", v)
}

// A peer that disappears with a page: the program that needs the page is
// told why and exits, instead of waiting forever or reading anything wrong.
func TestPeerGoneWithPageStopsProgram(t *testing.T) {
	c := startClusterTuned(t, 2, func(cfg *node.Config) { cfg.FaultTimeout = node.Duration(time.Second) })
	_, oout := startWorker(t, c.Env(1), "owner")
	waitFor(t, func() bool { return strings.Contains(oout.String(), "written") })
	gofile := filepath.Join(t.TempDir(), "go")
	rcmd, rout := startWorker(t, append(c.Env(0), "DSM_TEST_GO="+gofile), "reader")
	waitFor(t, func() bool { return strings.Contains(rout.String(), "ready") })
	c.Kill(1)
	require.NoError(t, os.WriteFile(gofile, nil, 0o644))
	err := rcmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, rout.String())
	require.Equal(t, 3, ee.ExitCode(), rout.String())
	require.Contains(t, rout.String(), "has waited")
	require.Contains(t, rout.String(), "node 1")
	require.NotContains(t, rout.String(), "read 42")
}

// A node that restarts has lost its pages and its directory: the other nodes
// must not go on as if nothing happened. They stop, and their programs exit
// with the reason.
func TestRestartedPeerStopsTheCluster(t *testing.T) {
	c := startCluster(t, 2)
	cmd, out := startWorker(t, c.Env(0), "hold")
	waitFor(t, func() bool { return strings.Contains(out.String(), "attached") })
	c.Kill(1)
	require.NoError(t, c.Restart(1))
	err := cmd.Wait()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, out.String())
	require.Equal(t, 3, ee.ExitCode(), out.String())
	require.Contains(t, out.String(), "node 1 restarted")
}

func init() { workers["shared3"] = workShared3 }

// workShared3: three programs, two of them on one node, increment one word
// and a word on another page; the totals must be exact.
func workShared3(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	if err := r.Barrier(ctx, "start", 3); err != nil {
		return err
	}
	for i := 0; i < increments; i++ {
		atomic.AddUint64(word(r, 11*ps), 1)
		atomic.AddUint64(word(r, 12*ps+8), 1)
	}
	if err := r.Barrier(ctx, "end", 3); err != nil {
		return err
	}
	for _, off := range []int{11 * ps, 12*ps + 8} {
		if got := atomic.LoadUint64(word(r, off)); got != 3*increments {
			return fmt.Errorf("word at %d = %d, want %d", off, got, 3*increments)
		}
	}
	fmt.Println("three programs exact")
	return r.Barrier(ctx, "exit", 3)
}

// Two programs attached to one daemon share its pages (coherent by
// hardware) and stay coherent with a program on another node.
func TestTwoProgramsOnOneNode(t *testing.T) {
	c := startCluster(t, 2)
	var cmds []*exec.Cmd
	var outs []*syncWriter
	for _, n := range []int{0, 0, 1} {
		cmd, out := startWorker(t, c.Env(n), "shared3")
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	for i, cmd := range cmds {
		require.NoError(t, cmd.Wait(), outs[i].String())
		require.Contains(t, outs[i].String(), "three programs exact")
	}
}

func init() { workers["scan"] = workScan }

// workScan: node 1 writes 256 pages, node 0 reads them in order and checks
// every word it reads.
func workScan(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	const first, pages = 100, 256
	if r.NodeID() == 1 {
		for p := first; p < first+pages; p++ {
			for w := 0; w < ps; w += 512 {
				atomic.StoreUint64(word(r, p*ps+w), uint64(p*ps+w))
			}
		}
	}
	if err := r.Barrier(ctx, "written", r.Nodes()); err != nil {
		return err
	}
	if r.NodeID() == 0 {
		for p := first; p < first+pages; p++ {
			for w := 0; w < ps; w += 512 {
				if got := atomic.LoadUint64(word(r, p*ps+w)); got != uint64(p*ps+w) {
					return fmt.Errorf("page %d word %d = %d", p, w, got)
				}
			}
		}
		fmt.Println("scan ok")
	}
	return r.Barrier(ctx, "done", r.Nodes())
}

// A sequential scan of a remote region reads right with read-ahead on (the
// daemon asks for pages ahead of the faults) and off, and with datagrams
// of every size: the loopback default (a page in one datagram), an
// Ethernet frame's (a page in three) and a jumbo frame's.
func TestSequentialScanReadAhead(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ahead   int
		mtu     int
		wantMTU int
	}{
		{"read_ahead=-1", -1, 0, dsmnet.LoopbackMTU},
		{"read_ahead=7", 7, 0, dsmnet.LoopbackMTU},
		{"read_ahead=7/mtu=1400", 7, dsmnet.DefaultMTU, dsmnet.DefaultMTU},
		{"read_ahead=7/mtu=9000", 7, 9000, 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startClusterTuned(t, 2, func(cfg *node.Config) {
				// Uncompressed, a page is 4 KiB on the wire.
				cfg.ReadAhead, cfg.MTU, cfg.NoCompress = tc.ahead, tc.mtu, true
			})
			out := runWorkers(t, c, "scan")
			require.Contains(t, out, "scan ok")
			st, err := c.Status(0)
			require.NoError(t, err)
			require.Equal(t, tc.wantMTU, st.MTU)
			if tc.ahead < 0 {
				require.Zero(t, st.Migrations["read_ahead"])
			} else {
				require.Greater(t, st.Migrations["read_ahead"], uint64(100), "most of 256 sequential pages are asked for ahead of their fault")
			}
			// Node 1 sent the 256 pages; in datagrams of 1,400 bytes each
			// takes three.
			st1, err := c.Status(1)
			require.NoError(t, err)
			require.Equal(t, tc.wantMTU, st1.MTU)
			if tc.wantMTU < 4096 {
				require.GreaterOrEqual(t, st1.Peers[0].PacketsOut, uint64(3*256), "256 pages at MTU %d", tc.wantMTU)
			}
		})
	}
}
