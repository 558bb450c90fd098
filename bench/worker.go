package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/dsmrt/dsm/dht"
	"github.com/dsmrt/dsm/dsm"
	dsmnet "github.com/dsmrt/dsm/net"
	"github.com/dsmrt/dsm/node"
	"github.com/dsmrt/dsm/uffd"
)

// envSpec carries a worker's spec (JSON) from the launcher to the program it
// runs on every node. When it is set, the binary is a worker.
const envSpec = "DSM_BENCH_SPEC"

// resultPrefix starts the one line of stdout that carries a worker's result.
const resultPrefix = "RESULT "

// Worker modes: what the program on each node does.
const (
	modeRead       = "read"       // node 1 writes pages, node 0 reads them (timed)
	modeOwner      = "owner"      // node 0 writes never-touched pages homed elsewhere (timed)
	modeInvalidate = "invalidate" // node 0 writes pages read by nodes 1..k (timed)
	modeScan       = "scan"       // node 1 writes a region, node 0 scans it (timed)
	modeTurns      = "turns"      // nodes 0 and 1 take turns writing one page
	modeHammer     = "hammer"     // nodes 0 and 1 both increment one word for a while
	modeFill       = "fill"       // each node in turn writes every page (memory)
	// node 0 locks and unlocks a distributed mutex (timed), node 1 idles
	modeLockSolo = "lock-solo"
	// node 1 holds a distributed mutex homed on it once, then node 0 locks
	// and unlocks it again and again (timed): node 0 holds it last
	modeLockReacquire = "lock-reacquire"
	// nodes 0 and 1 contend for a distributed mutex (hand-offs timed)
	modeLockContend = "lock-contend"
	// node 0 allocates and frees batches in the shared heap (timed)
	modeHeap = "heap"
	// release and acquire of release-consistent pages (rc.go)
	modeRC = "rc"
	// the false-sharing demo's counters (falsesharing.go)
	modeCounters = "counters"
)

// Page contents the writers store.
const (
	contentZero   = "zero"   // all zero: travels as a flag
	contentText   = "text"   // text-like: English words, compresses well
	contentRandom = "random" // incompressible: a full page on the wire
)

// spec tells the program on every node what to do. The launcher sets it in
// envSpec; page numbers are region pages.
type spec struct {
	Mode    string `json:"mode"`
	Tag     string `json:"tag"`   // makes barrier names unique per run
	First   int    `json:"first"` // first page of the run's range
	Pages   int    `json:"pages"` // pages measured
	Rounds  int    `json:"rounds"`
	Content string `json:"content,omitempty"`
	Seed    uint64 `json:"seed"`
	K       int    `json:"k,omitempty"`     // invalidate: readers; fill: writers; barrier: nodes
	Depth   int    `json:"depth,omitempty"` // scan: read-ahead depth
	Iters   int    `json:"iters,omitempty"` // turns: turns per node; locks: pairs or acquisitions per node
	Lock    string `json:"lock,omitempty"`  // locks: the mutex's name
	// Hold is how long each node of the contended lock mode stays in
	// its critical section (0: only the increment).
	Hold time.Duration `json:"hold,omitempty"`
	// Daemons, when set, has node 0 measure what its timed windows cost
	// the processes (read, owner and scan modes; see FaultCost): every
	// daemon of the cluster, in node order.
	Daemons []daemonRef `json:"daemons,omitempty"`
	// Duration is how long each node hammers.
	Duration time.Duration `json:"duration,omitempty"`
	// Timeout bounds the worker's barriers and attach.
	Timeout time.Duration `json:"timeout"`
}

// workerResult is what a worker prints, as one JSON line after
// resultPrefix.
type workerResult struct {
	Node int    `json:"node"`
	Mode string `json:"mode"`
	// Samples are the measured operations in nanoseconds: the first load of
	// a page (read, scan), a store (owner, invalidate, turns).
	Samples []int64 `json:"samples,omitempty"`
	// Class gives, per sample, where the page is homed: an index into
	// homeClasses.
	Class []byte `json:"class,omitempty"`
	// Cycles (turns): time between two turns of node 0: two handovers.
	Cycles []int64 `json:"cycles,omitempty"`
	// Hist (hammer) holds the time of every increment.
	Hist  *hist  `json:"hist,omitempty"`
	Final uint64 `json:"final,omitempty"` // hammer, lock-contend: the word at the end
	// Start and End (lock-contend) are the wall-clock times (Unix ns) of
	// the node's first acquisition and last release.
	Start int64 `json:"start_unix_ns,omitempty"`
	End   int64 `json:"end_unix_ns,omitempty"`
	// Repeats (lock-contend) counts acquisitions right after the node's
	// own release: not hand-offs.
	Repeats int `json:"repeats,omitempty"`
	// LockOnly (lock-solo) is the Lock part of each timed Lock+Unlock.
	LockOnly []int64 `json:"lock_only,omitempty"`
	// Cost (read, owner, scan with spec.Daemons) is what the timed
	// windows cost the program and the daemons.
	Cost    *FaultCost `json:"cost,omitempty"`
	Elapsed int64      `json:"elapsed_ns"`
	Ops     int        `json:"ops"`
	Checked int        `json:"checked"` // values verified
}

// participants returns how many nodes take part in a run of sp (nodes 0
// .. n-1); the others exit at once.
func participants(sp spec) int {
	switch sp.Mode {
	case modeInvalidate:
		return sp.K + 1
	case modeFill, modeBarrier:
		return sp.K
	}
	return 2
}

// workerMain is the program on one node.
func workerMain(js string) error {
	var sp spec
	if err := json.Unmarshal([]byte(js), &sp); err != nil {
		return fmt.Errorf("bad %s: %w", envSpec, err)
	}
	id, nodes, err := dsm.NodeFromEnv()
	if err != nil {
		return err
	}
	n := participants(sp)
	if n > nodes {
		return fmt.Errorf("%s needs %d nodes, the cluster has %d", sp.Mode, n, nodes)
	}
	if id >= n {
		return nil // not a participant
	}
	if sp.Timeout <= 0 {
		sp.Timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), sp.Timeout)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	w := &worker{r: r, sp: sp, ctx: ctx, id: id, parts: n, ps: r.PageSize()}
	if len(sp.Daemons) > 0 && id == 0 {
		if len(sp.Daemons) != nodes {
			return fmt.Errorf("%d daemons to measure, the cluster has %d", len(sp.Daemons), nodes)
		}
		w.cost = newCostMeter(sp.Daemons, id)
	}
	if need := sp.First + sp.Pages; need*w.ps > r.Size() && sp.Mode != modeOwner && sp.Mode != modeInvalidate {
		return fmt.Errorf("pages %d..%d lie beyond the region of %d pages", sp.First, need-1, r.Size()/w.ps)
	}
	w.pool = contentPool(sp.Content, sp.Seed, 16*w.ps)
	// The measuring loops do not allocate; no collection should run while
	// they time faults.
	debug.SetGCPercent(-1)
	runtime.LockOSThread()
	res := workerResult{Node: id, Mode: sp.Mode}
	switch sp.Mode {
	case modeRead:
		err = w.read(&res)
	case modeOwner:
		err = w.owner(&res)
	case modeInvalidate:
		err = w.invalidate(&res)
	case modeScan:
		err = w.scan(&res)
	case modeTurns:
		err = w.turns(&res)
	case modeHammer:
		err = w.hammer(&res)
	case modeFill:
		err = w.fillTurns(&res)
	case modeLockSolo, modeLockReacquire:
		err = w.lockSolo(&res)
	case modeLockContend:
		err = w.lockContend(&res)
	case modeBarrier:
		err = w.barrierLoop(&res)
	case modeHeap:
		err = w.heapWork(&res)
	case modeRC:
		err = w.rcWork(&res)
	case modeCounters:
		err = w.countersWork(&res)
	default:
		err = fmt.Errorf("unknown mode %q", sp.Mode)
	}
	if err != nil {
		return fmt.Errorf("node %d, %s: %w", id, sp.Mode, err)
	}
	res.Cost = w.cost.result()
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Printf("%s%s\n", resultPrefix, b)
	return nil
}

type worker struct {
	r     *dsm.Region
	sp    spec
	ctx   context.Context
	id    int
	parts int
	ps    int
	pool  []byte
	cost  *costMeter // nil unless the spec asks for the cost of faults
}

// startCost opens a timed window of the cost meter, if there is one.
func (w *worker) startCost() error {
	if w.cost == nil {
		return nil
	}
	if err := w.cost.start(); err != nil {
		return fmt.Errorf("fault cost: %w", err)
	}
	return nil
}

// stopCost closes the window opened by startCost; ops is the timed
// operations in it.
func (w *worker) stopCost(ops int) error {
	if w.cost == nil {
		return nil
	}
	if err := w.cost.stop(ops); err != nil {
		return fmt.Errorf("fault cost: %w", err)
	}
	return nil
}

// barrier waits for every participant of the run.
func (w *worker) barrier(name string, round int) error {
	return w.r.Barrier(w.ctx, w.sp.Mode+"/"+w.sp.Tag+"/"+name+"/"+strconv.Itoa(round), w.parts)
}

func (w *worker) page(p int) []byte { return w.r.Bytes()[p*w.ps : (p+1)*w.ps] }

// ptrs returns a pointer to the first word of each page.
// writeRound has the writer node stamp every page for round, then waits for
// every node at the "written" barrier of that round.
func (w *worker) writeRound(writer int, pages []int, ptrs []unsafe.Pointer, round int) error {
	if w.id == writer {
		for i, p := range pages {
			w.fill(ptrs[i], w.page(p), round, i)
		}
	}
	return w.barrier("written", round)
}

// checkRound checks the whole body of every page the reader read in round.
func (w *worker) checkRound(pages []int, round int) error {
	for i, p := range pages {
		if err := w.checkBody(w.page(p), round, i); err != nil {
			return err
		}
	}
	return nil
}

func (w *worker) ptrs(pages []int) []unsafe.Pointer {
	out := make([]unsafe.Pointer, len(pages))
	for i, p := range pages {
		out[i] = w.r.Ptr(p * w.ps)
	}
	return out
}

// homeClasses name where a page is homed, seen from the reader and the
// writer of a run.
var homeClasses = []string{"home=reader", "home=writer", "home=other"}

// homeClass returns the index in homeClasses of page p's home.
func homeClass(ring *dht.Ring, p, reader, writer int) byte {
	switch int(ring.Home(dht.PageKey(uint32(p)))) {
	case reader:
		return 0
	case writer:
		return 1
	default:
		return 2
	}
}

// pageRange returns pages first .. first+n-1.
func pageRange(first, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = first + i
	}
	return out
}

// pagesNotHomedOn returns the first n pages from first on whose home is not
// node (in a cluster of nodes), and one past the last page it looked at.
func pagesNotHomedOn(nodes, node, first, n int) (pages []int, end int) {
	ring := dht.ClusterRing(nodes)
	p := first
	for ; len(pages) < n; p++ {
		if int(ring.Home(dht.PageKey(uint32(p)))) != node {
			pages = append(pages, p)
		}
	}
	return pages, p
}

// stamp is the word a writer stores first in page number idx of a run in
// a round; readers check it. Zero pages carry no stamp.
func stamp(content string, round, idx int) uint64 {
	if content == contentZero {
		return 0
	}
	return uint64(round)<<32 | uint64(idx+1)
}

// poolOff is where in the content pool the body of a page comes from, so
// that pages and rounds differ.
func (w *worker) poolOff(round, idx int) int {
	words := (len(w.pool) - w.ps) / 8
	return ((round*7919 + idx*131) % words) * 8
}

// fill writes page idx of a run for round: the stamp first (a plain store:
// the fault is taken there, not inside memmove), then the body.
func (w *worker) fill(p unsafe.Pointer, page []byte, round, idx int) {
	if w.sp.Content == contentZero {
		*(*uint64)(p) = 0
		clear(page)
		return
	}
	*(*uint64)(p) = stamp(w.sp.Content, round, idx)
	off := w.poolOff(round, idx)
	copy(page[8:], w.pool[off+8:off+w.ps])
}

// checkBody verifies the whole of page idx after it was read (outside the
// timed loop): what arrived is what the writer wrote.
func (w *worker) checkBody(page []byte, round, idx int) error {
	if w.sp.Content == contentZero {
		if !isZero(page) {
			return fmt.Errorf("round %d: page %d of the run should be all zero", round, idx)
		}
		return nil
	}
	off := w.poolOff(round, idx)
	if !bytes.Equal(page[8:], w.pool[off+8:off+w.ps]) {
		return fmt.Errorf("round %d: page %d of the run arrived with a body different from the one written", round, idx)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// contentPool makes size bytes of the given kind of content, the same on
// every node for the same seed.
func contentPool(kind string, seed uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, size)
	switch kind {
	case contentRandom:
		for i := 0; i+8 <= size; i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				b[i+j] = byte(v >> (8 * j))
			}
		}
	case contentText:
		var buf bytes.Buffer
		for buf.Len() < size {
			buf.WriteString(vocabulary[rng.IntN(len(vocabulary))])
			switch k := rng.IntN(20); {
			case k == 0:
				buf.WriteString(".\n")
			case k < 3:
				buf.WriteString(", ")
			default:
				buf.WriteByte(' ')
			}
		}
		copy(b, buf.Bytes())
	}
	return b
}

// vocabulary for text-like pages.
var vocabulary = []string{
	"the", "page", "node", "memory", "shared", "fault", "write", "read", "owner", "home",
	"copy", "set", "version", "clock", "program", "region", "address", "daemon", "network",
	"packet", "round", "trip", "latency", "throughput", "of", "and", "a", "to", "in", "is",
	"that", "for", "it", "with", "as", "was", "on", "be", "at", "by", "this", "from", "or",
	"which", "one", "all", "were", "when", "there", "can", "an", "each", "more", "other",
	"distributed", "coherence", "protocol", "directory", "invalidate", "migration",
}

// read: node 1 writes the pages each round; node 0 then reads each once,
// in a shuffled order, timing the load.
func (w *worker) read(res *workerResult) error {
	const reader, writer = 0, 1
	pages := pageRange(w.sp.First, w.sp.Pages)
	ptrs := w.ptrs(pages)
	order := rand.New(rand.NewPCG(w.sp.Seed, 1)).Perm(len(pages))
	samples := make([]int64, 0, len(pages)*w.sp.Rounds)
	for round := 1; round <= w.sp.Rounds; round++ {
		if err := w.writeRound(writer, pages, ptrs, round); err != nil {
			return err
		}
		if w.id == reader {
			bad := -1
			var got uint64
			if err := w.startCost(); err != nil {
				return err
			}
			for _, i := range order {
				t0 := time.Now()
				v := *(*uint64)(ptrs[i])
				d := time.Since(t0)
				samples = append(samples, int64(d))
				if v != stamp(w.sp.Content, round, i) && bad < 0 {
					bad, got = i, v
				}
			}
			if err := w.stopCost(len(order)); err != nil {
				return err
			}
			if bad >= 0 {
				return fmt.Errorf("round %d: page %d read 0x%x, the writer stored 0x%x: stale data", round, pages[bad], got, stamp(w.sp.Content, round, bad))
			}
			if err := w.checkRound(pages, round); err != nil {
				return err
			}
			res.Checked += len(pages)
		}
		if err := w.barrier("read", round); err != nil {
			return err
		}
	}
	if w.id == reader {
		res.Samples = samples
		res.Class = make([]byte, 0, len(samples))
		ring := dht.ClusterRing(w.r.Nodes())
		for range w.sp.Rounds {
			for _, i := range order {
				res.Class = append(res.Class, homeClass(ring, pages[i], reader, writer))
			}
		}
		res.Ops = len(samples)
	}
	return nil
}

// owner: node 0 writes, once each, pages no node has touched whose home is
// another node; node 1 then reads a few of them back.
func (w *worker) owner(res *workerResult) error {
	pages, end := pagesNotHomedOn(w.r.Nodes(), 0, w.sp.First, w.sp.Pages)
	if end*w.ps > w.r.Size() {
		return fmt.Errorf("pages up to %d lie beyond the region of %d pages", end-1, w.r.Size()/w.ps)
	}
	ptrs := w.ptrs(pages)
	if w.id == 0 {
		samples := make([]int64, len(pages))
		if err := w.startCost(); err != nil {
			return err
		}
		for i := range pages {
			v := stamp(contentText, 1, i)
			t0 := time.Now()
			*(*uint64)(ptrs[i]) = v
			samples[i] = int64(time.Since(t0))
		}
		if err := w.stopCost(len(pages)); err != nil {
			return err
		}
		res.Samples, res.Ops = samples, len(samples)
	}
	if err := w.barrier("written", 1); err != nil {
		return err
	}
	if w.id == 1 {
		for i := 0; i < len(pages); i += max(1, len(pages)/16) {
			if v := atomic.LoadUint64((*uint64)(ptrs[i])); v != stamp(contentText, 1, i) {
				return fmt.Errorf("page %d read back 0x%x, node 0 stored 0x%x", pages[i], v, stamp(contentText, 1, i))
			}
			res.Checked++
		}
	}
	return w.barrier("checked", 1)
}

// invalidate: node 0 owns the pages (homed on other nodes); each round
// nodes 1..k read them all, then node 0 writes each, timed: every write is
// an upgrade that must invalidate k read-only copies.
func (w *worker) invalidate(res *workerResult) error {
	pages, end := pagesNotHomedOn(w.r.Nodes(), 0, w.sp.First, w.sp.Pages)
	if end*w.ps > w.r.Size() {
		return fmt.Errorf("pages up to %d lie beyond the region of %d pages", end-1, w.r.Size()/w.ps)
	}
	ptrs := w.ptrs(pages)
	samples := make([]int64, 0, len(pages)*w.sp.Rounds)
	if w.id == 0 {
		for i := range pages {
			*(*uint64)(ptrs[i]) = stamp(contentText, 0, i)
		}
	}
	for round := 1; round <= w.sp.Rounds; round++ {
		if err := w.barrier("written", round); err != nil {
			return err
		}
		if w.id != 0 {
			for i := range pages {
				if v := atomic.LoadUint64((*uint64)(ptrs[i])); v != stamp(contentText, round-1, i) {
					return fmt.Errorf("round %d: page %d read 0x%x, node 0 stored 0x%x", round, pages[i], v, stamp(contentText, round-1, i))
				}
			}
			res.Checked += len(pages)
		}
		if err := w.barrier("read", round); err != nil {
			return err
		}
		if w.id == 0 {
			for i := range pages {
				v := stamp(contentText, round, i)
				t0 := time.Now()
				*(*uint64)(ptrs[i]) = v
				samples = append(samples, int64(time.Since(t0)))
			}
		}
	}
	if err := w.barrier("done", 0); err != nil {
		return err
	}
	if w.id == 0 {
		res.Samples, res.Ops = samples, len(samples)
	}
	return nil
}

// ErrReadAhead: a scan depth outside 1..MaxScanDepth.
var ErrReadAhead = errors.New("scan depth must be 1 (no read-ahead) to 1025 (1024 pages read ahead)")

// MaxScanDepth is the deepest read-ahead a scan can ask for: the daemon's
// read_ahead limit plus the page that faulted.
const MaxScanDepth = 1025

// scan: node 1 writes a region each round; node 0 reads it from start to
// end, the whole of every page, timing the first load of each page and the
// whole pass.
func (w *worker) scan(res *workerResult) error {
	if w.sp.Depth < 1 || w.sp.Depth > MaxScanDepth {
		return fmt.Errorf("scan depth %d: %w", w.sp.Depth, ErrReadAhead)
	}
	const reader, writer = 0, 1
	pages := pageRange(w.sp.First, w.sp.Pages)
	ptrs := w.ptrs(pages)
	samples := make([]int64, 0, len(pages)*w.sp.Rounds)
	words := w.ps / 8
	var elapsed time.Duration
	for round := 1; round <= w.sp.Rounds; round++ {
		if err := w.writeRound(writer, pages, ptrs, round); err != nil {
			return err
		}
		if w.id == reader {
			bad := -1
			var sum uint64
			if err := w.startCost(); err != nil {
				return err
			}
			start := time.Now()
			for i, p := range ptrs {
				t0 := time.Now()
				v := *(*uint64)(p)
				samples = append(samples, int64(time.Since(t0)))
				if v != stamp(w.sp.Content, round, i) && bad < 0 {
					bad = i
				}
				for k := 1; k < words; k++ {
					sum += *(*uint64)(unsafe.Add(p, 8*k))
				}
			}
			elapsed += time.Since(start)
			if err := w.stopCost(len(ptrs)); err != nil {
				return err
			}
			runtime.KeepAlive(sum) // the loads must not be dropped
			if bad >= 0 {
				return fmt.Errorf("round %d: page %d read stale data", round, pages[bad])
			}
			if err := w.checkRound(pages, round); err != nil {
				return err
			}
			res.Checked += len(pages)
		}
		if err := w.barrier("read", round); err != nil {
			return err
		}
	}
	if w.id == reader {
		res.Samples, res.Elapsed, res.Ops = samples, int64(elapsed), len(samples)
	}
	return nil
}

// yield gives the CPU to other processes (the daemons) while a node spins
// waiting for its turn: this machine may have fewer cores than processes.
func yield() { syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0) }

// turns: nodes 0 and 1 take turns incrementing a word on one page; the
// word itself says whose turn it is. Each node times its writes; node 0
// times each cycle between two of its turns (two page handovers).
func (w *worker) turns(res *workerResult) error {
	x := (*uint64)(w.r.Ptr(w.sp.First * w.ps))
	n := w.sp.Iters
	writes := make([]int64, n)
	cycles := make([]int64, 0, n)
	me := uint64(w.id)
	if err := w.barrier("start", 0); err != nil {
		return err
	}
	deadline := time.Now().Add(w.sp.Timeout)
	start := time.Now()
	last := start
	for t := 0; t < n; t++ {
		want := uint64(2*t) + me
		for spins := 0; ; spins++ {
			v := atomic.LoadUint64(x)
			if v == want {
				break
			}
			if v > want {
				return fmt.Errorf("turn %d: the word is %d, past %d: a write was lost or doubled", t, v, want)
			}
			if spins%1024 == 1023 && time.Now().After(deadline) {
				return fmt.Errorf("turn %d: waited past the deadline for the word to reach %d (it is %d)", t, want, v)
			}
			yield()
		}
		t0 := time.Now()
		if t > 0 {
			cycles = append(cycles, int64(t0.Sub(last)))
		}
		last = t0
		atomic.AddUint64(x, 1)
		writes[t] = int64(time.Since(t0))
	}
	res.Elapsed = int64(time.Since(start))
	if err := w.barrier("end", 0); err != nil {
		return err
	}
	if v := atomic.LoadUint64(x); v != uint64(2*n) {
		return fmt.Errorf("after %d turns each the word is %d, want %d", n, v, 2*n)
	}
	res.Checked = 1
	res.Samples, res.Ops = writes, n
	if w.id == 0 {
		res.Cycles = cycles
	}
	return w.barrier("checked", 0)
}

// hammer: nodes 0 and 1 both increment one word as fast as they can for
// a while, timing each increment into a histogram (there are too many to
// keep one by one).
func (w *worker) hammer(res *workerResult) error {
	x := (*uint64)(w.r.Ptr(w.sp.First * w.ps))
	h := newHist()
	if err := w.barrier("start", 0); err != nil {
		return err
	}
	start := time.Now()
	end := start.Add(w.sp.Duration)
	n := 0
	for {
		t0 := time.Now()
		if t0.After(end) {
			break
		}
		atomic.AddUint64(x, 1)
		h.add(int64(time.Since(t0)))
		n++
	}
	res.Elapsed = int64(time.Since(start))
	if err := w.barrier("end", 0); err != nil {
		return err
	}
	res.Final = atomic.LoadUint64(x)
	res.Checked, res.Ops, res.Hist = 1, n, h
	return w.barrier("checked", 0)
}

// childMain runs the process's child role, if it was started as one (the
// userfaultfd limit's child, a process of the chain limit, a node daemon,
// or a worker), and exits; it returns at once otherwise. main and TestMain
// call it first.
func childMain() {
	uffd.RunChildIfRequested()
	dsmnet.RunEchoIfRequested()
	chainChildIfRequested()
	stencilChildIfRequested()
	node.RunDaemonIfChild()
	if js, ok := os.LookupEnv(envSpec); ok {
		if err := workerMain(js); err != nil {
			fmt.Fprintln(os.Stderr, "bench worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}
