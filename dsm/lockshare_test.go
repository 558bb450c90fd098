package dsm_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/dsm"
)

// Data that the nodes update under a lock is truly shared, and already
// synchronised: the analyzer must say so, rather than advise to synchronise
// through a lock.

func init() { workers["lockshare"] = workLockShare }

// bankShard is a shard of a bank: its accounts, and the number of transfers
// made in it, packed in one page, so that the page moves with the shard's
// lock from node to node.
type bankShard struct {
	Balance   [32]int64
	Transfers uint64
}

const (
	lockShards   = 2
	startBalance = 1000
	// lockRun is how long the nodes make transfers: long enough for the
	// locks to change hands dozens of times whatever the machine's speed.
	lockRun = 300 * time.Millisecond
)

// workLockShare: every node makes transfers between accounts of the shards
// in turn, each under its shard's Mutex, with plain loads and stores that
// only the lock keeps from losing updates; then every node checks that no
// money was made or lost and that every transfer was counted once.
func workLockShare(r *dsm.Region) error {
	ctx := context.Background()
	// Each node's count of its transfers per shard, on a page of its own.
	countsOff, err := r.Alloc("lockshare/counts", 8*lockShards*r.Nodes(), r.PageSize())
	if err != nil {
		return err
	}
	var shards [lockShards]*bankShard
	var locks [lockShards]*dsm.Mutex
	for s := range shards {
		// Page-aligned: each shard's data is on a page of its own, which
		// only its lock protects.
		off, err := r.AllocStruct(fmt.Sprintf("Shard%d", s), (*bankShard)(nil), r.PageSize())
		if err != nil {
			return err
		}
		shards[s] = (*bankShard)(r.Ptr(off))
		locks[s] = r.Mutex(fmt.Sprintf("shard-%d", s))
	}
	if r.NodeID() == 0 {
		for _, sh := range shards {
			for i := range sh.Balance {
				sh.Balance[i] = startBalance
			}
		}
	}
	if err := r.Barrier(ctx, "lockshare/start", r.Nodes()); err != nil {
		return err
	}
	n := len(shards[0].Balance)
	var mine [lockShards]uint64
	end := time.Now().Add(lockRun)
	for i := 0; time.Now().Before(end); i++ {
		s := (i + r.NodeID()) % lockShards // the nodes want different shards at once
		sh := shards[s]
		if err := locks[s].Lock(ctx); err != nil {
			return err
		}
		from, to := (7*i+r.NodeID())%n, (13*i+5)%n
		amount := int64(i%10 + 1)
		sh.Balance[from] -= amount
		sh.Balance[to] += amount
		sh.Transfers++
		if err := locks[s].Unlock(); err != nil {
			return err
		}
		mine[s]++
	}
	for s, c := range mine {
		atomic.StoreUint64(word(r, countsOff+8*(r.NodeID()*lockShards+s)), c)
	}
	if err := r.Barrier(ctx, "lockshare/done", r.Nodes()); err != nil {
		return err
	}
	for s, sh := range shards {
		if err := locks[s].Lock(ctx); err != nil {
			return err
		}
		var sum int64
		for _, b := range sh.Balance {
			sum += b
		}
		transfers := sh.Transfers
		if err := locks[s].Unlock(); err != nil {
			return err
		}
		if want := int64(startBalance * n); sum != want {
			return fmt.Errorf("shard %d holds %d, want %d", s, sum, want)
		}
		var want uint64
		for node := range r.Nodes() {
			want += atomic.LoadUint64(word(r, countsOff+8*(node*lockShards+s)))
		}
		if transfers != want {
			return fmt.Errorf("shard %d counted %d transfers, the nodes made %d", s, transfers, want)
		}
	}
	fmt.Println("lockshare: totals exact")
	return r.Barrier(ctx, "lockshare/exit", r.Nodes())
}

func TestLockProtectedSharing(t *testing.T) {
	c := startCluster(t, 2)
	out := runWorkers(t, c, "lockshare")
	require.Equal(t, 2, strings.Count(out, "lockshare: totals exact"), out)
	// Each daemon judges the writes of its own programs.
	for node := range 2 {
		rep, err := c.Report(node, "")
		require.NoError(t, err)
		for s := range lockShards {
			prefix := fmt.Sprintf("Shard%d.", s)
			var found []analyzer.Finding
			for _, f := range rep.Findings {
				for _, v := range f.Vars {
					if strings.HasPrefix(v.Name, prefix) {
						found = append(found, f)
						break
					}
				}
			}
			require.Len(t, found, 1, "node %d: one finding about %s\n%s", node, prefix, rep.Text())
			f := found[0]
			require.Equal(t, analyzer.LockProtected, f.Class, "node %d:\n%s", node, rep.Text())
			require.Contains(t, f.Locks, fmt.Sprintf("shard-%d", s), f.String())
			require.Contains(t, f.Summary, "lock-protected", f.String())
			require.Contains(t, f.Fix, "already orders the writes", f.String())
			require.NotContains(t, f.Fix, "synchronise through a lock", f.String())
			t.Logf("node %d: %s", node, f.Summary)
		}
	}
}
