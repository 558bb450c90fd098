package clocks

import (
	"math/rand"
	"reflect"
	"sync"
	"testing"
)

func TestLamportTickObserve(t *testing.T) {
	var l Lamport
	if got := l.Tick(); got != 1 {
		t.Fatalf("first Tick = %d, want 1", got)
	}
	tests := []struct {
		name   string
		remote uint64
		want   uint64
	}{
		{"remote behind", 0, 2},
		{"remote equal", 2, 3},
		{"remote ahead", 10, 11},
		{"remote far behind", 1, 12},
	}
	for _, tt := range tests {
		if got := l.Observe(tt.remote); got != tt.want {
			t.Errorf("%s: Observe(%d) = %d, want %d", tt.name, tt.remote, got, tt.want)
		}
		if l.Now() != tt.want {
			t.Errorf("%s: Now() = %d after Observe, want %d", tt.name, l.Now(), tt.want)
		}
	}
}

func TestLamportConcurrent(t *testing.T) {
	var l Lamport
	const workers, per = 4, 1000
	var wg sync.WaitGroup
	seen := make([][]uint64, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				if i%2 == 0 {
					seen[w] = append(seen[w], l.Tick())
				} else {
					seen[w] = append(seen[w], l.Observe(uint64(i)))
				}
			}
		}()
	}
	wg.Wait()
	// Every event got a distinct timestamp, and each goroutine saw its own
	// timestamps strictly increase.
	all := map[uint64]bool{}
	for w, s := range seen {
		for i, x := range s {
			if all[x] {
				t.Fatalf("timestamp %d handed out twice", x)
			}
			all[x] = true
			if i > 0 && x <= s[i-1] {
				t.Fatalf("worker %d: timestamp %d after %d", w, x, s[i-1])
			}
		}
	}
}

func TestOrderString(t *testing.T) {
	tests := []struct {
		o    Order
		want string
	}{
		{Before, "before"}, {After, "after"}, {Equal, "equal"},
		{Concurrent, "concurrent"}, {Order(0), "Order(0)"}, {Order(9), "Order(9)"},
	}
	for _, tt := range tests {
		if got := tt.o.String(); got != tt.want {
			t.Errorf("Order(%d).String() = %q, want %q", int(tt.o), got, tt.want)
		}
	}
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name string
		a, b Vector
		want Order
	}{
		{"both nil", nil, nil, Equal},
		{"nil vs zeros", nil, Vector{0, 0}, Equal},
		{"equal", Vector{1, 2, 3}, Vector{1, 2, 3}, Equal},
		{"equal with trailing zero", Vector{1, 2}, Vector{1, 2, 0}, Equal},
		{"before one entry", Vector{1, 2, 3}, Vector{1, 3, 3}, Before},
		{"before all entries", Vector{0, 0}, Vector{1, 1}, Before},
		{"before via longer", Vector{1, 2}, Vector{1, 2, 1}, Before},
		{"after", Vector{2, 2, 3}, Vector{1, 2, 3}, After},
		{"after via longer", Vector{1, 2, 1}, Vector{1, 2}, After},
		{"concurrent", Vector{1, 0}, Vector{0, 1}, Concurrent},
		{"concurrent differing lengths", Vector{2}, Vector{1, 1}, Concurrent},
		{"concurrent late difference", Vector{5, 5, 0, 1}, Vector{5, 5, 1, 0}, Concurrent},
		{"nil before", nil, Vector{0, 1}, Before},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Compare(tt.b); got != tt.want {
				t.Errorf("%v.Compare(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
			if got := tt.b.Compare(tt.a); got != tt.want.Inverse() {
				t.Errorf("%v.Compare(%v) = %v, want %v", tt.b, tt.a, got, tt.want.Inverse())
			}
			if got := tt.a.Less(tt.b); got != (tt.want == Before) {
				t.Errorf("%v.Less(%v) = %v, want %v", tt.a, tt.b, got, tt.want == Before)
			}
		})
	}
}

func TestTickPanicsOutOfRange(t *testing.T) {
	for _, id := range []int{-1, 3, 100} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Tick(%d) on a 3-node vector did not panic", id)
				}
			}()
			NewVector(3).Tick(id)
		}()
	}
}

func TestMergeMethod(t *testing.T) {
	v := Vector{1, 5, 0}
	v.Merge(Vector{3, 2})
	if want := (Vector{3, 5, 0}); !reflect.DeepEqual(v, want) {
		t.Errorf("Merge shorter: got %v, want %v", v, want)
	}
	v.Merge(Vector{0, 0, 4, 0, 0}) // longer, but only zeros beyond len(v)
	if want := (Vector{3, 5, 4}); !reflect.DeepEqual(v, want) {
		t.Errorf("Merge longer with zero tail: got %v, want %v", v, want)
	}
	defer func() {
		if recover() == nil {
			t.Error("Merge of a longer clock with a non-zero tail did not panic")
		}
	}()
	v.Merge(Vector{0, 0, 0, 1})
}

func TestMergeFunctionDoesNotAlias(t *testing.T) {
	a, b := Vector{1, 4}, Vector{3, 2, 7}
	m := Merge(a, b)
	if want := (Vector{3, 4, 7}); !reflect.DeepEqual(m, want) {
		t.Fatalf("Merge(%v, %v) = %v, want %v", a, b, m, want)
	}
	m[0], m[2] = 100, 100
	if !reflect.DeepEqual(a, Vector{1, 4}) || !reflect.DeepEqual(b, Vector{3, 2, 7}) {
		t.Errorf("modifying the result changed the inputs: a=%v b=%v", a, b)
	}
}

func TestCloneAndString(t *testing.T) {
	if Vector(nil).Clone() != nil {
		t.Error("Clone(nil) is not nil")
	}
	v := Vector{3, 0, 7}
	c := v.Clone()
	c[0] = 9
	if v[0] != 3 {
		t.Error("Clone shares memory with the original")
	}
	tests := []struct {
		v    Vector
		want string
	}{{nil, "[]"}, {Vector{0}, "[0]"}, {Vector{3, 0, 7}, "[3 0 7]"}}
	for _, tt := range tests {
		if got := tt.v.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// randVector returns a short vector with small entries, so that random pairs
// are often ordered or equal rather than almost always concurrent.
func randVector(r *rand.Rand) Vector {
	v := make(Vector, r.Intn(6))
	for i := range v {
		v[i] = uint64(r.Intn(4))
	}
	return v
}

// leq reports whether a <= b entrywise (missing entries are 0).
func leq(a, b Vector) bool {
	o := a.Compare(b)
	return o == Before || o == Equal
}

// sameClock reports whether a and b are equal clocks of equal length.
func sameClock(a, b Vector) bool {
	return len(a) == len(b) && a.Compare(b) == Equal
}

func TestMergeProperties(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		a, b, c := randVector(r), randVector(r), randVector(r)
		ab := Merge(a, b)
		if !sameClock(ab, Merge(b, a)) {
			t.Fatalf("not commutative: Merge(%v,%v)=%v, Merge(%v,%v)=%v", a, b, ab, b, a, Merge(b, a))
		}
		if l, r := Merge(ab, c), Merge(a, Merge(b, c)); !sameClock(l, r) {
			t.Fatalf("not associative for %v %v %v: %v vs %v", a, b, c, l, r)
		}
		if !sameClock(Merge(a, a), a) {
			t.Fatalf("not idempotent: Merge(%v,%v) = %v", a, a, Merge(a, a))
		}
		if !leq(a, ab) || !leq(b, ab) {
			t.Fatalf("Merge(%v,%v) = %v is not an upper bound", a, b, ab)
		}
		// It is the least upper bound: any upper bound of both is >= it.
		if leq(a, c) && leq(b, c) && !leq(ab, c) {
			t.Fatalf("Merge(%v,%v) = %v is not below upper bound %v", a, b, ab, c)
		}
		// The in-place method agrees with the function when it fits.
		if len(b) <= len(a) {
			m := a.Clone()
			m.Merge(b)
			if !reflect.DeepEqual(m, ab) {
				t.Fatalf("%v.Merge(%v) = %v, Merge() = %v", a, b, m, ab)
			}
		}
	}
}

func TestCompareProperties(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	counts := map[Order]int{}
	for i := 0; i < 20000; i++ {
		a, b, c := randVector(r), randVector(r), randVector(r)
		ab := a.Compare(b)
		counts[ab]++
		if ba := b.Compare(a); ba != ab.Inverse() {
			t.Fatalf("antisymmetry: %v vs %v is %v but reverse is %v", a, b, ab, ba)
		}
		if a.Compare(a) != Equal {
			t.Fatalf("%v.Compare(itself) = %v", a, a.Compare(a))
		}
		if a.Less(b) && b.Less(c) && !a.Less(c) {
			t.Fatalf("not transitive: %v < %v < %v but not %v < %v", a, b, c, a, c)
		}
		if len(a) > 0 {
			id := r.Intn(len(a))
			ticked := a.Clone()
			ticked.Tick(id)
			if ticked.Compare(a) != After || !a.Less(ticked) {
				t.Fatalf("%v ticked at %d = %v is not after it", a, id, ticked)
			}
		}
	}
	for _, o := range []Order{Before, After, Equal, Concurrent} {
		if counts[o] == 0 {
			t.Errorf("generator never produced a %v pair; the properties were not exercised", o)
		}
	}
}

// TestCausality simulates processes exchanging messages and checks the
// clocks against the true happened-before relation, computed independently as
// reachability in the event graph.
func TestCausality(t *testing.T) {
	const procs, events = 4, 300
	r := rand.New(rand.NewSource(3))

	type event struct {
		vc   Vector
		lc   uint64
		deps []int // direct predecessors: previous event of the process, and the send
	}
	var evs []event
	last := make([]int, procs) // index of each process's latest event, -1 if none
	for i := range last {
		last[i] = -1
	}
	vcs := make([]Vector, procs)
	lcs := make([]Lamport, procs)
	for i := range vcs {
		vcs[i] = NewVector(procs)
	}
	type msg struct {
		vc   Vector
		lc   uint64
		send int
	}
	inbox := make([][]msg, procs)

	for len(evs) < events {
		p := r.Intn(procs)
		e := event{}
		if last[p] >= 0 {
			e.deps = append(e.deps, last[p])
		}
		switch k := r.Intn(3); {
		case k == 0 && len(inbox[p]) > 0: // receive the oldest pending message
			m := inbox[p][0]
			inbox[p] = inbox[p][1:]
			vcs[p].Merge(m.vc)
			vcs[p].Tick(p)
			e.lc = lcs[p].Observe(m.lc)
			e.deps = append(e.deps, m.send)
		case k == 1: // send to another process
			vcs[p].Tick(p)
			e.lc = lcs[p].Tick()
			to := (p + 1 + r.Intn(procs-1)) % procs
			inbox[to] = append(inbox[to], msg{vcs[p].Clone(), e.lc, len(evs)})
		default: // local event
			vcs[p].Tick(p)
			e.lc = lcs[p].Tick()
		}
		e.vc = vcs[p].Clone()
		last[p] = len(evs)
		evs = append(evs, e)
	}

	// hb[i][j]: event i happened before event j. Events are created in an
	// order consistent with causality, so deps always point backwards.
	hb := make([][]bool, len(evs))
	for j := range evs {
		hb[j] = make([]bool, len(evs))
	}
	for j, e := range evs {
		for _, d := range e.deps {
			hb[d][j] = true
			for i := 0; i < d; i++ {
				if hb[i][d] {
					hb[i][j] = true
				}
			}
		}
	}
	concurrent := 0
	for i := range evs {
		for j := range evs {
			if i == j {
				continue
			}
			want := Concurrent
			switch {
			case hb[i][j]:
				want = Before
			case hb[j][i]:
				want = After
			default:
				concurrent++
			}
			if got := evs[i].vc.Compare(evs[j].vc); got != want {
				t.Fatalf("event %d %v vs event %d %v: Compare = %v, happened-before says %v",
					i, evs[i].vc, j, evs[j].vc, got, want)
			}
			if hb[i][j] && evs[i].lc >= evs[j].lc {
				t.Fatalf("event %d happened before %d but Lamport %d >= %d", i, j, evs[i].lc, evs[j].lc)
			}
		}
	}
	if concurrent == 0 {
		t.Error("simulation produced no concurrent events; the check was not exercised")
	}
}
