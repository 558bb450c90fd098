package dsm_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/dsm"
)

func init() {
	workers["mutex"] = workMutex
	workers["rwmutex"] = workRWMutex
	workers["barrier"] = workBarrier
	workers["holdlock"] = workHoldLock
	workers["waitlock"] = workWaitLock
}

const lockIncrements = 10000

// workMutex: non-atomic read-modify-write increments of one shared word
// under a distributed Mutex. The total must be exact.
func workMutex(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	counter := (*uint64)(r.Ptr(3 * ps))
	mu := r.Mutex("counter")
	if err := r.Barrier(ctx, "start", r.Nodes()); err != nil {
		return err
	}
	var last uint64
	for i := 0; i < lockIncrements; i++ {
		if err := mu.Lock(ctx); err != nil {
			return err
		}
		if tok := mu.Token(); tok <= last {
			return fmt.Errorf("fencing token %#x after %#x: not increasing", tok, last)
		} else {
			last = tok
		}
		v := *counter    // a plain load ...
		*counter = v + 1 // ... and a plain store: only the lock makes it safe
		if err := mu.Unlock(); err != nil {
			return err
		}
	}
	if err := r.Barrier(ctx, "end", r.Nodes()); err != nil {
		return err
	}
	want := uint64(lockIncrements * r.Nodes())
	if got := *counter; got != want {
		return fmt.Errorf("counter = %d, want %d", got, want)
	}
	fmt.Printf("mutex total exact: %d\n", want)
	return r.Barrier(ctx, "exit", r.Nodes())
}

// workRWMutex: writers move value between two words (a+b stays 0); readers
// check the invariant under a read lock.
func workRWMutex(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	a := (*int64)(r.Ptr(5 * ps))
	b := (*int64)(r.Ptr(6 * ps))
	rw := r.RWMutex("table")
	if err := r.Barrier(ctx, "start", r.Nodes()); err != nil {
		return err
	}
	reads, writes := 0, 0
	for i := 0; i < 600; i++ {
		if (i+r.NodeID())%4 == 0 {
			if err := rw.Lock(ctx); err != nil {
				return err
			}
			*a += 7
			*b -= 7
			writes++
			if err := rw.Unlock(); err != nil {
				return err
			}
			continue
		}
		if err := rw.RLock(ctx); err != nil {
			return err
		}
		x, y := *a, *b
		if err := rw.RUnlock(); err != nil {
			return err
		}
		if x+y != 0 {
			return fmt.Errorf("reader saw a=%d b=%d under a read lock", x, y)
		}
		reads++
	}
	if err := r.Barrier(ctx, "end", r.Nodes()); err != nil {
		return err
	}
	fmt.Printf("rwmutex ok: %d reads, %d writes, a=%d\n", reads, writes, *a)
	return r.Barrier(ctx, "exit", r.Nodes())
}

// workBarrier: 100 phases; after barrier k every node has finished phase k
// and none has gone past phase k+1.
func workBarrier(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	slot := func(n int) *uint64 { return (*uint64)(r.Ptr(8*ps + 8*n)) }
	for k := uint64(1); k <= 100; k++ {
		atomic.StoreUint64(slot(r.NodeID()), k) // finished phase k
		if err := r.Barrier(ctx, "phase", r.Nodes()); err != nil {
			return err
		}
		for n := 0; n < r.Nodes(); n++ {
			got := atomic.LoadUint64(slot(n))
			if got < k || got > k+1 {
				return fmt.Errorf("after barrier %d node %d is at phase %d", k, n, got)
			}
		}
	}
	fmt.Println("barrier phases ok")
	return r.Barrier(ctx, "exit", r.Nodes())
}

// workHoldLock takes the lock, prints its token and holds it until killed.
func workHoldLock(r *dsm.Region) error {
	mu := r.Mutex("held")
	if err := mu.Lock(context.Background()); err != nil {
		return err
	}
	fmt.Printf("holding token %d\n", mu.Token())
	time.Sleep(2 * time.Minute)
	return nil
}

// workWaitLock waits for the lock and prints its token.
func workWaitLock(r *dsm.Region) error { return lockOnce(r, "held", "waiting") }

// lockOnce says what it does (announce), takes lock name with a minute to
// get it, prints its token and how long it waited, and unlocks.
func lockOnce(r *dsm.Region, name, announce string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mu := r.Mutex(name)
	fmt.Println(announce)
	t0 := time.Now()
	if err := mu.Lock(ctx); err != nil {
		return err
	}
	fmt.Printf("got token %d after %v\n", mu.Token(), time.Since(t0).Round(time.Millisecond))
	return mu.Unlock()
}

func TestMutexIncrementsExact(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "mutex")
	require.Equal(t, 3, strings.Count(out, "mutex total exact: 30000"), out)
}

func TestRWMutexInvariant(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "rwmutex")
	require.Equal(t, 3, strings.Count(out, "rwmutex ok"), out)
}

func TestBarrierPhases(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "barrier")
	require.Equal(t, 3, strings.Count(out, "barrier phases ok"), out)
}

// startWorker starts one worker attached to node i and returns its output.
func startWorker(t *testing.T, env []string, name string) (*exec.Cmd, *syncWriter) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...), envWorker+"="+name)
	out := &syncWriter{w: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, out
}

func tokenAfter(t *testing.T, out *syncWriter, prefix string) uint64 {
	t.Helper()
	waitFor(t, func() bool { return strings.Contains(out.String(), prefix) })
	s := out.String()
	s = s[strings.Index(s, prefix)+len(prefix):]
	f := strings.Fields(s)
	require.NotEmpty(t, f, out.String())
	tok, err := strconv.ParseUint(f[0], 10, 64)
	require.NoError(t, err, out.String())
	return tok
}

// Killing the daemon of a lock holder: another node gets the lock after the
// lease, with a larger token.
func TestLockHolderDaemonKilled(t *testing.T) {
	c := startCluster(t, 3)
	home := lockHome("held", 3)
	holderNode := (home + 1) % 3 // the holder's node is not the lock's home
	waiterNode := (home + 2) % 3
	_, hout := startWorker(t, c.Env(holderNode), "holdlock")
	tok1 := tokenAfter(t, hout, "holding token ")
	wcmd, wout := startWorker(t, c.Env(waiterNode), "waitlock")
	waitFor(t, func() bool { return strings.Contains(wout.String(), "waiting") })
	// dsmnode status of the home lists the lock: holder, waiter, token, lease.
	waitFor(t, func() bool {
		st, err := c.Status(home)
		require.NoError(t, err)
		for _, l := range st.Locks {
			if l.Name == "held" && len(l.Holders) == 1 && l.Waiters == 1 {
				require.Equal(t, tok1, l.Token)
				require.Contains(t, l.Holders[0], fmt.Sprintf("node %d", holderNode))
				require.NotEmpty(t, l.Lease)
				return true
			}
		}
		return false
	})
	c.Kill(holderNode)
	tok2 := tokenAfter(t, wout, "got token ")
	require.Greater(t, tok2, tok1, "the next holder's fencing token must be larger")
	require.NoError(t, wcmd.Wait(), wout.String())
	t.Logf("holder's daemon killed: waiter %s", strings.TrimSpace(wout.String()))
}

// Killing only the holder program frees the lock at once (its daemon
// releases it; no lease has to run out).
func TestLockHolderProgramKilled(t *testing.T) {
	c := startCluster(t, 2)
	hcmd, hout := startWorker(t, c.Env(0), "holdlock")
	tok1 := tokenAfter(t, hout, "holding token ")
	wcmd, wout := startWorker(t, c.Env(1), "waitlock")
	waitFor(t, func() bool { return strings.Contains(wout.String(), "waiting") })
	require.NoError(t, hcmd.Process.Kill())
	tok2 := tokenAfter(t, wout, "got token ")
	require.Greater(t, tok2, tok1)
	require.NoError(t, wcmd.Wait(), wout.String())
	t.Logf("holder program killed: waiter %s", strings.TrimSpace(wout.String()))
}

// lockHome is the node a lock name is homed on: the DHT ring every daemon
// uses.
func lockHome(name string, nodes int) int {
	return int(dht.ClusterRing(nodes).HomeOfString(name))
}

func init() { workers["election"] = workElection }

// workElection: every node campaigns again and again; while one leads no
// other may, and Leader names it.
func workElection(r *dsm.Region) error {
	ctx := context.Background()
	inside := (*uint64)(r.Ptr(9 * r.PageSize()))
	el := r.Election("scheduler")
	if err := r.Barrier(ctx, "start", r.Nodes()); err != nil {
		return err
	}
	var last uint64
	for i := 0; i < 20; i++ {
		if err := el.Campaign(ctx); err != nil {
			return err
		}
		if !atomic.CompareAndSwapUint64(inside, 0, uint64(r.NodeID())+1) {
			return fmt.Errorf("node %d elected while node %d leads", r.NodeID(), atomic.LoadUint64(inside)-1)
		}
		if tok := el.Token(); tok <= last {
			return fmt.Errorf("leadership token %#x after %#x", tok, last)
		} else {
			last = tok
		}
		leader, ok, err := el.Leader(ctx)
		if err != nil {
			return err
		}
		if ok && leader != r.NodeID() {
			return fmt.Errorf("node %d leads but Leader says node %d", r.NodeID(), leader)
		}
		atomic.StoreUint64(inside, 0)
		if err := el.Resign(); err != nil {
			return err
		}
	}
	fmt.Println("election ok")
	return r.Barrier(ctx, "exit", r.Nodes())
}

func TestElectionOneLeaderAtATime(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "election")
	require.Equal(t, 3, strings.Count(out, "election ok"), out)
}
