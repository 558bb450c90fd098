package pager

import (
	"testing"
	"time"

	"github.com/dsmrt/dsm/coherence"
)

// memStore and memProg are a node's memory without the kernel: enough to
// count what the pager itself allocates.
type memStore struct{ pages [][]byte }

func (s *memStore) ReadPage(p coherence.PageID, buf []byte) error {
	if d := s.pages[p]; len(d) > 0 {
		copy(buf, d)
	} else {
		clear(buf)
	}
	return nil
}
func (s *memStore) WritePage(p coherence.PageID, data []byte) error { return s.put(p, data) }
func (s *memStore) Punch(p coherence.PageID) error {
	s.pages[p] = s.pages[p][:0]
	return nil
}

func (s *memStore) put(p coherence.PageID, data []byte) error {
	if cap(s.pages[p]) < len(data) {
		s.pages[p] = make([]byte, len(data))
	}
	s.pages[p] = s.pages[p][:len(data)]
	copy(s.pages[p], data)
	return nil
}

type memProg struct{ s *memStore }

func (m memProg) Copy(p coherence.PageID, data []byte, readOnly bool) error { return m.s.put(p, data) }
func (memProg) Protect(coherence.PageID, int, bool, bool) error             { return nil }
func (memProg) Wake(coherence.PageID) error                                 { return nil }

// wire carries messages between the pagers of one test, encoded as the
// daemon sends them.
type wire struct {
	q   [][]byte
	buf [][]byte // spare buffers
}

type wireSender struct {
	w  *wire
	to *[]int
}

func (s wireSender) Send(m *coherence.Message) {
	var b []byte
	if k := len(s.w.buf); k > 0 {
		b, s.w.buf = s.w.buf[k-1][:0], s.w.buf[:k-1]
	} else {
		b = make([]byte, 0, 16<<10) // grown once: the test's, not the pager's
	}
	s.w.q = append(s.w.q, m.AppendBinary(b))
	*s.to = append(*s.to, int(m.To))
}

// TestAllocationsPerFault counts the heap allocations of a remote read
// fault and the write that takes the page back, through two pagers and
// their engines (the messages encoded and decoded as on the wire), in
// steady state.
func TestAllocationsPerFault(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	const ps = 4096
	var (
		w    wire
		dest []int
		gs   [2]*Pager
		prs  [2]*Prog
		now  = time.Unix(1, 0)
	)
	for i := range gs {
		eng, err := coherence.New(coherence.Config{ID: coherence.NodeID(i), Nodes: 2, Pages: 4,
			Home: func(coherence.PageID) coherence.NodeID { return 0 }})
		if err != nil {
			t.Fatal(err)
		}
		st := &memStore{pages: make([][]byte, 4)}
		g, err := New(Config{ID: coherence.NodeID(i), Engine: eng, Pages: 4, PageSize: ps,
			Store: st, Sender: wireSender{&w, &dest}, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		gs[i], prs[i] = g, g.Attach(1, memProg{st})
	}
	var decs [2]coherence.Decoder
	deliver := func() {
		for i := 0; i < len(w.q); i++ { // Step may send more
			b, to := w.q[i], dest[i]
			m, err := decs[to].Decode(b) // as the daemon decodes
			if err != nil {
				t.Fatal(err)
			}
			w.buf = append(w.buf, b)
			if err := gs[to].Step(m); err != nil {
				t.Fatal(err)
			}
		}
		w.q, dest = w.q[:0], dest[:0]
	}
	cycle := func() {
		now = now.Add(time.Millisecond) // past every hold
		gs[1].Fault(prs[1], 0, false, false, now)
		deliver()
		now = now.Add(time.Millisecond)
		gs[0].Fault(prs[0], 0, true, true, now) // the owner writes again: node 1's copy goes
		deliver()
		for _, g := range gs {
			g.ServeHolds(now)
			g.Tick(now)
		}
		deliver()
	}
	gs[0].Fault(prs[0], 0, true, false, now)
	deliver()
	for range 20 {
		cycle()
	}
	got := testing.AllocsPerRun(200, cycle)
	t.Logf("%.0f allocations per remote read fault and the write that takes the page back", got)
	// All of them are the engines' page-version clocks and the decoded
	// page clocks the engines keep (go test -memprofile): the pager's own
	// steady state allocates nothing. The ceiling is what that costs today
	// (77 before the pager reused its waiting lists, fault timelines,
	// encoded pages and written ranges, 59 before a decoded message's two
	// clocks and its data and metadata shared an allocation each, 56 before
	// the engine kept its page states in tables of values, 54 before the
	// daemon decoded messages with their page left in the receive buffer,
	// 53 before the engine's messages, clocks, requests and transactions
	// came from pools and a Decoder reused its message).
	if got > 5 {
		t.Errorf("%.0f allocations per cycle, more than the 5 of the engines and the decoder", got)
	}
	if ins := gs[1].Counters().Installs; ins < 200 {
		t.Fatalf("node 1 installed %d copies: the cycle does not fault remotely", ins)
	}
}
