package coherence

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// harness drives a cluster of engines message by message. It reuses the
// simulator's daemon (apply) and invariant checks, with a network that
// neither loses, duplicates nor delays anything on its own: the test says
// which message to deliver, lose or duplicate.
type harness struct {
	t *testing.T
	s *sim
}

// newHarness returns a harness of nodes engines with the minimum hold and
// pipelining on; edit, if not nil, changes the config first.
func newHarness(t *testing.T, nodes, pages int, edit func(*SimConfig)) *harness {
	t.Helper()
	cfg := SimConfig{Seed: 1, Nodes: nodes, Pages: pages, Threads: 1, RetryTicks: 2, Hold: true, manual: true}
	if edit != nil {
		edit(&cfg)
	}
	s, err := newSim(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, s: s}
}

// flush applies what node n's engine produced and returns it, formatted.
func (h *harness) flush(n int) []string {
	h.t.Helper()
	node := h.s.nodes[n]
	outs := node.eng.Ready()
	var got []string
	for _, o := range outs {
		got = append(got, o.String())
	}
	for _, o := range outs {
		if err := h.s.apply(node, o); err != nil {
			h.t.Fatalf("applying %v: %v", o, err)
		}
	}
	node.eng.Advance()
	if err := h.s.check(node); err != nil {
		h.t.Fatalf("invariant: %v", err)
	}
	return got
}

// network lists the messages in flight, oldest first.
func (h *harness) network() string {
	var b strings.Builder
	for i, p := range h.s.net {
		m, err := UnmarshalMessage(p.b)
		if err != nil {
			h.t.Fatalf("undecodable message in flight: %v", err)
		}
		b.WriteString("\n  [" + string(rune('0'+i)) + "] " + m.String())
	}
	return b.String()
}

// tstep is one input to the cluster and the outputs it must produce, in
// order (nil: none).
type tstep struct {
	do   func(h *harness) []string
	want []string
}

func step(do func(h *harness) []string, want ...string) tstep { return tstep{do, want} }

// fault raises a fault on node n.
func fault(n int, p PageID, a Access) func(*harness) []string {
	return func(h *harness) []string {
		if err := h.s.nodes[n].eng.Fault(p, a); err != nil {
			h.t.Fatalf("Fault: %v", err)
		}
		return h.flush(n)
	}
}

// deliver hands the i-th message in flight to its node.
func deliver(i int) func(*harness) []string {
	return func(h *harness) []string {
		if i >= len(h.s.net) {
			h.t.Fatalf("no message %d in flight:%s", i, h.network())
		}
		p := h.s.net[i]
		h.s.net = slices.Delete(h.s.net, i, i+1)
		m, err := UnmarshalMessage(p.b)
		if err != nil {
			h.t.Fatal(err)
		}
		if err := h.s.nodes[p.to].eng.Step(m); err != nil {
			h.t.Fatalf("Step(%v): %v", m, err)
		}
		return h.flush(int(p.to))
	}
}

// endHold answers node n's ActHold for page p: its minimum hold is over.
func endHold(n int, p PageID) func(*harness) []string {
	return func(h *harness) []string {
		node := h.s.nodes[n]
		i := slices.IndexFunc(node.holds, func(x simHold) bool { return x.page == p })
		if i < 0 {
			h.t.Fatalf("node %d has no ActHold outstanding for page %d", n, p)
		}
		node.holds = slices.Delete(node.holds, i, i+1)
		node.pages[p].held = false
		node.eng.EndHold(p)
		return h.flush(n)
	}
}

// strayEndHold calls EndHold on node n for page p without an ActHold.
func strayEndHold(n int, p PageID) func(*harness) []string {
	return func(h *harness) []string {
		h.s.nodes[n].eng.EndHold(p)
		return h.flush(n)
	}
}

// lose drops the i-th message in flight.
func lose(i int) func(*harness) []string {
	return func(h *harness) []string {
		h.s.net = slices.Delete(h.s.net, i, i+1)
		return nil
	}
}

// dup puts a copy of the i-th message in flight at the end of the network.
func dup(i int) func(*harness) []string {
	return func(h *harness) []string {
		h.s.net = append(h.s.net, h.s.net[i])
		return nil
	}
}

// tick ticks node n k times.
func tick(n, k int) func(*harness) []string {
	return func(h *harness) []string {
		var got []string
		for range k {
			h.s.nodes[n].eng.Tick()
			got = append(got, h.flush(n)...)
		}
		return got
	}
}

// inject hands node n a message made by the test.
func inject(n int, m *Message) func(*harness) []string {
	return func(h *harness) []string {
		if err := h.s.nodes[n].eng.Step(m); err != nil {
			h.t.Fatalf("Step(%v): %v", m, err)
		}
		return h.flush(n)
	}
}

// write stores v into node n's copy of page p, which must be writable.
func write(n int, p PageID, v uint64) func(*harness) []string {
	return func(h *harness) []string {
		pg := &h.s.nodes[n].pages[p]
		if pg.data == nil || !pg.writable {
			h.t.Fatalf("node %d cannot write page %d: it is %v", n, p, physState(pg))
		}
		binary.LittleEndian.PutUint64(pg.data, v)
		h.s.latest[p] = v
		return nil
	}
}

// expect checks node n's state, version and (if present) content of page p.
func expect(n int, p PageID, st State, version, value uint64) func(*harness) []string {
	return func(h *harness) []string {
		node := h.s.nodes[n]
		if got := node.eng.State(p); got != st {
			h.t.Fatalf("node %d page %d is %v, want %v", n, p, got, st)
		}
		if v, _ := node.eng.Version(p); st != Invalid && v != version {
			h.t.Fatalf("node %d page %d holds version %d, want %d", n, p, v, version)
		}
		if pg := node.pages[p]; pg.data != nil && binary.LittleEndian.Uint64(pg.data) != value {
			h.t.Fatalf("node %d page %d holds %d, want %d", n, p, binary.LittleEndian.Uint64(pg.data), value)
		}
		return nil
	}
}

// expectDir checks the directory entry of page p at its home n.
func expectDir(n int, p PageID, want DirEntry) func(*harness) []string {
	return func(h *harness) []string {
		got, ok := h.s.nodes[n].eng.DirEntry(p)
		if !ok {
			h.t.Fatalf("node %d is not the home of page %d", n, p)
		}
		got.Clock = nil
		if got.Version != want.Version || got.Owner != want.Owner || got.HasOwner != want.HasOwner ||
			got.Exclusive != want.Exclusive || !slices.Equal(got.Copies, want.Copies) ||
			got.Busy != want.Busy || got.Open != want.Open || got.Queue != want.Queue ||
			(got.Busy && got.Requester != want.Requester) {
			h.t.Fatalf("directory of page %d: got %+v, want %+v", p, got, want)
		}
		return nil
	}
}

// expectIdle checks that every engine waits for nothing.
func expectIdle() func(*harness) []string {
	return func(h *harness) []string {
		for _, n := range h.s.nodes {
			if !n.eng.Idle() || n.eng.Pending() != 0 {
				h.t.Fatalf("node %d is not idle (%d pending)", n.id, n.eng.Pending())
			}
			if len(n.holds) > 0 {
				h.t.Fatalf("node %d has %d ActHolds unanswered", n.id, len(n.holds))
			}
			if a := n.eng.Stats().Anomalies; a > 0 {
				h.t.Fatalf("node %d counted %d anomalies", n.id, a)
			}
		}
		if len(h.s.net) > 0 {
			h.t.Fatalf("messages still in flight:%s", h.network())
		}
		return nil
	}
}

// ownedBy1 makes node 1 the exclusive owner of page 0 (home 0) at version
// 1, holding 7.
var ownedBy1 = []tstep{
	step(fault(1, 0, Write), "send Request 1->0 p0 r1 write"),
	step(deliver(0), "send Data 0->1 p0 n1/r1 v1 writable dropped zero"),
	step(deliver(0), "act Install p0 v1 from=0 writable zero", "send Confirm 1->0 p0 n1/r1 v1"),
	step(deliver(0), "send Done 0->1 p0 n1/r1 v1"),
	step(deliver(0)),
	step(write(1, 0, 7)),
}

// sharedBy12 continues ownedBy1: node 2 reads page 0 from node 1. Node
// 1's copy is in its minimum hold since its install, so the forward asks
// for EndHold first (the daemon answers at once: the hold passed long ago).
var sharedBy12 = append(slices.Clip(ownedBy1),
	step(fault(2, 0, Read), "send Request 2->0 p0 r1 read"),
	step(deliver(0), "send FwdRead 0->1 p0 n2/r1 v1"),
	step(deliver(0), "act Hold p0 v1"),
	step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v1 needdata"),
	step(deliver(0), "act Install p0 v1 from=1", "send Confirm 2->0 p0 n2/r1 v1"),
	step(deliver(0), "send Done 0->2 p0 n2/r1 v1"),
	step(deliver(0)),
)

// handOver12 continues ownedBy1 up to node 1 handing the page to node 2.
var handOver12 = append(slices.Clip(ownedBy1),
	step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
	step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
	step(deliver(0), "act Hold p0 v1"),
	step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
		"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
)

func seq(parts ...[]tstep) []tstep {
	var out []tstep
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name  string
		nodes int
		steps []tstep
	}{
		{"read miss on a never-written page is granted zeros by the home", 2, []tstep{
			step(fault(1, 0, Read), "send Request 1->0 p0 r1 read"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v0 zero"),
			step(deliver(0), "act Install p0 v0 from=0 zero", "send Confirm 1->0 p0 n1/r1 v0"),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v0"),
			step(deliver(0)),
			step(expect(1, 0, Shared, 0, 0)),
			step(expectDir(0, 0, DirEntry{Copies: []NodeID{1}})),
			step(expectIdle()),
		}},
		{"write miss on a never-written page is granted zeros, writable", 2, seq(ownedBy1, []tstep{
			step(expect(1, 0, Exclusive, 1, 7)),
			step(expectDir(0, 0, DirEntry{Version: 1, Owner: 1, HasOwner: true, Exclusive: true, Copies: []NodeID{1}})),
			step(expectIdle()),
		})},
		{"the home's own faults are served without messages", 2, []tstep{
			step(fault(0, 0, Read), "act Install p0 v0 from=0 zero"),
			step(fault(0, 0, Write), "act Unprotect p0 v1"),
			step(fault(0, 0, Write), "act Wake p0 v1"),
			step(fault(0, 0, Read), "act Wake p0 v1"),
			step(expect(0, 0, Exclusive, 1, 0)),
			step(expectIdle()),
		}},
		{"read miss: the owner downgrades and sends its copy", 3, seq(sharedBy12, []tstep{
			step(expect(1, 0, Shared, 1, 7)),
			step(expect(2, 0, Shared, 1, 7)),
			step(expectDir(0, 0, DirEntry{Version: 1, Owner: 1, HasOwner: true, Copies: []NodeID{1, 2}})),
			step(expectIdle()),
		})},
		{"write miss: the owner hands over and drops; the requester waits for Dropped", 3, seq(handOver12, []tstep{
			step(deliver(0)), // the data: not installed while node 1 may still hold a copy
			step(expect(2, 0, Invalid, 0, 0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(deliver(0), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0)),
			step(expect(1, 0, Invalid, 0, 0)),
			step(expect(2, 0, Exclusive, 2, 7)),
			step(expectDir(0, 0, DirEntry{Version: 2, Owner: 2, HasOwner: true, Exclusive: true, Copies: []NodeID{2}})),
			step(expectIdle()),
		})},
		{"write miss: Dropped overtakes the data", 3, seq(handOver12, []tstep{
			step(deliver(1)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(expect(2, 0, Exclusive, 2, 7)),
		})},
		{"upgrade: the home invalidates the other readers, then grants without data", 3, seq(sharedBy12, []tstep{
			step(fault(2, 0, Write), "send Request 2->0 p0 r2 write have=v1"),
			step(deliver(0), "send Inval 0->1 p0 n2/r2 v2"),
			step(deliver(0), "act Drop p0 v1", "send InvalAck 1->0 p0 n2/r2 v2"),
			step(deliver(0), "send Grant 0->2 p0 n2/r2 v2 writable"),
			step(deliver(0), "act Unprotect p0 v2", "send Confirm 2->0 p0 n2/r2 v2"),
			step(deliver(0), "send Done 0->2 p0 n2/r2 v2"),
			step(deliver(0)),
			step(write(2, 0, 8)),
			step(expect(1, 0, Invalid, 0, 0)),
			step(expect(2, 0, Exclusive, 2, 8)),
			step(expectDir(0, 0, DirEntry{Version: 2, Owner: 2, HasOwner: true, Exclusive: true, Copies: []NodeID{2}})),
			step(expectIdle()),
		})},
		{"write miss with readers: invalidations first (after the reader's hold), then the hand-over", 4, seq(sharedBy12, []tstep{
			step(fault(3, 0, Write), "send Request 3->0 p0 r1 write"),
			step(deliver(0), "send Inval 0->2 p0 n3/r1 v2"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(2, 0), "act Drop p0 v1", "send InvalAck 2->0 p0 n3/r1 v2"),
			step(deliver(0), "send FwdWrite 0->1 p0 n3/r1 v2"),
			step(deliver(0), "send Data 1->3 p0 n3/r1 v2 writable needdata", "act Drop p0 v1", "send Dropped 1->3 p0 n3/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 3->0 p0 n3/r1 v2"),
			step(expect(3, 0, Exclusive, 2, 7)),
		})},
		{"faults coalesce; a write fault during a read miss upgrades at once", 2, []tstep{
			step(fault(1, 0, Read), "send Request 1->0 p0 r1 read"),
			step(fault(1, 0, Read)),
			step(fault(1, 0, Write)),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v0 zero"),
			step(deliver(0), "act Install p0 v0 from=0 zero", "send Request 1->0 p0 r2 write have=v0"),
			step(deliver(0), "send Grant 0->1 p0 n1/r2 v1 writable"),
			step(deliver(0), "act Unprotect p0 v1", "send Confirm 1->0 p0 n1/r2 v1"),
			step(deliver(0), "send Done 0->1 p0 n1/r2 v1"),
			step(deliver(0)),
			step(expect(1, 0, Exclusive, 1, 0)),
			step(expectIdle()),
		}},
		{"lost read copy: the retry drives the home again and the owner resends", 3, seq(ownedBy1, []tstep{
			step(fault(2, 0, Read), "send Request 2->0 p0 r1 read"),
			step(deliver(0), "send FwdRead 0->1 p0 n2/r1 v1"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v1 needdata"),
			step(lose(0)),
			step(tick(2, 1)),
			step(tick(2, 1), "send Request 2->0 p0 r1 read"),
			step(deliver(0), "send FwdRead 0->1 p0 n2/r1 v1"),
			step(deliver(0), "send Data 1->2 p0 n2/r1 v1 needdata"),
			step(deliver(0), "act Install p0 v1 from=1", "send Confirm 2->0 p0 n2/r1 v1"),
			step(deliver(0), "send Done 0->2 p0 n2/r1 v1"),
			step(deliver(0)),
			step(expect(2, 0, Shared, 1, 7)),
			step(expectIdle()),
		})},
		{"lost hand-over: the old owner resends the copy it kept", 3, seq(handOver12, []tstep{
			step(lose(0)),
			step(lose(0)),
			step(tick(2, 2), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0), "send Data 1->2 p0 n2/r1 v2 writable dropped data=8B"),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(deliver(0), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0)),
			step(expect(2, 0, Exclusive, 2, 7)),
			step(expectIdle()),
		})},
		{"lost release: the old owner asks the home", 3, seq(handOver12, []tstep{
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(deliver(0), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2"),
			step(lose(0)),
			step(deliver(0)),
			step(tick(1, 2), "send XferQuery 1->0 p0 v2"),
			step(deliver(0), "send Release 0->1 p0 v2"),
			step(deliver(0)),
			step(expectIdle()),
		})},
		{"lost confirmation and lost done: the requester confirms again", 2, []tstep{
			step(fault(1, 0, Read), "send Request 1->0 p0 r1 read"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v0 zero"),
			step(deliver(0), "act Install p0 v0 from=0 zero", "send Confirm 1->0 p0 n1/r1 v0"),
			step(lose(0)),
			step(tick(1, 2), "send Confirm 1->0 p0 n1/r1 v0"),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v0"),
			step(lose(0)),
			step(tick(1, 2), "send Confirm 1->0 p0 n1/r1 v0"),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v0"),
			step(deliver(0)),
			step(expectIdle()),
		}},
		{"lost invalidation: the retry sends it again; a duplicate is acknowledged again", 3, seq(sharedBy12, []tstep{
			step(fault(2, 0, Write), "send Request 2->0 p0 r2 write have=v1"),
			step(deliver(0), "send Inval 0->1 p0 n2/r2 v2"),
			step(lose(0)),
			step(tick(2, 2), "send Request 2->0 p0 r2 write have=v1"),
			step(deliver(0), "send Inval 0->1 p0 n2/r2 v2"),
			step(dup(0)),
			step(deliver(0), "act Drop p0 v1", "send InvalAck 1->0 p0 n2/r2 v2"),
			step(deliver(0), "send InvalAck 1->0 p0 n2/r2 v2"),
			step(deliver(0), "send Grant 0->2 p0 n2/r2 v2 writable"),
			step(deliver(0)), // the duplicate acknowledgement
			step(deliver(0), "act Unprotect p0 v2", "send Confirm 2->0 p0 n2/r2 v2"),
			step(deliver(0), "send Done 0->2 p0 n2/r2 v2"),
			step(deliver(0)),
			step(expectIdle()),
		})},
		{"a duplicated request drives the home again; the extra copy is ignored", 2, []tstep{
			step(fault(1, 0, Read), "send Request 1->0 p0 r1 read"),
			step(dup(0)),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v0 zero"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v0 zero"),
			step(deliver(0), "act Install p0 v0 from=0 zero", "send Confirm 1->0 p0 n1/r1 v0"),
			step(deliver(0)),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v0"),
			step(deliver(0)),
			step(expectIdle()),
		}},
		{"a stale invalidation is acknowledged but not applied", 3, seq(sharedBy12, []tstep{
			step(inject(2, &Message{Type: MsgInval, From: 0, To: 2, Page: 0, Req: 9, Requester: 1, Version: 1}),
				"send InvalAck 2->0 p0 n1/r9 v1"),
			step(deliver(0)),
			step(expect(2, 0, Shared, 1, 7)),
			step(expectIdle()),
		})},
		{"data older than an invalidated version is refused", 3, seq(sharedBy12, []tstep{
			step(fault(2, 0, Write), "send Request 2->0 p0 r2 write have=v1"),
			step(deliver(0), "send Inval 0->1 p0 n2/r2 v2"),
			step(deliver(0), "act Drop p0 v1", "send InvalAck 1->0 p0 n2/r2 v2"),
			step(fault(1, 0, Read), "send Request 1->0 p0 r2 read"),
			step(inject(1, &Message{Type: MsgData, From: 2, To: 1, Page: 0, Req: 2, Requester: 1, Version: 1,
				Data: make([]byte, 8), Meta: []byte{2}})),
			step(expect(1, 0, Invalid, 0, 0)),
		})},
		{"a grant for another request is ignored", 2, []tstep{
			step(fault(1, 0, Read), "send Request 1->0 p0 r1 read"),
			step(inject(1, &Message{Type: MsgGrant, From: 0, To: 1, Page: 0, Req: 5, Requester: 1, Version: 1, Writable: true})),
			step(inject(1, &Message{Type: MsgDone, From: 0, To: 1, Page: 0, Req: 1, Requester: 1})),
			step(expect(1, 0, Invalid, 0, 0)),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.nodes, 2, nil)
			for i, st := range tt.steps {
				got := st.do(h)
				if !slices.Equal(got, st.want) {
					t.Fatalf("step %d: got\n  %s\nwant\n  %s\nin flight:%s", i,
						strings.Join(got, "\n  "), strings.Join(st.want, "\n  "), h.network())
				}
			}
		})
	}
}

func TestStats(t *testing.T) {
	h := newHarness(t, 3, 1, nil)
	for _, st := range seq(sharedBy12, []tstep{
		step(fault(2, 0, Read)),
		step(fault(2, 0, Write)),
		step(fault(2, 0, Write)),
	}) {
		st.do(h)
	}
	s1, s2 := h.s.nodes[1].eng.Stats(), h.s.nodes[2].eng.Stats()
	if s1.WriteFaults != 1 || s1.Installs != 1 || s1.Downgrades != 1 || s1.CopiesOut != 1 {
		t.Errorf("node 1 stats: %+v", s1)
	}
	if s2.ReadFaults != 2 || s2.UpgradeFaults != 2 || s2.Wakes != 1 || s2.Coalesced != 1 || s2.Requests != 2 {
		t.Errorf("node 2 stats: %+v", s2)
	}
	if h0 := h.s.nodes[0].eng.Stats(); h0.Transactions != 2 || h0.Stale != 0 {
		t.Errorf("home stats: %+v", h0)
	}
	if p := h.s.nodes[2].eng.Pending(); p != 1 {
		t.Errorf("node 2 has %d pending faults, want 1", p)
	}
}

func TestReqBase(t *testing.T) {
	e, err := New(Config{ID: 1, Nodes: 2, Pages: 1, ReqBase: 1000})
	if err != nil {
		t.Fatal(err)
	}
	e.Fault(0, Read)
	out := e.Ready() // valid until Advance
	if len(out) != 1 || out[0].Msg == nil || out[0].Msg.Req != 1001 {
		t.Fatalf("first request with ReqBase 1000: %v", out)
	}
	e.Advance()
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no nodes", Config{Nodes: 0, Pages: 1}},
		{"too many nodes", Config{Nodes: 1<<16 + 1, Pages: 1}},
		{"id outside the cluster", Config{ID: 3, Nodes: 3, Pages: 1}},
		{"no pages", Config{Nodes: 1, Pages: 0}},
		{"negative retry", Config{Nodes: 1, Pages: 1, RetryTicks: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); !errors.Is(err, ErrConfig) {
				t.Fatalf("New(%+v) = %v, want ErrConfig", tt.cfg, err)
			}
		})
	}
}

func TestFaultErrors(t *testing.T) {
	e, err := New(Config{ID: 0, Nodes: 2, Pages: 4, Home: func(p PageID) NodeID { return NodeID(p) }})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		p    PageID
		a    Access
		want error
	}{
		{4, Read, ErrBadFault},
		{0, 0, ErrBadFault},
		{0, 3, ErrBadFault},
		{2, Read, ErrConfig}, // Home(2) = 2 is outside the cluster
	}
	for _, tt := range tests {
		if err := e.Fault(tt.p, tt.a); !errors.Is(err, tt.want) {
			t.Errorf("Fault(%d, %v) = %v, want %v", tt.p, tt.a, err, tt.want)
		}
	}
	if e.HasReady() || e.Pending() != 0 {
		t.Fatalf("a refused fault produced output")
	}
}

func TestStepErrors(t *testing.T) {
	e, err := New(Config{ID: 1, Nodes: 3, Pages: 4}) // home of page p: p mod 3
	if err != nil {
		t.Fatal(err)
	}
	ok := func() *Message {
		return &Message{Type: MsgRequest, From: 0, To: 1, Page: 1, Req: 1, Requester: 0, Access: Read}
	}
	tests := []struct {
		name string
		edit func(m *Message) *Message
		want error
	}{
		{"nil", func(m *Message) *Message { return nil }, ErrMalformed},
		{"type 0", func(m *Message) *Message { m.Type = 0; return m }, ErrMalformed},
		{"unknown type", func(m *Message) *Message { m.Type = msgTypeEnd; return m }, ErrMalformed},
		{"for another node", func(m *Message) *Message { m.To = 2; return m }, ErrNotForNode},
		{"sender outside the cluster", func(m *Message) *Message { m.From = 3; return m }, ErrMalformed},
		{"requester outside the cluster", func(m *Message) *Message { m.Requester = 9; return m }, ErrMalformed},
		{"page outside the region", func(m *Message) *Message { m.Page = 4; return m }, ErrMalformed},
		{"clock too long", func(m *Message) *Message { m.Clock = make([]uint64, 4); return m }, ErrMalformed},
		{"page clock too long", func(m *Message) *Message { m.PageClock = make([]uint64, 4); return m }, ErrMalformed},
		{"unfilled data", func(m *Message) *Message { m.Type, m.NeedData = MsgData, true; return m }, ErrMalformed},
		{"request without access", func(m *Message) *Message { m.Access = 0; return m }, ErrMalformed},
		{"request to a node that is not the home", func(m *Message) *Message { m.Page = 2; return m }, ErrNotHome},
		{"confirmation to a node that is not the home", func(m *Message) *Message { m.Type, m.Page = MsgConfirm, 0; return m }, ErrNotHome},
		{"forward not from the home", func(m *Message) *Message { m.Type, m.Page = MsgFwdRead, 2; return m }, ErrNotHome},
		{"invalidation not from the home", func(m *Message) *Message { m.Type, m.From = MsgInval, 2; return m }, ErrNotHome},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := e.Step(tt.edit(ok())); !errors.Is(err, tt.want) {
				t.Fatalf("Step = %v, want %v", err, tt.want)
			}
			if e.HasReady() || e.Stats() != (Stats{}) {
				t.Fatalf("a refused message changed the engine: %+v", e.Stats())
			}
		})
	}
	if err := e.Step(ok()); err != nil {
		t.Fatalf("the valid message: %v", err)
	}
	if !e.HasReady() {
		t.Fatalf("the valid request produced nothing")
	}
}

func TestDirEntryOnlyAtHome(t *testing.T) {
	e, err := New(Config{ID: 1, Nodes: 3, Pages: 4})
	if err != nil {
		t.Fatal(err)
	}
	for p := PageID(0); p < 5; p++ {
		_, ok := e.DirEntry(p)
		if want := p < 4 && p%3 == 1; ok != want {
			t.Errorf("DirEntry(%d) ok = %v, want %v", p, ok, want)
		}
	}
}

// TestBatchContract: a batch is applied whole before the next input, and a
// page message gets its page through Fill.
func TestBatchContract(t *testing.T) {
	newPair := func(t *testing.T) (*Engine, *Engine) {
		var es [2]*Engine
		for i := range es {
			e, err := New(Config{ID: NodeID(i), Nodes: 2, Pages: 2, Home: func(PageID) NodeID { return 0 }})
			if err != nil {
				t.Fatal(err)
			}
			es[i] = e
		}
		return es[0], es[1]
	}
	// pageMessage makes node 0 hold page 0 writable and node 1 ask for it:
	// node 0's next batch has a message marked NeedData.
	pageMessage := func(t *testing.T) (*Engine, *Message) {
		h, r := newPair(t)
		h.Fault(0, Write) // the home grants itself a zero page
		h.Ready()
		h.Advance()
		r.Fault(0, Read)
		req := r.Ready()[0].Msg
		if err := h.Step(req); err != nil { // before r's Advance, which reuses req
			t.Fatal(err)
		}
		r.Advance()
		for _, o := range h.Ready() {
			if o.Msg != nil && o.Msg.NeedData {
				return h, o.Msg
			}
		}
		t.Fatal("no page message")
		return nil, nil
	}
	panics := func(t *testing.T, want string, f func()) {
		t.Helper()
		defer func() {
			r := recover()
			if r == nil || !strings.Contains(fmt.Sprint(r), want) {
				t.Fatalf("panic %v, want one saying %q", r, want)
			}
		}()
		f()
	}
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"input before Advance", func(t *testing.T) {
			e, _ := newPair(t)
			e.Fault(0, Read)
			e.Ready()
			panics(t, "call Advance first", func() { e.Tick() })
			panics(t, "call Advance first", func() { e.Fault(1, Read) })
			panics(t, "before Advance", func() { e.Ready() })
			e.Advance()
			e.Tick() // fine now
		}},
		{"Advance without Ready", func(t *testing.T) {
			e, _ := newPair(t)
			panics(t, "without Ready", e.Advance)
		}},
		{"filled", func(t *testing.T) {
			h, m := pageMessage(t)
			got := h.Fill(m, []byte{1, 2}, []byte{3})
			if got.NeedData || string(got.Data) != "\x01\x02" || string(got.Meta) != "\x03" {
				t.Fatalf("filled %v (data %v, meta %v)", got, got.Data, got.Meta)
			}
			h.Advance()
			if h.Stats().Anomalies != 0 {
				t.Fatalf("%d anomalies after a filled batch", h.Stats().Anomalies)
			}
			// The message went back to the pool: kept past Advance, it
			// shows garbage.
			if got.Type < msgTypeEnd {
				t.Fatalf("a message output is still %v after Advance", got)
			}
		}},
		{"not filled", func(t *testing.T) {
			h, _ := pageMessage(t)
			h.Advance()
			if h.Stats().Anomalies != 1 {
				t.Fatalf("a page message never filled: %d anomalies, want 1", h.Stats().Anomalies)
			}
		}},
		{"filled twice", func(t *testing.T) {
			h, m := pageMessage(t)
			h.Fill(m, []byte{1}, nil)
			h.Fill(m, []byte{1}, nil)
			h.Advance()
			if h.Stats().Anomalies != 1 {
				t.Fatalf("a message filled twice: %d anomalies, want 1", h.Stats().Anomalies)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}
