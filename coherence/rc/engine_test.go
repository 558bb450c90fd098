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
