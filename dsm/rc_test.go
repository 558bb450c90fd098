package dsm_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/analyzer"
	"github.com/dsmrt/dsm/dsm"
	"github.com/dsmrt/dsm/node"
)

func init() {
	workers["rcmailbox"] = workRCMailbox
}

// rcCluster starts nodes with a release-consistent area of 4 MiB.
func rcCluster(t *testing.T, nodes int) func(*node.Config) {
	return func(c *node.Config) { c.RCSize = 4 << 20 }
}

const mailboxWords = 3000 // across several pages

// workRCMailbox: node 0 writes words of release-consistent memory,
// releases, and raises a flag in sequentially consistent memory; the other
// nodes wait for the flag, acquire, and must read every word.
func workRCMailbox(r *dsm.Region) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	off, err := r.Alloc("rc_mailbox", 8*mailboxWords, 8, dsm.ReleaseConsistent)
	if err != nil {
		return err
	}
	foff, err := r.Alloc("rc_flag", 8, 8)
	if err != nil {
		return err
	}
	data := unsafe.Slice((*uint64)(r.Ptr(off)), mailboxWords)
	flag := (*uint64)(r.Ptr(foff))
	for round := uint64(1); round <= 3; round++ {
		if r.NodeID() == 0 {
			for i := range data {
				data[i] = round<<32 | uint64(i)
			}
			if err := r.Release(ctx); err != nil {
				return err
			}
			atomic.StoreUint64(flag, round)
		}
		for atomic.LoadUint64(flag) < round {
			time.Sleep(50 * time.Microsecond)
		}
		if err := r.Acquire(ctx); err != nil {
			return err
		}
		for i, v := range data {
			if v != round<<32|uint64(i) {
				return fmt.Errorf("round %d: node %d read word %d = %#x, want %#x", round, r.NodeID(), i, v, round<<32|uint64(i))
			}
		}
		if err := r.Barrier(ctx, fmt.Sprintf("rc_round_%d", round), r.Nodes()); err != nil {
			return err
		}
	}
	fmt.Printf("node %d read every word of 3 rounds\n", r.NodeID())
	return nil
}

func TestReleaseConsistentMailbox(t *testing.T) {
	c := startClusterTuned(t, 3, rcCluster(t, 3))
	out := runWorkers(t, c, "rcmailbox")
	for i := range 3 {
		require.Contains(t, out, fmt.Sprintf("node %d read every word of 3 rounds", i))
	}
	// The words travelled as diffs and copies, not by the directory
	// protocol: node 0 sent diffs, the readers had copies invalidated.
	var diffs, invalidations int
	for i := range 3 {
		st, err := c.Status(i)
		require.NoError(t, err)
		require.NotNil(t, st.RC)
		diffs += st.RC.Engine.Diffs
		invalidations += st.RC.Engine.Invalidations
		require.Zero(t, st.RC.RacesFound, "no data race in this program")
	}
	require.NotZero(t, diffs)
	require.NotZero(t, invalidations)
}

func init() {
	workers["rcbank"] = workRCBank
}

const (
	bankAccounts = 48
	bankShards   = 4
	bankStart    = 1000
	bankRounds   = 150
	bankThreads  = 2 // goroutines per node
)

// bankState is the bank in release-consistent memory: every shard's
// accounts and counter on one page, each shard under its own Mutex.
type bankState struct {
	Accounts  [bankAccounts]int64
	Transfers [bankShards]uint64 // per shard, transfers made
}

// workRCBank: node 0 opens the accounts; every node then makes transfers
// between two accounts of a shard under the shard's lock; at the end every
// node checks, after a barrier, that no money and no transfer was lost.
func workRCBank(r *dsm.Region) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	off, err := r.AllocStruct("Bank", (*bankState)(nil), 0, dsm.ReleaseConsistent)
	if err != nil {
		return err
	}
	b := (*bankState)(r.Ptr(off))
	var locks [bankShards]*dsm.Mutex
	for i := range locks {
		locks[i] = r.Mutex(fmt.Sprintf("bank/shard/%d", i))
	}
	if r.NodeID() == 0 {
		for s := range bankShards {
			if err := locks[s].Lock(ctx); err != nil {
				return err
			}
			for a := s; a < bankAccounts; a += bankShards {
				b.Accounts[a] = bankStart
			}
			if err := locks[s].Unlock(); err != nil {
				return err
			}
		}
	}
	if err := r.Barrier(ctx, "bank_open", r.Nodes()); err != nil {
		return err
	}
	// Two goroutines per node make transfers at once: one thread's
	// writes to a shard's accounts meet the other's acquires of another
	// shard's lock on the same page.
	var made [bankShards]atomic.Uint64
	errs := make(chan error, bankThreads)
	for g := range bankThreads {
		go func() {
			rng := uint64(r.NodeID()*bankThreads+g)*7919 + 1
			next := func(n uint64) uint64 { rng = rng*6364136223846793005 + 1442695040888963407; return (rng >> 33) % n }
			for range bankRounds / bankThreads {
				s := int(next(bankShards))
				from := s + bankShards*int(next(bankAccounts/bankShards))
				to := s + bankShards*int(next(bankAccounts/bankShards))
				if err := locks[s].Lock(ctx); err != nil {
					errs <- err
					return
				}
				// The amount depends on the balance: a stale read shows
				// up as money made or lost, and a lost transfer in the
				// counter.
				amount := b.Accounts[from] / 3
				b.Accounts[from] -= amount
				b.Accounts[to] += amount
				b.Transfers[s]++
				made[s].Add(1)
				if err := locks[s].Unlock(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range bankThreads {
		if err := <-errs; err != nil {
			return err
		}
	}
	if err := r.Barrier(ctx, "bank_done", r.Nodes()); err != nil {
		return err
	}
	var total int64
	for _, v := range b.Accounts {
		total += v
	}
	if total != bankAccounts*bankStart {
		return fmt.Errorf("node %d: the bank holds %d, want %d: %v", r.NodeID(), total, bankAccounts*bankStart, b.Accounts)
	}
	var counts [bankShards]uint64
	for i := range made {
		counts[i] = made[i].Load()
	}
	fmt.Printf("node %d made %v; counters %v; total %d\n", r.NodeID(), counts, b.Transfers, total)
	return r.Barrier(ctx, "bank_checked", r.Nodes())
}

// Bank transfers under a Mutex per shard, on release-consistent accounts
// that share one page, on 3 nodes: the totals are exact and every node
// sees every transfer.
func TestReleaseConsistentBank(t *testing.T) {
	c := startClusterTuned(t, 3, rcCluster(t, 3))
	out := runWorkers(t, c, "rcbank")
	re := regexp.MustCompile(`node (\d) made \[(\d+) (\d+) (\d+) (\d+)\]; counters \[(\d+) (\d+) (\d+) (\d+)\]; total (\d+)`)
	ms := re.FindAllStringSubmatch(out, -1)
	require.Len(t, ms, 3, out)
	var made [bankShards]int
	for _, m := range ms {
		for s := range bankShards {
			v, _ := strconv.Atoi(m[2+s])
			made[s] += v
		}
	}
	for _, m := range ms {
		for s := range bankShards {
			v, _ := strconv.Atoi(m[6+s])
			require.Equal(t, made[s], v, "node %s sees %d transfers in shard %d, the nodes made %d:\n%s", m[1], v, s, made[s], out)
		}
	}
	var diffs int
	for i := range 3 {
		st, err := c.Status(i)
		require.NoError(t, err)
		diffs += st.RC.Engine.Diffs
		require.Zero(t, st.RC.RacesFound, "the transfers are free of data races")
	}
	require.NotZero(t, diffs)
}

func init() {
	workers["rcrace"] = workRCRace
}

type racyStats struct {
	Hits   uint64
	Misses uint64
}

// workRCRace: both nodes write Racy.Hits with no order between them (a data
// race), node 0 also writes Racy.Misses alone; both release and meet.
func workRCRace(r *dsm.Region) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	off, err := r.AllocStruct("Racy", (*racyStats)(nil), 0, dsm.ReleaseConsistent)
	if err != nil {
		return err
	}
	s := (*racyStats)(r.Ptr(off))
	if err := r.Barrier(ctx, "race_start", r.Nodes()); err != nil {
		return err
	}
	s.Hits = uint64(r.NodeID()+1) * 1111
	if r.NodeID() == 0 {
		s.Misses = 7
	}
	if err := r.Barrier(ctx, "race_end", r.Nodes()); err != nil {
		return err
	}
	fmt.Printf("node %d sees Hits %d Misses %d\n", r.NodeID(), s.Hits, s.Misses)
	return nil
}

// Two nodes write the same bytes of release-consistent memory without
// synchronisation: the bytes' home finds the race and the analyzer names
// the variable, both nodes and their intervals. The other field, written
// by one node, is no race. Whatever the order, every node ends up seeing
// the same, kept write.
func TestReleaseConsistentDataRace(t *testing.T) {
	c := startClusterTuned(t, 2, rcCluster(t, 2))
	out := runWorkers(t, c, "rcrace")
	re := regexp.MustCompile(`node \d sees Hits (\d+) Misses 7`)
	ms := re.FindAllStringSubmatch(out, -1)
	require.Len(t, ms, 2, out)
	require.Equal(t, ms[0][1], ms[1][1], "the nodes see different outcomes of the race:\n%s", out)
	rep, err := c.MergedReport()
	require.NoError(t, err)
	var races []analyzer.Finding
	for _, f := range rep.Findings {
		if f.Class == analyzer.DataRace {
			races = append(races, f)
		}
	}
	require.Len(t, races, 1, rep.Text())
	f := races[0]
	require.NotNil(t, f.Race, rep.Text())
	require.Equal(t, [2]uint16{0, 1}, f.Race.Nodes, rep.Text())
	require.Contains(t, f.Summary, "Racy.Hits", rep.Text())
	require.NotContains(t, f.Summary, "Racy.Misses", rep.Text())
	t.Logf("%s\n%s", f.Summary, f.Fix)
}

func init() {
	workers["rcbands"] = workRCBands
}

const bandPages = 8 // per node

// workRCBands: every node writes its own band of a release-consistent
// array, rounds apart, and reads every band after each barrier. With
// DSM_TEST_BLOCKS=1 the array's pages are homed in blocks (BlockHomes).
func workRCBands(r *dsm.Region) error {
	opts := []dsm.AllocOption{dsm.ReleaseConsistent}
	if os.Getenv("DSM_TEST_BLOCKS") == "1" {
		opts = append(opts, dsm.BlockHomes)
	}
	nodes, id := r.Nodes(), r.NodeID()
	return writeBands(r, "rc_bands", nodes*bandPages, id*bandPages, (id+1)*bandPages, opts)
}

// writeBands allocates name, pages long, and three times writes pages
// [lo, hi) (this node's band), meets the other nodes and reads every band.
func writeBands(r *dsm.Region, name string, pages, lo, hi int, opts []dsm.AllocOption) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ps, nodes, id := r.PageSize(), r.Nodes(), r.NodeID()
	off, err := r.Alloc(name, pages*ps, ps, opts...)
	if err != nil {
		return err
	}
	words := unsafe.Slice((*uint64)(r.Ptr(off)), pages*ps/8)
	per := ps / 8
	for round := uint64(1); round <= 3; round++ {
		for i := lo * per; i < hi*per; i++ {
			words[i] = round<<32 | uint64(i)
		}
		if err := r.Barrier(ctx, fmt.Sprintf("%s_%d", name, round), nodes); err != nil {
			return err
		}
		for i, v := range words {
			if v != round<<32|uint64(i) {
				return fmt.Errorf("round %d: node %d read word %d = %#x", round, id, i, v)
			}
		}
		if err := r.Barrier(ctx, fmt.Sprintf("%s_read_%d", name, round), nodes); err != nil {
			return err
		}
	}
	fmt.Printf("node %d read every band of 3 rounds\n", id)
	return nil
}

func init() {
	workers["rcunits"] = workRCUnits
}

// unitBands: 8 units of 2 pages split among 3 nodes as a band
// decomposition splits rows (units 0-1, 2-4, 5-7: pages 0-3, 4-9,
// 10-15), where a split of the 16 pages themselves would start node 1 at
// page 5 and node 2 at page 10.
const unitPages, units = 2, 8

// workRCUnits: every node writes its band of units, three rounds, and
// reads every band after each barrier. With DSM_TEST_UNITS=1 the pages
// are homed in blocks of units (BlockHomesOf), else of pages (BlockHomes).
func workRCUnits(r *dsm.Region) error {
	home := dsm.BlockHomes
	if os.Getenv("DSM_TEST_UNITS") == "1" {
		home = dsm.BlockHomesOf(unitPages * r.PageSize())
	}
	nodes, id := r.Nodes(), r.NodeID()
	return writeBands(r, "rc_units", units*unitPages, id*units/nodes*unitPages, (id+1)*units/nodes*unitPages,
		[]dsm.AllocOption{dsm.ReleaseConsistent, home})
}

// Bands of a release-consistent array, one per node, on 3 nodes: with
// BlockHomes each band's pages are at home on the node that writes them,
// and its releases send no diff to another node; with the DHT's homes they
// do. Bands made of units of two pages need BlockHomesOf: with blocks of
// pages, the blocks and the bands disagree on a page, and its diffs
// travel. Every node reads every band either way.
func TestBlockHomesKeepBandsHome(t *testing.T) {
	cases := []struct {
		name, worker, env string
		remote            bool // some diffs go to another node
		inPlace           bool // bands of bandPages homed where they are written
	}{
		{"dht", "rcbands", "DSM_TEST_BLOCKS=0", true, false},
		{"blocks", "rcbands", "DSM_TEST_BLOCKS=1", false, true},
		{"units/blocks of pages", "rcunits", "DSM_TEST_UNITS=0", true, false},
		{"units/blocks of units", "rcunits", "DSM_TEST_UNITS=1", false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startClusterTuned(t, 3, rcCluster(t, 3))
			out := runWorkers(t, c, tc.worker, tc.env)
			require.Equal(t, 3, strings.Count(out, "read every band of 3 rounds"), out)
			remote := 0
			for i := range 3 {
				st, err := c.Status(i)
				require.NoError(t, err)
				remote += st.RC.Engine.RemoteDiffs
				require.NotZero(t, st.RC.Engine.Diffs)
				if tc.inPlace {
					// A home writes its band in place until another
					// node first asks for a page of it (after the
					// first round's barrier): the first round's writes
					// cost no diff, the next two rounds' one per page.
					require.Equal(t, bandPages, st.RC.Engine.Shares, "node %d: pages handed over", i)
					require.Equal(t, 2*bandPages, st.RC.Engine.Diffs, "node %d: diffs", i)
				}
			}
			if tc.remote {
				require.NotZero(t, remote, "some pages of a band are homed elsewhere")
			} else {
				require.Zero(t, remote, "every band is at home where it is written")
			}
		})
	}
}

// BlockHomes is part of a name's definition, and needs release
// consistency.
func TestBlockHomesMisuse(t *testing.T) {
	c := startClusterTuned(t, 1, rcCluster(t, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{Socket: c.Daemons[0].Socket, OnLost: func(error) {}})
	require.NoError(t, err)
	defer r.Close()
	_, err = r.Alloc("blocks", 1<<16, 4096, dsm.ReleaseConsistent, dsm.BlockHomes)
	require.NoError(t, err)
	_, err = r.Alloc("blocks", 1<<16, 4096, dsm.ReleaseConsistent)
	require.ErrorContains(t, err, "homed in blocks")
	_, err = r.Alloc("sc", 64, 8, dsm.BlockHomes)
	require.ErrorContains(t, err, "release-consistent memory only")
	_, err = dsm.MakeSlice[uint64](r, 10, dsm.BlockHomes)
	require.ErrorContains(t, err, "release-consistent memory only")
	_, err = r.Alloc("odd_unit", 1<<16, 4096, dsm.ReleaseConsistent, dsm.BlockHomesOf(r.PageSize()+8))
	require.ErrorContains(t, err, "must be a multiple of the page size")
	_, err = dsm.MakeSlice[uint64](r, 10, dsm.ReleaseConsistent, dsm.BlockHomesOf(100))
	require.ErrorContains(t, err, "must be a multiple of the page size")
	// Refused before anything was allocated: the name is still free.
	_, err = r.Alloc("odd_unit", 1<<16, 4096, dsm.ReleaseConsistent, dsm.BlockHomes)
	require.NoError(t, err)
	s, err := dsm.MakeSlice[uint64](r, 4096, dsm.ReleaseConsistent, dsm.BlockHomes)
	require.NoError(t, err)
	s[0] = 1
	require.NoError(t, r.Release(ctx))
}
