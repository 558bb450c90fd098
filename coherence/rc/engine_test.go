package rc

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dsmrt/dsm/clocks"
)

func homeEngine(t *testing.T, b bugs) *Engine {
	t.Helper()
	e, err := New(Config{ID: 0, Nodes: 4, PageSize: 64, Home: func(PageID) NodeID { return 0 }, bugs: b})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// diffsFor builds random diffs of page 0 from nodes 1..3: each node's
// intervals in order, each having synchronised with some nodes' latest
// intervals (whose clocks it then includes: clocks are transitive) and not
// with the others (concurrent).
func diffsFor(rng *rand.Rand) []Message {
	latest := make([]clocks.Vector, 4) // the clock of each node's latest interval
	seqs := uint64(0)
	var out []Message
	for range 2 + rng.IntN(6) {
		n := 1 + rng.IntN(3)
		clock := clocks.NewVector(4)
		if latest[n] != nil {
			clock = latest[n].Clone()
		}
		for j := 1; j < 4; j++ {
			if j != n && latest[j] != nil && rng.IntN(3) == 0 {
				clock = clocks.Merge(clock, latest[j])
			}
		}
		clock[n]++
		latest[n] = clock
		var runs []Run
		for range 1 + rng.IntN(3) {
			off := rng.IntN(60)
			l := 1 + rng.IntN(64-off)
			data := make([]byte, l)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			runs = append(runs, Run{Off: uint32(off), Data: data})
		}
		// A diff's runs are sorted and disjoint, as diffRuns makes them.
		slices.SortFunc(runs, func(a, b Run) int { return int(a.Off) - int(b.Off) })
		kept := runs[:1]
		for _, r := range runs[1:] {
			last := kept[len(kept)-1]
			if r.Off >= last.Off+uint32(len(last.Data)) {
				kept = append(kept, r)
			}
		}
		runs = kept
		seqs++
		out = append(out, Message{Kind: MsgDiff, From: NodeID(n), To: 0, Page: 0, Seq: seqs, Interval: clock[n], Clock: clock, Runs: runs})
	}
	return out
}

// interleave returns the diffs in a random order in which a diff comes
// after every diff that happens before it: a node sends a diff only after
// its release of the interval before was acknowledged, and a node that
// synchronised with another did so after that node's release ended.
func interleave(rng *rand.Rand, ds []Message) []Message {
	done := make([]bool, len(ds))
	var out []Message
	for len(out) < len(ds) {
		var ready []int
		for i, d := range ds {
			if done[i] {
				continue
			}
			ok := true
			for j, e := range ds {
				if !done[j] && j != i && e.Clock[e.From] <= d.Clock[e.From] && e.Clock.Compare(d.Clock) == clocks.Before {
					ok = false
				}
			}
			if ok {
				ready = append(ready, i)
			}
		}
		i := ready[rng.IntN(len(ready))]
		done[i] = true
		out = append(out, ds[i])
	}
	return out
}

func applyAll(t *testing.T, b bugs, ms []Message) ([]byte, []Race) {
	e := homeEngine(t, b)
	for i := range ms {
		m := ms[i]
		if err := e.Step(&m); err != nil {
			t.Fatal(err)
		}
	}
	return e.Master(0), e.Ready().Races
}

// Whatever order racing diffs arrive in, the home ends with the same
// bytes, and it reports a race whatever the order when one is there.
func TestHomeOrderIndependent(t *testing.T) {
	for seed := uint64(1); seed <= 500; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		per := diffsFor(rng)
		first, races := applyAll(t, bugs{}, interleave(rng, per))
		for range 10 {
			got, rs := applyAll(t, bugs{}, interleave(rng, per))
			if !bytes.Equal(got, first) {
				t.Fatalf("seed %d: the master depends on the order the diffs arrived in:\n%x\n%x", seed, first, got)
			}
			if (len(rs) == 0) != (len(races) == 0) {
				t.Fatalf("seed %d: races %v in one order, %v in another", seed, races, rs)
			}
		}
	}
}

// The same test catches a home that applies diffs in arrival order.
func TestHomeOrderIndependentCatchesArrivalOrder(t *testing.T) {
	for seed := uint64(1); seed <= 500; seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		per := diffsFor(rng)
		first, _ := applyAll(t, bugs{arrival: true}, interleave(rng, per))
		for range 10 {
			if got, _ := applyAll(t, bugs{arrival: true}, interleave(rng, per)); !bytes.Equal(got, first) {
				return
			}
		}
	}
	t.Fatal("500 diff sets gave the same master in every order with arrival-order application")
}

func TestDiffRuns(t *testing.T) {
	twin := make([]byte, 32)
	cases := []struct {
		name  string
		write map[int]byte
		want  []Run
	}{
		{"nothing", nil, nil},
		{"one byte", map[int]byte{5: 1}, []Run{{5, []byte{1}}}},
		{"a word", map[int]byte{8: 1, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6, 14: 7, 15: 8}, []Run{{8, []byte{1, 2, 3, 4, 5, 6, 7, 8}}}},
		{"two runs", map[int]byte{0: 9, 1: 9, 4: 7}, []Run{{0, []byte{9, 9}}, {4, []byte{7}}}},
		{"last byte", map[int]byte{31: 1}, []Run{{31, []byte{1}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cur := slices.Clone(twin)
			for i, v := range tc.write {
				cur[i] = v
			}
			got := diffRuns(twin, cur, false)
			if len(got) != len(tc.want) {
				t.Fatalf("runs %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i].Off != tc.want[i].Off || !bytes.Equal(got[i].Data, tc.want[i].Data) {
					t.Fatalf("runs %v, want %v", got, tc.want)
				}
			}
		})
	}
}

// A page with one changed word costs a diff of 8 bytes of data.
func TestOneWordDiff(t *testing.T) {
	e, err := New(Config{ID: 1, Nodes: 2, PageSize: 4096, Home: func(PageID) NodeID { return 0 }})
	if err != nil {
		t.Fatal(err)
	}
	e.Fault(7)
	fetch := e.Ready().Messages[0]
	reply := Message{Kind: MsgPage, From: 0, To: 1, Page: 7, Seq: fetch.Seq, Clock: clocks.NewVector(2), Data: make([]byte, 4096)}
	if err := e.Step(&reply); err != nil {
		t.Fatal(err)
	}
	e.Ready()
	page := make([]byte, 4096)
	page[100] = 0xff
	page[107] = 0x01
	if err := e.Release(1, []PageData{{7, page}}); err != nil {
		t.Fatal(err)
	}
	ms := e.Ready().Messages
	if len(ms) != 1 || ms[0].Kind != MsgDiff {
		t.Fatalf("release sent %+v", ms)
	}
	n := 0
	for _, r := range ms[0].Runs {
		n += len(r.Data)
	}
	if n > 8 {
		t.Fatalf("a diff of %d bytes for one changed word", n)
	}
}

// naiveRuns is diffRuns written the obvious way, byte by byte.
func naiveRuns(twin, cur []byte) []Run {
	var runs []Run
	for i := 0; i < len(cur); {
		if cur[i] == twin[i] {
			i++
			continue
		}
		j := i
		for j < len(cur) && cur[j] != twin[j] {
			j++
		}
		runs = append(runs, Run{Off: uint32(i), Data: cur[i:j]})
		i = j
	}
	return runs
}

// diffRuns' word-at-a-time scan finds exactly the runs of the byte-by-byte
// one, on pages changed sparsely, densely, in words and in odd bytes.
func TestDiffRunsMatchesByteByByte(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		size := 8*(1+rng.IntN(64)) + rng.IntN(8) // not always a multiple of 8
		twin := make([]byte, size)
		for i := range twin {
			twin[i] = byte(rng.IntN(3))
		}
		cur := slices.Clone(twin)
		changes := rng.IntN(size + 1)
		for range changes {
			cur[rng.IntN(size)] = byte(rng.IntN(3))
		}
		got, want := diffRuns(twin, cur, false), naiveRuns(twin, cur)
		if len(got) != len(want) {
			t.Fatalf("trial %d: %d runs, want %d", trial, len(got), len(want))
		}
		for i := range got {
			if got[i].Off != want[i].Off || !bytes.Equal(got[i].Data, want[i].Data) {
				t.Fatalf("trial %d run %d: %+v, want %+v", trial, i, got[i], want[i])
			}
		}
	}
}

func BenchmarkDiffRuns(b *testing.B) {
	twin := make([]byte, 4096)
	for _, tc := range []struct {
		name  string
		every int // change one byte in every
	}{{"one word", 4096}, {"every float64's low bytes", 8}, {"every byte", 1}} {
		cur := slices.Clone(twin)
		for i := 0; i < len(cur); i += tc.every {
			cur[i] = 1
			if tc.every == 4096 {
				copy(cur[i:i+8], "changed!")
			}
		}
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				diffRuns(twin, cur, false)
			}
		})
	}
}

// pump delivers the messages of rd, and those they cause, between the
// engines of es until none is left; it returns every Ready it saw, by
// engine.
func pump(t *testing.T, es []*Engine, rd Ready, from int) [][]Ready {
	t.Helper()
	seen := make([][]Ready, len(es))
	seen[from] = append(seen[from], rd)
	queue := rd.Messages
	for len(queue) > 0 {
		m := queue[0]
		queue = queue[1:]
		if err := es[m.To].Step(&m); err != nil {
			t.Fatalf("step %v at node %d: %v", m.Kind, m.To, err)
		}
		r := es[m.To].Ready()
		seen[m.To] = append(seen[m.To], r)
		queue = append(queue, r.Messages...)
	}
	return seen
}

// A page its home writes in place costs nothing until another node asks
// for it: no twin, no diff, no notice. The first fetch asks the home's
// daemon for the page (Shares); from Shared on, the home's writes are
// diffed like any node's, and the other node's copy is invalidated by
// them.
func TestInPlacePage(t *testing.T) {
	const ps = 64
	var es []*Engine
	for i := range 2 {
		e, err := New(Config{ID: NodeID(i), Nodes: 2, PageSize: ps, Home: func(PageID) NodeID { return 0 }, InPlace: func(p PageID) bool { return p == 0 }})
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	home, other := es[0], es[1]
	if err := home.Fault(0); err != nil {
		t.Fatal(err)
	}
	rd := home.Ready()
	if len(rd.Installs) != 1 || !rd.Installs[0].Own || rd.Installs[0].Data != nil || len(rd.Messages) != 0 {
		t.Fatalf("the home's fault on its in-place page: %+v, want one Own install of zeros and no message", rd)
	}
	if !home.Private(0) || home.Master(0) != nil {
		t.Fatal("an in-place page nobody asked for must be private, with no master in the engine")
	}
	mem := make([]byte, ps) // the home program's memory
	mem[3] = 7
	if err := home.Release(1, []PageData{{Page: 0, Data: slices.Clone(mem)}}); err != nil {
		t.Fatal(err)
	}
	rd = home.Ready()
	if len(rd.Done) != 1 || len(rd.Messages) != 0 || home.Stats().Diffs != 0 {
		t.Fatalf("a release of an in-place page: %+v, %d diffs; want done at once, nothing sent, no diff", rd, home.Stats().Diffs)
	}
	pl := rd.Done[0].Payload

	// The other node asks: the home's daemon is asked for the page.
	if err := other.Fault(0); err != nil {
		t.Fatal(err)
	}
	seen := pump(t, es, other.Ready(), 1)
	var shares []PageID
	for _, r := range seen[0] {
		shares = append(shares, r.Shares...)
	}
	if !slices.Equal(shares, []PageID{0}) || other.Valid(0) {
		t.Fatalf("shares %v, other valid %v: want page 0 asked for once and the fetch waiting", shares, other.Valid(0))
	}
	mem[5] = 9 // written before the daemon protected and read the page
	if err := home.Shared(0, slices.Clone(mem)); err != nil {
		t.Fatal(err)
	}
	seen = pump(t, es, home.Ready(), 0)
	if !other.Valid(0) || home.Private(0) || !bytes.Equal(home.Master(0), mem) || home.Stats().Shares != 1 {
		t.Fatalf("after Shared: other valid %v, home private %v, master %v (want %v), shares %d", other.Valid(0), home.Private(0), home.Master(0), mem, home.Stats().Shares)
	}
	var got []byte
	for _, r := range seen[1] {
		for _, in := range r.Installs {
			got = in.Data
		}
	}
	if !bytes.Equal(got, mem) {
		t.Fatalf("the other node installed %v, want %v", got, mem)
	}
	if err := home.Shared(0, mem); err == nil {
		t.Fatal("Shared of a page already shared must be refused")
	}

	// From now on the home's writes are diffed, and the other node's
	// acquire drops its copy.
	mem[6] = 1
	if err := home.Release(2, []PageData{{Page: 0, Data: slices.Clone(mem)}}); err != nil {
		t.Fatal(err)
	}
	rd = home.Ready()
	if len(rd.Done) != 1 || home.Stats().Diffs != 1 || !bytes.Equal(home.Master(0), mem) {
		t.Fatalf("release after sharing: %+v, %d diffs, master %v; want one diff applied at home", rd, home.Stats().Diffs, home.Master(0))
	}
	if err := other.Acquire(3, nil, Merge(*pl, *rd.Done[0].Payload)); err != nil {
		t.Fatal(err)
	}
	seen = pump(t, es, other.Ready(), 1)
	var inval []PageID
	for _, r := range seen[1] {
		inval = append(inval, r.Invalidates...)
	}
	if !slices.Equal(inval, []PageID{0}) {
		t.Fatalf("the other node's acquire invalidated %v, want page 0", inval)
	}
}

// A diff of an in-place page nobody asked for cannot come from a correct
// node: it is refused, and the page stays private.
func TestInPlaceRefusesUnaskedDiff(t *testing.T) {
	e, err := New(Config{ID: 0, Nodes: 2, PageSize: 64, Home: func(PageID) NodeID { return 0 }, InPlace: func(PageID) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	clock := clocks.NewVector(2)
	clock[1] = 1
	m := Message{Kind: MsgDiff, From: 1, To: 0, Page: 4, Seq: 1, Interval: 1, Clock: clock, Runs: []Run{{Off: 0, Data: []byte{1}}}}
	if err := e.Step(&m); err == nil || !e.Private(4) {
		t.Fatalf("diff of an unasked in-place page: err %v, private %v; want an error and the page still private", err, e.Private(4))
	}
}

// BenchmarkHomeDiffFloats applies, at the home, diffs of a page of
// float64s in which every value changes in its low bytes only (hundreds of
// runs a page, as a stencil's edge rows), one interval after another.
func BenchmarkHomeDiffFloats(b *testing.B) {
	const ps = 4096
	e, err := New(Config{ID: 0, Nodes: 2, PageSize: ps, Home: func(PageID) NodeID { return 0 }})
	if err != nil {
		b.Fatal(err)
	}
	twin := make([]byte, ps)
	cur := make([]byte, ps)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for w := 0; w < ps; w += 8 {
			cur[w] = byte(i + w)
			cur[w+1] = byte(i)
		}
		clock := clocks.NewVector(2)
		clock[1] = uint64(i + 1)
		m := Message{Kind: MsgDiff, From: 1, To: 0, Page: 0, Seq: uint64(i + 1), Interval: uint64(i + 1), Clock: clock, Runs: diffRuns(twin, cur, false)}
		if err := e.Step(&m); err != nil {
			b.Fatal(err)
		}
		e.Ready()
		copy(twin, cur)
	}
}
