package coherence

import (
	"slices"
	"strings"
	"testing"
)

// expectCount checks one of node n's counters.
func expectCount(n int, name string, get func(Stats) uint64, want uint64) func(*harness) []string {
	return func(h *harness) []string {
		if got := get(h.s.nodes[n].eng.Stats()); got != want {
			h.t.Fatalf("node %d: %s = %d, want %d", n, name, got, want)
		}
		return nil
	}
}

// handOver21 continues ownedBy1 on three nodes: node 2 takes the page from
// node 1 (whose hold is long over: the daemon answers at once), and node 1,
// which wants it back, asks again while node 2 has not confirmed. The home
// pipelines: it forwards node 1's request to node 2 at once. In flight
// after it: Data 1->2, Dropped 1->2, FwdWrite 0->2.
var handOver21 = append(slices.Clip(ownedBy1),
	step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
	step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
	step(deliver(0), "act Hold p0 v1"),
	step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
		"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
	step(fault(1, 0, Write), "send Request 1->0 p0 r2 write"),
	step(deliver(2), "send FwdWrite 0->2 p0 n1/r2 v3"),
)

func TestPipelineTransitions(t *testing.T) {
	noPipeline := func(c *SimConfig) { c.NoPipeline = true }
	noHold := func(c *SimConfig) { c.Hold = false }
	tests := []struct {
		name  string
		nodes int
		cfg   func(*SimConfig) // nil: hold and pipelining on
		steps []tstep
	}{
		{"pipelining: the pending owner keeps an early forward, installs, holds, then hands over", 3, nil, seq(handOver21, []tstep{
			step(expectDir(0, 0, DirEntry{Version: 1, Owner: 1, HasOwner: true, Exclusive: true, Copies: []NodeID{1},
				Busy: true, Requester: 2, Open: 2})),
			step(expectCount(0, "pipelined", func(s Stats) uint64 { return s.Pipelined }, 1)),
			step(deliver(2)), // the forward overtakes the page: kept
			step(expectCount(2, "early forwards", func(s Stats) uint64 { return s.EarlyFwds }, 1)),
			step(deliver(0)), // the data: waits for Dropped
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2", "act Hold p0 v2"),
			step(write(2, 0, 8)),
			step(endHold(2, 0), "act Protect p0 v2", "send Data 2->1 p0 n1/r2 v3 writable needdata",
				"act Drop p0 v2", "send Dropped 2->1 p0 n1/r2 v3"),
			step(deliver(0), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2"),
			step(expectDir(0, 0, DirEntry{Version: 2, Owner: 2, HasOwner: true, Exclusive: true, Copies: []NodeID{2},
				Busy: true, Requester: 1, Open: 1})),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v3 from=2 writable", "send Confirm 1->0 p0 n1/r2 v3"), // nobody waits: no hold
			step(deliver(0)),
			step(deliver(0)),
			step(deliver(0), "send Release 0->2 p0 v3", "send Done 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0)),
			step(expect(1, 0, Exclusive, 3, 8)),
			step(expectDir(0, 0, DirEntry{Version: 3, Owner: 1, HasOwner: true, Exclusive: true, Copies: []NodeID{1}})),
			step(expectCount(2, "holds", func(s Stats) uint64 { return s.Holds }, 1)),
			step(expectIdle()),
		})},
		{"pipelining: a read behind a write is forwarded to the pending owner; the chain stops at the reader", 4, nil, seq(ownedBy1, []tstep{
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
			step(fault(3, 0, Read), "send Request 3->0 p0 r1 read"),
			step(deliver(2), "send FwdRead 0->2 p0 n3/r1 v2"),
			step(fault(1, 0, Write), "send Request 1->0 p0 r2 write"),
			step(deliver(3)), // must invalidate node 3's copy, not yet there: waits
			step(expectDir(0, 0, DirEntry{Version: 1, Owner: 1, HasOwner: true, Exclusive: true, Copies: []NodeID{1},
				Busy: true, Requester: 2, Open: 2, Queue: 1})),
			step(deliver(2)),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2", "act Hold p0 v2"),
			step(write(2, 0, 9)),
			step(endHold(2, 0), "act Protect p0 v2", "send Data 2->3 p0 n3/r1 v2 needdata"),
			step(deliver(1), "act Install p0 v2 from=2", "send Confirm 3->0 p0 n3/r1 v2"),
			// Node 3's confirmation overtakes node 2's and closes both
			// transactions; node 1's write starts: invalidate node 3.
			step(deliver(1), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2", "send Done 0->3 p0 n3/r1 v2",
				"send Inval 0->3 p0 n1/r2 v3"),
			step(deliver(0), "send Done 0->2 p0 n2/r1 v2"), // node 2's late confirmation
			step(deliver(0)),
			step(deliver(0)),
			step(deliver(0)),
			step(deliver(0), "act Hold p0 v2"), // node 3's copy is in its hold
			step(endHold(3, 0), "act Drop p0 v2", "send InvalAck 3->0 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0), "send FwdWrite 0->2 p0 n1/r2 v3"),
			// Node 2's hold ended when it served the reader: served at once.
			step(deliver(0), "send Data 2->1 p0 n1/r2 v3 writable needdata", "act Drop p0 v2", "send Dropped 2->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v3 from=2 writable", "send Confirm 1->0 p0 n1/r2 v3"),
			step(deliver(0), "send Release 0->2 p0 v3", "send Done 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0)),
			step(expect(1, 0, Exclusive, 3, 9)),
			step(expectIdle()),
		})},
		{"a pending owner's new request closes its transaction and is pipelined in turn", 3, nil, seq(ownedBy1, []tstep{
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(lose(0)), // the confirmation
			step(fault(1, 0, Write), "send Request 1->0 p0 r2 write"),
			step(deliver(0), "send FwdWrite 0->2 p0 n1/r2 v3"),
			step(deliver(0), "act Hold p0 v2"), // the page came before the forward: its hold still runs
			step(endHold(2, 0), "act Protect p0 v2", "send Data 2->1 p0 n1/r2 v3 writable needdata",
				"act Drop p0 v2", "send Dropped 2->1 p0 n1/r2 v3"),
			step(fault(2, 0, Write), "send Request 2->0 p0 r2 write"),
			step(deliver(2), "send Release 0->1 p0 v2", "send FwdWrite 0->1 p0 n2/r2 v4"),
			step(expectDir(0, 0, DirEntry{Version: 2, Owner: 2, HasOwner: true, Exclusive: true, Copies: []NodeID{2},
				Busy: true, Requester: 1, Open: 2})),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v3 from=2 writable", "send Confirm 1->0 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0), "act Hold p0 v3"),
			step(endHold(1, 0), "act Protect p0 v3", "send Data 1->2 p0 n2/r2 v4 writable needdata",
				"act Drop p0 v3", "send Dropped 1->2 p0 n2/r2 v4"),
			step(deliver(0), "send Release 0->2 p0 v3", "send Done 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v4 from=1 writable", "send Confirm 2->0 p0 n2/r2 v4"),
			step(deliver(0)),
			step(deliver(0)),
			step(deliver(0), "send Release 0->1 p0 v4", "send Done 0->2 p0 n2/r2 v4"),
			step(deliver(0)),
			step(deliver(0)),
			step(expect(2, 0, Exclusive, 4, 7)),
			step(expectIdle()),
		})},
		{"a lost pipelined forward: the retry drives it again and the new owner serves it after its hold", 3, nil, seq(handOver21, []tstep{
			step(lose(2)),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(deliver(0), "send Release 0->1 p0 v2", "send Done 0->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0)),
			step(tick(1, 2), "send Request 1->0 p0 r2 write"),
			step(deliver(0), "send FwdWrite 0->2 p0 n1/r2 v3"),
			step(deliver(0), "act Hold p0 v2"),
			step(endHold(2, 0), "act Protect p0 v2", "send Data 2->1 p0 n1/r2 v3 writable needdata",
				"act Drop p0 v2", "send Dropped 2->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v3 from=2 writable", "send Confirm 1->0 p0 n1/r2 v3"),
			step(deliver(0), "send Release 0->2 p0 v3", "send Done 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0)),
			step(expectIdle()),
		})},
		{"a forward kept while the page was on its way is dropped if the copy is not the one it asks for", 3, nil, []tstep{
			step(fault(1, 0, Write), "send Request 1->0 p0 r1 write"),
			step(inject(1, &Message{Type: MsgFwdWrite, From: 0, To: 1, Page: 0, Req: 9, Requester: 2, Version: 7})),
			step(expectCount(1, "early forwards", func(s Stats) uint64 { return s.EarlyFwds }, 1)),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v1 writable dropped zero"),
			step(deliver(0), "act Install p0 v1 from=0 writable zero", "send Confirm 1->0 p0 n1/r1 v1"),
			step(expectCount(1, "stale", func(s Stats) uint64 { return s.Stale }, 1)),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v1"),
			step(deliver(0)),
			step(expect(1, 0, Exclusive, 1, 0)),
			step(expectIdle()),
		}},
		{"EndHold without an ActHold is ignored", 3, nil, seq(ownedBy1, []tstep{
			step(strayEndHold(1, 0)),
			step(strayEndHold(1, 1)),   // a page this node never held
			step(strayEndHold(1, 999)), // outside the region
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0), "act Hold p0 v1"), // the stray call did not end the hold
			step(strayEndHold(2, 0)),           // nor does one on another node
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
		})},
		{"a forward does not wait for a hold that already ended", 4, nil, seq(sharedBy12, []tstep{
			step(fault(3, 0, Read), "send Request 3->0 p0 r1 read"),
			step(deliver(0), "send FwdRead 0->1 p0 n3/r1 v1"),
			step(deliver(0), "send Data 1->3 p0 n3/r1 v1 needdata"),
			step(deliver(0), "act Install p0 v1 from=1", "send Confirm 3->0 p0 n3/r1 v1"),
			step(deliver(0), "send Done 0->3 p0 n3/r1 v1"),
			step(deliver(0)),
			step(expectIdle()),
		})},
		{"the home's own read copy is held: the upgrade queued behind it waits for EndHold", 2, nil, seq(ownedBy1, []tstep{
			step(fault(0, 0, Read), "send FwdRead 0->1 p0 n0/r1 v1"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->0 p0 n0/r1 v1 needdata"),
			step(fault(1, 0, Write), "send Request 1->0 p0 r2 write have=v1"),
			step(deliver(1)), // queued behind the read: never pipelined behind a reader
			step(deliver(0), "act Install p0 v1 from=1", "act Hold p0 v1"),
			step(expect(0, 0, Shared, 1, 7)),
			step(endHold(0, 0), "act Drop p0 v1", "send Grant 0->1 p0 n1/r2 v2 writable"),
			step(deliver(0), "act Unprotect p0 v2", "send Confirm 1->0 p0 n1/r2 v2"),
			step(deliver(0), "send Done 0->1 p0 n1/r2 v2"),
			step(deliver(0)),
			step(expectIdle()),
		})},
		{"without Hold the home drops its own copy in the batch that installed it", 2, noHold, seq(ownedBy1, []tstep{
			step(fault(0, 0, Read), "send FwdRead 0->1 p0 n0/r1 v1"),
			step(deliver(0), "act Protect p0 v1", "send Data 1->0 p0 n0/r1 v1 needdata"),
			step(fault(1, 0, Write), "send Request 1->0 p0 r2 write have=v1"),
			step(deliver(1)),
			step(deliver(0), "act Install p0 v1 from=1", "act Drop p0 v1", "send Grant 0->1 p0 n1/r2 v2 writable"),
		})},
		{"the home pipelines behind its own write; its install holds the page for its program", 2, nil, seq(ownedBy1[:5], []tstep{
			step(fault(0, 0, Write), "send FwdWrite 0->1 p0 n0/r1 v2"),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->0 p0 n0/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->0 p0 n0/r1 v2"),
			step(fault(1, 0, Write), "send Request 1->0 p0 r2 write"),
			step(deliver(2)), // pipelined: the forward to the home itself waits for the page
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "act Hold p0 v2", "send Release 0->1 p0 v2"),
			step(write(0, 0, 3)),
			step(endHold(0, 0), "act Protect p0 v2", "send Data 0->1 p0 n1/r2 v3 writable needdata",
				"act Drop p0 v2", "send Dropped 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v3 from=0 writable", "send Confirm 1->0 p0 n1/r2 v3"),
			step(deliver(0), "send Done 0->1 p0 n1/r2 v3"),
			step(deliver(0)),
			step(expect(1, 0, Exclusive, 3, 3)),
			step(expectIdle()),
		})},
		{"pipelined: a write queued behind a zero grant goes to the pending owner at once", 3, nil, []tstep{
			step(fault(1, 0, Write), "send Request 1->0 p0 r1 write"),
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v1 writable dropped zero"),
			step(deliver(0), "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(expectDir(0, 0, DirEntry{Busy: true, Requester: 1, Open: 2})),
			step(deliver(1)),
			step(deliver(0), "act Install p0 v1 from=0 writable zero", "send Confirm 1->0 p0 n1/r1 v1", "act Hold p0 v1"),
			step(write(1, 0, 5)),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v1"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(expect(2, 0, Exclusive, 2, 5)),
		}},
		{"without pipelining the home waits for the confirmation; the hold still applies", 3, noPipeline, []tstep{
			step(fault(1, 0, Write), "send Request 1->0 p0 r1 write"),
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v1 writable dropped zero"),
			step(deliver(0)), // node 2's request waits
			step(expectDir(0, 0, DirEntry{Busy: true, Requester: 1, Open: 1, Queue: 1})),
			step(deliver(0), "act Install p0 v1 from=0 writable zero", "send Confirm 1->0 p0 n1/r1 v1"),
			step(write(1, 0, 5)),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v1", "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Hold p0 v1"),
			step(endHold(1, 0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(expect(2, 0, Exclusive, 2, 5)),
		}},
		{"without Hold: one transaction at a time and no hold", 3, noHold, []tstep{
			step(fault(1, 0, Write), "send Request 1->0 p0 r1 write"),
			step(fault(2, 0, Write), "send Request 2->0 p0 r1 write"),
			step(deliver(0), "send Data 0->1 p0 n1/r1 v1 writable dropped zero"),
			step(deliver(0)), // node 2's request waits
			step(expectDir(0, 0, DirEntry{Busy: true, Requester: 1, Open: 1, Queue: 1})),
			step(deliver(0), "act Install p0 v1 from=0 writable zero", "send Confirm 1->0 p0 n1/r1 v1"),
			step(write(1, 0, 5)),
			step(deliver(0), "send Done 0->1 p0 n1/r1 v1", "send FwdWrite 0->1 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Protect p0 v1", "send Data 1->2 p0 n2/r1 v2 writable needdata",
				"act Drop p0 v1", "send Dropped 1->2 p0 n2/r1 v2"),
			step(deliver(0)),
			step(deliver(0), "act Install p0 v2 from=1 writable", "send Confirm 2->0 p0 n2/r1 v2"),
			step(expect(2, 0, Exclusive, 2, 5)),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.nodes, 2, tt.cfg)
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
