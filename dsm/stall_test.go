package dsm_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/node"
)

func init() { workers["lockthroughstall"] = workLockThroughStall }

// workLockThroughStall: attach, say so, and once told the home is stopped
// (a second after "ready"), ask for a lock homed there with a minute to
// get it.
func workLockThroughStall(r *dsm.Region) error {
	fmt.Println("ready")
	time.Sleep(time.Second) // the test stops the lock's home meanwhile
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mu := r.Mutex("stalled")
	fmt.Println("locking")
	t0 := time.Now()
	if err := mu.Lock(ctx); err != nil {
		return err
	}
	fmt.Printf("got token %d after %v\n", mu.Token(), time.Since(t0).Round(time.Millisecond))
	return mu.Unlock()
}

// A lock's home that stalls (SIGSTOP, as a long pause or a frozen VM
// would) for longer than the failure detector's 1.5 s is a stall, not a
// failure: a Lock whose context allows it waits until the home is back and
// gets the lock, instead of failing with "home node is down" after 1.5 s.
func TestLockWaitsThroughStalledHome(t *testing.T) {
	c := startCluster(t, 2)
	home := lockHome("stalled", 2)
	pid := c.Daemons[home].PID()
	wcmd, wout := startWorker(t, c.Env(1-home), "lockthroughstall")
	waitFor(t, func() bool { return strings.Contains(wout.String(), "ready") })
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	waitFor(t, func() bool { return strings.Contains(wout.String(), "locking") })
	// Longer than DeadAfter (1.5 s): the other node declares the home down.
	time.Sleep(3 * time.Second)
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	resumed = true
	err := wcmd.Wait()
	require.NoError(t, err, wout.String())
	require.Contains(t, wout.String(), "got token ")
	t.Logf("home stopped 3 s: %s", strings.TrimSpace(wout.String()))
}

func init() {
	workers["ownpage"] = workOwnPage
	workers["readpage"] = workReadPage
}

// silentPage is a page homed on node 1 of a 2-node cluster: its first
// write there is granted without a message.
func silentPage(t testing.TB) int {
	ring := dht.ClusterRing(2)
	for p := 40; p < 1000; p++ {
		if ring.Home(dht.PageKey(uint32(p))) == 1 {
			return p
		}
	}
	t.Fatal("no page homed on node 1")
	return 0
}

// workOwnPage writes the page named by DSM_TEST_PAGE and waits.
func workOwnPage(r *dsm.Region) error {
	p, _ := strconv.Atoi(os.Getenv("DSM_TEST_PAGE"))
	atomic.StoreUint64(word(r, p*r.PageSize()), 42)
	fmt.Println("written")
	time.Sleep(time.Minute)
	return nil
}

// workReadPage reads the page named by DSM_TEST_PAGE.
func workReadPage(r *dsm.Region) error {
	p, _ := strconv.Atoi(os.Getenv("DSM_TEST_PAGE"))
	fmt.Println("reading")
	v := atomic.LoadUint64(word(r, p*r.PageSize()))
	return fmt.Errorf("read %d from a page whose holder never answered", v)
}

// A peer that is up (its transport answers, heartbeats flow) but never
// answers a page request is a failure too: the program that waits for the
// page is stopped after fault_timeout with the reason, naming the silent
// node, as it is when the peer is down.
func TestSilentPeerStopsProgram(t *testing.T) {
	page := silentPage(t)
	c := startClusterTuned(t, 2, func(cfg *node.Config) {
		cfg.FaultTimeout = node.Duration(time.Second)
		cfg.MuteCoherence = cfg.ID == 1
	})
	env := "DSM_TEST_PAGE=" + strconv.Itoa(page)
	_, oout := startWorker(t, append(c.Env(1), env), "ownpage")
	waitFor(t, func() bool { return strings.Contains(oout.String(), "written") })
	rcmd, rout := startWorker(t, append(c.Env(0), env), "readpage")
	done := make(chan error, 1)
	go func() { done <- rcmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, rout.String())
		require.Equal(t, 3, ee.ExitCode(), rout.String())
		require.Contains(t, rout.String(), "with every node up")
		require.Contains(t, rout.String(), "node 1")
		require.NotContains(t, rout.String(), "read 42")
	case <-time.After(30 * time.Second):
		t.Fatalf("the reader still waits 30 s after its fault, with fault_timeout 1 s:\n%s", rout.String())
	}
}
