package dsm_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
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
