package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/dsmrt/dsm/cluster"
	"github.com/dsmrt/dsm/dht"
)

// The locks part measures the distributed mutex of package dsm on a
// 2-node cluster, beside a sync.Mutex in one process measured in the same
// run:
//
//   - an uncontended Lock+Unlock, on node 0, of a mutex homed on node 0 and
//     of one homed on node 1, while node 1 stays idle;
//   - the reacquisition: Lock+Unlock repeated by the node that held the
//     lock last, node 0, of a mutex homed on node 1 that node 1 held
//     before. The program keeps a lock it released, cached, until another
//     client asks for it (package dsm), so after the first pair this costs
//     no message;
//   - the hand-off under contention: both nodes loop Lock; increment a
//     shared word non-atomically; Unlock. The holder writes its release
//     time into the region next to the word just before Unlock; the next
//     holder, when it is the other node, takes its acquire time minus that.
//     Both nodes are processes of this machine, so their wall clocks are
//     one clock.

// Keys of the lock figures.
const (
	keyLockLocal        = "locks/uncontended/home=local"
	keyLockRemote       = "locks/uncontended/home=remote"
	keyLockReacquire    = "locks/reacquire"
	keyLockHandoff      = "locks/handoff"
	keyLockHandoffHeld  = "locks/handoff/held"
	keyFloorUncontended = "locks/floor/sync_mutex_uncontended"
	keyFloorHandoff     = "locks/floor/sync_mutex_handoff"
)

// mutexBatch is how many sync.Mutex Lock+Unlock pairs one sample of the
// uncontended floor times: one pair is too short to time by itself (a
// clock read costs more than the pair).
const mutexBatch = 1000

// lockWarmup are the uncontended Lock+Unlock pairs done before the timed
// ones, so that the first request for a name is not measured.
const lockWarmup = 10

// lockNameHomedOn returns the first of prefix/0, prefix/1, ... whose home is
// node in a cluster of nodes (the ring the daemons use).
func lockNameHomedOn(nodes, node int, prefix string) string {
	ring := dht.ClusterRing(nodes)
	for i := 0; ; i++ {
		name := prefix + "/" + strconv.Itoa(i)
		if int(ring.HomeOfString(name)) == node {
			return name
		}
	}
}

// locks: the sync.Mutex floor, then the distributed mutex on 2 nodes.
func (s *suite) locks(ctx context.Context) error {
	s.prog.step("sync.Mutex floor")
	fl, err := measureSyncMutex(s.cfg.MutexOps, s.cfg.LockHandoffs)
	if err != nil {
		return fmt.Errorf("sync.Mutex floor: %w", err)
	}
	s.res.add(Figure{Key: keyFloorUncontended, Part: "locks",
		Name:    "floor: sync.Mutex Lock+Unlock, uncontended, one process",
		Params:  map[string]any{"pairs": fl.pairs, "batch": mutexBatch},
		Latency: fl.uncontended,
		Note:    fmt.Sprintf("each sample is the mean of a batch of %d pairs (one pair is shorter than a clock read)", mutexBatch),
	})
	s.res.add(Figure{Key: keyFloorHandoff, Part: "locks",
		Name:               "floor: sync.Mutex hand-off between two goroutines under contention",
		Params:             map[string]any{"acquisitions": fl.acquisitions, "seconds": fl.seconds},
		Latency:            summarize(fl.handoffs),
		AcquisitionsPerSec: fl.rate,
		Note: fmt.Sprintf("%d acquisitions in %.2f s, %d by the goroutine that held the lock last: sync.Mutex lets the releaser take it again; "+
			"a hand-off goes to a waiter still spinning (about 100 ns) or to a parked one, woken (microseconds; after 1 ms of waiting, starvation mode hands over directly)",
			fl.acquisitions, fl.seconds, fl.acquisitions-len(fl.handoffs)),
	})

	if err := s.barriers(ctx); err != nil {
		return err
	}
	return s.withCluster(ctx, "2 nodes", 2, nil, func(c *cluster.Cluster, logs *tailBuffer) error {
		for _, h := range []struct {
			mode, tag, label, key, name, note string
			home                              int
		}{
			{modeLockSolo, "local", "uncontended, home local", keyLockLocal,
				"distributed Mutex Lock+Unlock, uncontended, home on the caller's node",
				fmt.Sprintf("timed on node 0, node 1 idle; after %d untimed pairs", lockWarmup), 0},
			{modeLockSolo, "remote", "uncontended, home remote", keyLockRemote,
				"distributed Mutex Lock+Unlock, uncontended, home on the other node",
				fmt.Sprintf("timed on node 0, node 1 idle; after %d untimed pairs", lockWarmup), 1},
			{modeLockReacquire, "reacquire", "reacquire, home remote", keyLockReacquire,
				"distributed Mutex reacquired by the node that held it last, home on the other node",
				fmt.Sprintf("node 1, the home, held the lock first; node 0 took it from there for %d untimed pairs, then times its pairs, each right after its own Unlock; node 1 idle", lockWarmup), 1},
		} {
			s.prog.step("2 nodes, " + h.label)
			sp := spec{Mode: h.mode, Tag: h.tag, Lock: lockNameHomedOn(2, h.home, "bench/lock/"+h.tag), Iters: s.cfg.LockPairs}
			out, err := s.runWorkers(ctx, c, logs, sp)
			if err != nil {
				return err
			}
			r, ok := out.byNode(0)
			if !ok || len(r.Samples) != sp.Iters || len(r.LockOnly) != sp.Iters {
				return fmt.Errorf("%s: node 0 reported %d of %d samples", h.label, len(r.Samples), sp.Iters)
			}
			unlocks := make([]int64, len(r.Samples))
			for i, d := range r.Samples {
				unlocks[i] = d - r.LockOnly[i]
			}
			lk, ul := summarize(r.LockOnly), summarize(unlocks)
			s.addLatency(Figure{Key: h.key, Part: "locks", Nodes: 2, Name: h.name, Compare: cmpFloor, Floor: keyFloorUncontended,
				Params: map[string]any{"pairs": sp.Iters, "lock": sp.Lock, "lock_home": "node " + strconv.Itoa(h.home)},
				Note: fmt.Sprintf("%s; Lock alone %s (p99 %s), Unlock alone %s (p99 %s)",
					h.note, fmtNs(lk.Median), fmtNs(lk.P99), fmtNs(ul.Median), fmtNs(ul.P99))}, r.Samples)
		}

		s.prog.step("2 nodes, contended")
		sp := spec{Mode: modeLockContend, Tag: "contend", Lock: lockNameHomedOn(2, 0, "bench/lock/contended"), First: firstPage, Iters: s.cfg.LockHandoffs}
		if err := s.lockHandoffs(ctx, c, logs, sp, keyLockHandoff, keyFloorHandoff,
			"distributed Mutex hand-off between two nodes under contention (Unlock on one to Lock returning on the other)"); err != nil {
			return err
		}
		// Back to back, the node that holds the lock cached takes it again
		// until the other's request recalls it, and one node may finish
		// before it does: few hand-offs. When each node stays a while in
		// its critical section, the other's request waits at every
		// Unlock: nearly every acquisition is a hand-off, and the time
		// from the Unlock to the other's Lock returning is the hand-off
		// alone.
		s.prog.step("2 nodes, contended, lock held")
		sp = spec{Mode: modeLockContend, Tag: "held", Lock: lockNameHomedOn(2, 0, "bench/lock/held"), First: firstPage + 1,
			Iters: max(10, s.cfg.LockHandoffs/10), Hold: lockHold}
		return s.lockHandoffs(ctx, c, logs, sp, keyLockHandoffHeld, keyLimitChain,
			fmt.Sprintf("distributed Mutex hand-off between two nodes, each holding the lock %v (Unlock on one to Lock returning on the other, which waited)", lockHold))
	})
}

// lockHold is how long each node keeps the lock in the held hand-off:
// longer than a request takes to reach the lock's home, so that the other
// node waits at every Unlock.
const lockHold = 500 * time.Microsecond

// lockHandoffs runs the contended lock mode sp on both nodes of c and
// records the hand-offs as figure key, compared with the figure floor.
func (s *suite) lockHandoffs(ctx context.Context, c *cluster.Cluster, logs *tailBuffer, sp spec, key, floor, name string) error {
	out, err := s.runWorkers(ctx, c, logs, sp)
	if err != nil {
		return err
	}
	var all []int64
	var first, last int64
	acq, repeats := 0, 0
	for _, r := range out.results {
		if r.Ops != sp.Iters || r.Start == 0 || r.End < r.Start {
			return fmt.Errorf("%s: node %d reported %d of %d acquisitions", sp.Tag, r.Node, r.Ops, sp.Iters)
		}
		all = append(all, r.Samples...)
		acq += r.Ops
		repeats += r.Repeats
		if first == 0 || r.Start < first {
			first = r.Start
		}
		last = max(last, r.End)
	}
	r0, _ := out.byNode(0)
	if r0.Final != uint64(acq) {
		return fmt.Errorf("%s: the counter is %d after %d increments under the lock: increments were lost", sp.Tag, r0.Final, acq)
	}
	if len(all) == 0 || last <= first {
		return fmt.Errorf("%s: no hand-off between the nodes was seen", sp.Tag)
	}
	rate := float64(acq) / (float64(last-first) / 1e9)
	params := map[string]any{"acquisitions_per_node": sp.Iters, "lock": sp.Lock, "lock_home": "node 0", "handoffs": len(all)}
	if sp.Hold > 0 {
		params["hold_ns"] = sp.Hold.Nanoseconds()
	}
	note := fmt.Sprintf("%d acquisitions, %d hand-offs, %d by the node that held the lock last; the critical section moves the protected page", acq, len(all), repeats)
	if fr, ok := s.res.figure(keyFloorHandoff); ok && fr.AcquisitionsPerSec > 0 && sp.Hold == 0 {
		note += fmt.Sprintf("; sync.Mutex: %s (%s× ours)", fmtRate(fr.AcquisitionsPerSec, "acquisitions/s"), trimFloat(fr.AcquisitionsPerSec/rate, 0))
	}
	s.addLatency(Figure{Key: key, Part: "locks", Nodes: 2, Compare: cmpFloor, Floor: floor,
		Name: name, Params: params, AcquisitionsPerSec: rate, Note: note}, all)
	for _, d := range []struct {
		id   int
		tag  string
		name string
	}{
		{0, "acquirer=home", "hand-off to the lock's home node"},
		{1, "acquirer=other", "hand-off to the node that is not the lock's home"},
	} {
		r, _ := out.byNode(d.id)
		if len(r.Samples) == 0 {
			continue
		}
		s.addLatency(Figure{Key: key + "/" + d.tag, Part: "locks", Nodes: 2, Compare: cmpFloor, Floor: floor,
			Name: "distributed Mutex " + d.name, Params: params}, r.Samples)
	}
	return nil
}

// syncFloor is what measureSyncMutex measured.
type syncFloor struct {
	pairs        int
	uncontended  Stat    // one Lock+Unlock pair (from batch means)
	handoffs     []int64 // ns from one goroutine's release to the other's acquire
	acquisitions int     // under contention, both goroutines
	rate         float64 // acquisitions per second under contention
	seconds      float64 // the contended run
}

// maxFloorTime bounds the contended sync.Mutex run when it takes long to
// see the hand-offs it wants.
const maxFloorTime = 2 * time.Second

// measureSyncMutex measures the floor: pairs uncontended sync.Mutex
// Lock+Unlock pairs in batches, then two goroutines contending for a
// sync.Mutex the way the nodes contend for the distributed one, until
// wantHandoffs hand-offs were seen or maxFloorTime passed. sync.Mutex lets
// the releaser take the lock again, so hand-offs are much rarer than
// acquisitions.
func measureSyncMutex(pairs, wantHandoffs int) (syncFloor, error) {
	fl := syncFloor{pairs: pairs}
	var mu sync.Mutex
	batches := make([]int64, 0, pairs/mutexBatch)
	for range pairs / mutexBatch {
		t0 := time.Now()
		for range mutexBatch {
			// An empty critical section: the pair itself is measured.
			mu.Lock()
			//lint:ignore SA2001 the Lock+Unlock pair is what this floor times
			mu.Unlock()
		}
		batches = append(batches, int64(time.Since(t0)))
	}
	fl.uncontended = scaleStat(summarize(batches), 1/float64(mutexBatch))

	// The state the mutex protects, as in the region for the nodes.
	var st struct {
		counter  uint64
		release  int64 // ns since base
		holder   int   // goroutine + 1
		inside   int
		handoffs int
		stop     bool
	}
	base := time.Now()
	deadline := base.Add(maxFloorTime)
	samples := [2][]int64{}
	counts := [2]int{}
	errs := [2]error{}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := g + 1
			own := make([]int64, 0, wantHandoffs)
			n := 0
			<-start
			for {
				mu.Lock()
				acq := int64(time.Since(base))
				if st.stop {
					mu.Unlock()
					break
				}
				if st.inside != 0 {
					errs[g] = fmt.Errorf("goroutine %d is inside the critical section too", st.inside-1)
					st.stop = true
					mu.Unlock()
					break
				}
				st.inside = me
				if st.holder != 0 && st.holder != me {
					own = append(own, acq-st.release)
					st.handoffs++
				}
				st.counter++
				st.holder = me
				n++
				if st.handoffs >= wantHandoffs || n%1024 == 0 && time.Now().After(deadline) {
					st.stop = true
				}
				st.inside = 0
				st.release = int64(time.Since(base))
				mu.Unlock()
			}
			samples[g], counts[g] = own, n
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	if err := errors.Join(errs[0], errs[1]); err != nil {
		return fl, err
	}
	fl.acquisitions = counts[0] + counts[1]
	if st.counter != uint64(fl.acquisitions) {
		return fl, fmt.Errorf("the counter is %d after %d increments under the lock", st.counter, fl.acquisitions)
	}
	fl.handoffs = append(samples[0], samples[1]...)
	if len(fl.handoffs) == 0 {
		return fl, fmt.Errorf("no hand-off between the goroutines in %d acquisitions", fl.acquisitions)
	}
	fl.seconds = elapsed.Seconds()
	fl.rate = float64(fl.acquisitions) / fl.seconds
	return fl, nil
}

// scaleStat multiplies every figure of st by k (its count stays).
func scaleStat(st Stat, k float64) Stat {
	for _, p := range []*float64{&st.Median, &st.P99, &st.Mean, &st.Min, &st.P10, &st.P25, &st.P75, &st.P90, &st.P999, &st.Max} {
		*p *= k
	}
	return st
}

// Words of the page the contended distributed lock protects.
const (
	lwCounter = iota // incremented non-atomically by every holder
	lwRelease        // the last holder's release time (Unix ns), stored just before Unlock
	lwHolder         // the last holder: node id + 1
	lwToken          // the last holder's fencing token
	lwInside         // node id + 1 while a node is in the critical section, else 0
	lwWords
)

// lockSolo: node 0 times uncontended Lock+Unlock pairs of one mutex while
// node 1 waits; the fencing tokens must strictly increase. In the
// reacquire mode node 1 holds the lock once first, so that node 0's
// pairs follow another node's hold: node 0 takes the lock from node 1 in
// its first untimed pair, and is the last holder before each timed one.
func (w *worker) lockSolo(res *workerResult) error {
	if w.sp.Mode == modeLockReacquire && w.id == 1 {
		m := w.r.Mutex(w.sp.Lock)
		if err := m.Lock(w.ctx); err != nil {
			return fmt.Errorf("node 1's hold: %w", err)
		}
		if err := m.Unlock(); err != nil {
			return fmt.Errorf("node 1's hold: %w", err)
		}
	}
	if err := w.barrier("start", 0); err != nil {
		return err
	}
	if w.id == 0 {
		m := w.r.Mutex(w.sp.Lock)
		samples := make([]int64, 0, w.sp.Iters)
		locks := make([]int64, 0, w.sp.Iters)
		var last uint64
		for i := -lockWarmup; i < w.sp.Iters; i++ {
			t0 := time.Now()
			if err := m.Lock(w.ctx); err != nil {
				return fmt.Errorf("pair %d: %w", i+lockWarmup, err)
			}
			t1 := time.Now()
			if err := m.Unlock(); err != nil {
				return fmt.Errorf("pair %d: %w", i+lockWarmup, err)
			}
			d := time.Since(t0)
			tok := m.Token()
			if tok <= last {
				return fmt.Errorf("pair %d: fencing token %#x after %#x: tokens must strictly increase", i+lockWarmup, tok, last)
			}
			last = tok
			if i >= 0 {
				samples = append(samples, int64(d))
				locks = append(locks, int64(t1.Sub(t0)))
			}
		}
		res.Samples, res.LockOnly, res.Ops, res.Checked = samples, locks, len(samples), w.sp.Iters+lockWarmup
	}
	return w.barrier("end", 0)
}

// lockContend: both nodes loop Lock; increment a word non-atomically;
// Unlock, and time each hand-off from the other node. At the end node 0
// checks that no increment was lost.
func (w *worker) lockContend(res *workerResult) error {
	if (w.sp.First+1)*w.ps > w.r.Size() {
		return fmt.Errorf("page %d lies beyond the region of %d pages", w.sp.First, w.r.Size()/w.ps)
	}
	base := w.r.Ptr(w.sp.First * w.ps)
	word := func(i int) *uint64 { return (*uint64)(unsafe.Add(base, 8*i)) }
	m := w.r.Mutex(w.sp.Lock)
	if w.id == 0 {
		for i := range lwWords {
			*word(i) = 0
		}
	}
	if err := w.barrier("start", 0); err != nil {
		return err
	}
	me := uint64(w.id + 1)
	samples := make([]int64, 0, w.sp.Iters)
	var lastTok uint64
	for i := range w.sp.Iters {
		if err := m.Lock(w.ctx); err != nil {
			return fmt.Errorf("acquisition %d: %w", i, err)
		}
		acq := time.Now().UnixNano()
		if i == 0 {
			res.Start = acq
		}
		if v := *word(lwInside); v != 0 {
			return fmt.Errorf("acquisition %d: node %d is in the critical section too: mutual exclusion broken", i, v-1)
		}
		*word(lwInside) = me
		tok := m.Token()
		if prev := *word(lwToken); tok <= lastTok || tok <= prev {
			return fmt.Errorf("acquisition %d: fencing token %#x after %#x (this node's last) and %#x (the last holder's): tokens must strictly increase", i, tok, lastTok, prev)
		}
		lastTok = tok
		*word(lwToken) = tok
		switch prev := *word(lwHolder); prev {
		case me:
			res.Repeats++
		case 0:
		default:
			d := acq - int64(*word(lwRelease))
			if d < 0 {
				return fmt.Errorf("acquisition %d: granted %d ns before node %d released: mutual exclusion broken (or the wall clock was stepped)", i, -d, prev-1)
			}
			samples = append(samples, d)
		}
		if w.sp.Hold > 0 {
			time.Sleep(w.sp.Hold)
		}
		*word(lwCounter)++ // a plain read-modify-write: only the lock keeps it exact
		*word(lwHolder) = me
		*word(lwInside) = 0
		rel := time.Now().UnixNano()
		*word(lwRelease) = uint64(rel)
		res.End = rel
		if err := m.Unlock(); err != nil {
			return fmt.Errorf("acquisition %d: %w", i, err)
		}

	}
	res.Samples, res.Ops, res.Checked = samples, w.sp.Iters, w.sp.Iters
	if err := w.barrier("end", 0); err != nil {
		return err
	}
	if w.id == 0 {
		if err := m.Lock(w.ctx); err != nil {
			return fmt.Errorf("final check: %w", err)
		}
		res.Final = *word(lwCounter)
		tok, prev := m.Token(), *word(lwToken)
		if err := m.Unlock(); err != nil {
			return fmt.Errorf("final check: %w", err)
		}
		if tok <= prev {
			return fmt.Errorf("final check: fencing token %#x after %#x: tokens must strictly increase", tok, prev)
		}
		if want := uint64(w.parts * w.sp.Iters); res.Final != want {
			return fmt.Errorf("the counter is %d after %d increments under the lock: increments were lost", res.Final, want)
		}
	}
	return w.barrier("checked", 0)
}
