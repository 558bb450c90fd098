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

func init() {
	workers["reacquire"] = workReacquire
	workers["mixtokens"] = workMixTokens
	workers["cachelock"] = workCacheLock
}

// workReacquire: after the first Lock, Lock+Unlock of the same Mutex on
// the same node sends the daemon nothing, and every hold has a larger
// token.
func workReacquire(r *dsm.Region) error {
	ctx := context.Background()
	mu := r.Mutex(fmt.Sprintf("again/%d", r.NodeID())) // nobody else wants it
	if err := mu.Lock(ctx); err != nil {
		return err
	}
	last := mu.Token()
	if err := mu.Unlock(); err != nil {
		return err
	}
	before := dsm.LockMessages(r)
	for i := 0; i < 1000; i++ {
		if err := mu.Lock(ctx); err != nil {
			return err
		}
		if tok := mu.Token(); tok <= last {
			return fmt.Errorf("re-acquisition %d: token %#x after %#x", i, tok, last)
		}
		last = mu.Token()
		if err := mu.Unlock(); err != nil {
			return err
		}
	}
	if sent := dsm.LockMessages(r) - before; sent != 0 {
		return fmt.Errorf("1000 re-acquisitions sent %d lock messages, want 0", sent)
	}
	fmt.Println("reacquire: no messages")
	return nil
}

// workMixTokens: the nodes take the lock in turns, each several times in a
// row (from its cache after the first), so that it moves from node to node
// (recalls) between runs of local re-grants; then all contend freely. The
// tokens stored in the region under the lock strictly increase across all
// of it.
func workMixTokens(r *dsm.Region) error {
	ctx := context.Background()
	ps := r.PageSize()
	lastTok := word(r, 10*ps)
	lastNode := word(r, 10*ps+8)
	mu := r.Mutex("mix")
	me := uint64(r.NodeID()) + 1
	hold := func() error {
		if err := mu.Lock(ctx); err != nil {
			return err
		}
		if tok := mu.Token(); tok <= *lastTok {
			return fmt.Errorf("token %#x after %#x (node %d held it last)", tok, *lastTok, *lastNode-1)
		}
		*lastTok, *lastNode = mu.Token(), me
		return mu.Unlock()
	}
	local, moves := 0, 0
	for round := 0; round < 10*r.Nodes(); round++ {
		if err := r.Barrier(ctx, fmt.Sprintf("turn/%d", round), r.Nodes()); err != nil {
			return err
		}
		if round%r.Nodes() != r.NodeID() {
			continue
		}
		for k := 0; k < 2+round%5; k++ {
			sent := dsm.LockMessages(r)
			prev := *lastNode // read before Lock: only a hint, for the count
			if err := hold(); err != nil {
				return err
			}
			switch {
			case k > 0 && dsm.LockMessages(r) == sent:
				local++
			case k == 0 && prev != me:
				moves++
			}
		}
	}
	if local == 0 || moves == 0 {
		return fmt.Errorf("%d holds from the cache, %d moves to this node: the test exercised too little", local, moves)
	}
	if err := r.Barrier(ctx, "free", r.Nodes()); err != nil {
		return err
	}
	for i := 0; i < 2000; i++ {
		if err := hold(); err != nil {
			return err
		}
	}
	if err := r.Barrier(ctx, "end", r.Nodes()); err != nil {
		return err
	}
	fmt.Printf("mixtokens ok: %d local, %d moves\n", local, moves)
	return r.Barrier(ctx, "exit", r.Nodes())
}

// workCacheLock takes the lock a few times, keeps it cached, prints its
// last token and waits to be recalled or killed.
func workCacheLock(r *dsm.Region) error {
	mu := r.Mutex("held")
	for range 5 {
		if err := mu.Lock(context.Background()); err != nil {
			return err
		}
		if err := mu.Unlock(); err != nil {
			return err
		}
	}
	fmt.Printf("cached token %d\n", mu.Token())
	time.Sleep(2 * time.Minute)
	return nil
}

func TestMutexReacquireSendsNothing(t *testing.T) {
	c := startCluster(t, 2)
	out := runWorkers(t, c, "reacquire")
	require.Equal(t, 2, strings.Count(out, "reacquire: no messages"), out)
}

func TestMutexTokensAcrossCacheAndHandoff(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "mixtokens")
	require.Equal(t, 3, strings.Count(out, "mixtokens ok"), out)
}

// A lock kept cached by an idle program is recalled when another node asks.
func TestCachedLockRecalled(t *testing.T) {
	c := startCluster(t, 2)
	_, hout := startWorker(t, c.Env(0), "cachelock")
	tok1 := tokenAfter(t, hout, "cached token ")
	wcmd, wout := startWorker(t, c.Env(1), "waitlock")
	tok2 := tokenAfter(t, wout, "got token ")
	require.Greater(t, tok2, tok1)
	require.NoError(t, wcmd.Wait(), wout.String())
}

// A program killed while it keeps a lock cached (stopped first, so that it
// cannot answer the recall) frees the lock at once: its daemon releases its
// locks when it detaches, and the next token is larger than any the
// program could have given itself.
func TestCachedLockProgramKilled(t *testing.T) {
	c := startCluster(t, 2)
	hcmd, hout := startWorker(t, c.Env(0), "cachelock")
	tok1 := tokenAfter(t, hout, "cached token ")
	require.NoError(t, hcmd.Process.Signal(syscall.SIGSTOP))
	wcmd, wout := startWorker(t, c.Env(1), "waitlock")
	waitFor(t, func() bool { return strings.Contains(wout.String(), "waiting") })
	require.NotContains(t, wout.String(), "got token", "the lock moved while its cached holder was stopped")
	require.NoError(t, hcmd.Process.Kill())
	tok2 := tokenAfter(t, wout, "got token ")
	require.Greater(t, tok2, tok1)
	require.NoError(t, wcmd.Wait(), wout.String())
}
