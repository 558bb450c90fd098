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
	return lockOnce(r, "stalled", "locking")
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
	started := time.Now()
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
		t.Logf("the reader stopped %v after it started, with fault_timeout 1 s: %s",
			time.Since(started).Round(time.Millisecond), strings.TrimSpace(rout.String()))
	case <-time.After(30 * time.Second):
		t.Fatalf("the reader still waits 30 s after its fault, with fault_timeout 1 s:\n%s", rout.String())
	}
}

func init() {
	workers["cachedholder"] = workCachedHolder
	workers["stallwaiter"] = workStallWaiter
}

// workCachedHolder takes the lock "cachedstall" again and again (a cached
// lock, re-granted in this program) until the file DSM_TEST_STOP exists,
// then prints the time of every acquisition.
func workCachedHolder(r *dsm.Region) error {
	mu := r.Mutex("cachedstall")
	var times []string
	for i := 0; ; i++ {
		if _, err := os.Stat(os.Getenv("DSM_TEST_STOP")); err == nil {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := mu.Lock(ctx)
		cancel()
		if err != nil {
			return err
		}
		times = append(times, strconv.FormatInt(time.Now().UnixNano(), 10))
		if err := mu.Unlock(); err != nil {
			return err
		}
		if i == 0 {
			fmt.Println("looping")
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println("holder acquired at:", strings.Join(times, " "))
	return nil
}

// workStallWaiter takes the lock "cachedstall" once the file DSM_TEST_GO
// exists, holds it 300 ms and says when it had it.
func workStallWaiter(r *dsm.Region) error {
	mu := r.Mutex("cachedstall")
	fmt.Println("waiting")
	for {
		if _, err := os.Stat(os.Getenv("DSM_TEST_GO")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := mu.Lock(ctx); err != nil {
		return err
	}
	fmt.Println("got", time.Now().UnixNano())
	time.Sleep(300 * time.Millisecond)
	fmt.Println("release", time.Now().UnixNano())
	return mu.Unlock()
}

// A program keeps a lock it released (cached) and takes it again by
// itself. When its daemon stalls (SIGSTOP) for longer than the lease, the
// home grants the lock to another node; the program must by then have
// stopped taking it by itself: never two holders at once.
func TestCachedLockStopsWhenItsDaemonStalls(t *testing.T) {
	c := startCluster(t, 2)
	home := lockHome("cachedstall", 2)
	holderNode := 1 - home // the waiter's node is the home, which stays up
	dir := t.TempDir()
	stop, goFile := dir+"/stop", dir+"/go"
	hcmd, hout := startWorker(t, append(c.Env(holderNode), "DSM_TEST_STOP="+stop), "cachedholder")
	waitFor(t, func() bool { return strings.Contains(hout.String(), "looping") })
	wcmd, wout := startWorker(t, append(c.Env(home), "DSM_TEST_GO="+goFile), "stallwaiter")
	waitFor(t, func() bool { return strings.Contains(wout.String(), "waiting") })

	pid := c.Daemons[holderNode].PID()
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	require.NoError(t, os.WriteFile(goFile, nil, 0o644))
	// The home grants the waiter the lock once the holder's lease ran
	// out (2.5 s): the holder's daemon stays stopped until the waiter let
	// go of it.
	require.NoError(t, wcmd.Wait(), wout.String())
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	resumed = true
	require.NoError(t, os.WriteFile(stop, nil, 0o644))
	require.NoError(t, hcmd.Wait(), hout.String())

	var got, released int64
	for _, l := range strings.Split(wout.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "got "); ok {
			got, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
		if v, ok := strings.CutPrefix(l, "release "); ok {
			released, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	require.Positive(t, got, wout.String())
	require.Positive(t, released, wout.String())
	_, list, ok := strings.Cut(hout.String(), "holder acquired at: ")
	require.True(t, ok, hout.String())
	n := 0
	for _, f := range strings.Fields(list) {
		at, err := strconv.ParseInt(f, 10, 64)
		require.NoError(t, err)
		n++
		require.False(t, at >= got && at <= released,
			"the holder took the lock at %d, while the waiter held it (%d to %d)", at, got, released)
	}
	t.Logf("holder: %d acquisitions, none while the waiter held the lock for %v", n, time.Duration(released-got))
}
