package lockmgr

import (
	"errors"
	"fmt"
	"testing"
)

// TestBarrierHundredPhases: one barrier name serves 100 phases of three
// participants on three nodes; nobody completes a phase before the last
// one arrives, all complete it with the same generation, and generations
// increase.
func TestBarrierHundredPhases(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 1 })
	var last uint64
	for phase := range 100 {
		req := uint64(phase + 1)
		// Arrive in a different order each phase.
		for i := range 3 {
			n := (phase + i) % 3
			c.engs[n].Barrier("b", 3, uint64(10+n), req)
			c.run()
			c.tick(1 + phase%3)
			if i < 2 {
				if evs := c.take(); len(evs) != 0 {
					t.Fatalf("phase %d: events before everyone arrived:%s", phase, fmtEvents(evs))
				}
			}
		}
		evs := c.take()
		if len(evs) != 3 {
			t.Fatalf("phase %d: want 3 BarrierDone, got%s", phase, fmtEvents(evs))
		}
		gen := evs[0].Generation
		for _, ev := range evs {
			if ev.Kind != BarrierDone || ev.Generation != gen || ev.Req != req {
				t.Fatalf("phase %d: %v (generation %#x)", phase, ev, gen)
			}
		}
		if gen <= last {
			t.Fatalf("phase %d: generation %#x after %#x", phase, gen, last)
		}
		last = gen
	}
	if b := c.engs[1].Barriers(); len(b) != 1 || b[0].Generation != tok(1, 101) || b[0].Arrived != 0 {
		t.Fatalf("barrier status %+v", b)
	}
}

// TestBarrierHome drives a barrier's home message by message.
func TestBarrierHome(t *testing.T) {
	arrive := func(from NodeID, client, req uint64, count uint32, gen uint64) *Message {
		return &Message{Type: MsgArrive, From: from, To: 0, Epoch: 1, Space: SpaceBarrier, Name: "b",
			Client: client, Req: req, Count: count, Gen: gen}
	}
	done := func(to NodeID, client, req, gen uint64) Message {
		return Message{Type: MsgBarrierDone, To: to, Epoch: 1, PeerEpoch: 1, Space: SpaceBarrier, Name: "b",
			Client: client, Req: req, Gen: gen}
	}
	refuse := func(to NodeID, client, req uint64, code Code) Message {
		return Message{Type: MsgRefuse, To: to, Epoch: 1, PeerEpoch: 1, Space: SpaceBarrier, Name: "b",
			Client: client, Req: req, Code: code}
	}
	g1, g2 := tok(1, 1), tok(1, 2)
	tests := []struct {
		name  string
		steps []hstep
	}{
		{"copies of an arrival count once", []hstep{
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: arrive(2, 2, 1, 2, 0), want: []Message{done(1, 1, 1, g1), done(2, 2, 1, g1)}},
			// A late copy of a completed arrival is answered again, and
			// does not count in the next generation.
			{msg: arrive(1, 1, 1, 2, 0), want: []Message{done(1, 1, 1, g1)}},
			{msg: arrive(2, 2, 2, 2, g1)},
			{msg: arrive(1, 1, 1, 2, 0), want: []Message{done(1, 1, 1, g1)}},
			{msg: arrive(1, 1, 2, 2, g1), want: []Message{done(1, 1, 2, g2), done(2, 2, 2, g2)}},
		}},
		{"a newer arrival of a client replaces its older one", []hstep{
			{msg: arrive(1, 1, 1, 3, 0)},
			{msg: arrive(1, 1, 2, 3, 0)},
			{msg: arrive(2, 2, 1, 3, 0)},
			{msg: arrive(1, 1, 1, 3, 0)},
			{msg: arrive(2, 3, 1, 3, 0), want: []Message{done(1, 1, 2, g1), done(2, 2, 1, g1), done(2, 3, 1, g1)}},
		}},
		{"a withdrawn arrival does not count, even when a copy comes late", []hstep{
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: &Message{Type: MsgLeave, From: 1, To: 0, Epoch: 1, Space: SpaceBarrier, Name: "b", Client: 1, Req: 1},
				want: []Message{{Type: MsgLeaveAck, To: 1, Epoch: 1, PeerEpoch: 1, Space: SpaceBarrier, Name: "b", Client: 1, Req: 1}}},
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: arrive(2, 2, 1, 2, 0)},
			{msg: arrive(2, 3, 1, 2, 0), want: []Message{done(2, 2, 1, g1), done(2, 3, 1, g1)}},
		}},
		{"an exited client's late arrivals never count", []hstep{
			{msg: &Message{Type: MsgLeave, From: 1, To: 0, Epoch: 1, Space: SpaceBarrier, Name: "b", Client: 1, Req: 4, Flags: FlagFinal},
				want: []Message{{Type: MsgLeaveAck, To: 1, Epoch: 1, PeerEpoch: 1, Space: SpaceBarrier, Name: "b", Client: 1, Req: 4, Flags: FlagFinal}}},
			{msg: arrive(1, 1, 9, 2, 0)},
			{msg: arrive(2, 2, 1, 2, 0)},
			{msg: arrive(2, 3, 1, 2, 0), want: []Message{done(2, 2, 1, g1), done(2, 3, 1, g1)}},
		}},
		{"a count that differs from the waiting participants' is refused", []hstep{
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: arrive(2, 2, 1, 3, 0), want: []Message{refuse(2, 2, 1, CodeCountMismatch)}},
			{msg: arrive(2, 2, 1, 3, 0)}, // a late copy of the refused arrival
			{msg: arrive(2, 2, 2, 2, 0), want: []Message{done(1, 1, 1, g1), done(2, 2, 2, g1)}},
			{msg: arrive(2, 2, 1, 3, 0)},
			{msg: arrive(2, 2, 3, 3, g1)}, // a new generation may change the count
			{msg: arrive(1, 1, 2, 3, g1)},
			{msg: arrive(2, 3, 1, 3, 0), want: []Message{done(1, 1, 2, g2), done(2, 2, 3, g2), done(2, 3, 1, g2)}},
		}},
		{"a generation of an earlier incarnation of the home is lost", []hstep{
			{msg: arrive(1, 1, 1, 2, tok(0, 7)), want: []Message{refuse(1, 1, 1, CodeBarrierLost)}},
		}},
		{"a node's restart withdraws its old arrivals", []hstep{
			{msg: arrive(1, 1, 1, 2, 0)},
			{msg: with(arrive(1, 1, 1, 2, 0), func(m *Message) { m.Epoch = 2 })},
			{msg: arrive(2, 2, 1, 2, 0), want: []Message{
				with2(done(1, 1, 1, g1), func(m *Message) { m.PeerEpoch = 2 }), done(2, 2, 1, g1)}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := mustNew(t, testConfig(0, 3, 0))
			for i, st := range tc.steps {
				step(t, e, st.msg)
				msgs, _ := e.Ready()
				expectMsgs(t, fmt.Sprintf("step %d (%v)", i, st.msg), msgs, st.want)
			}
		})
	}
}

// TestBarrierHomeRestart: participants that completed a generation with an
// earlier incarnation of the home are refused by the new one.
func TestBarrierHomeRestart(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[0].Barrier("b", 2, 1, 1)
	c.engs[1].Barrier("b", 2, 2, 1)
	c.run()
	if evs := c.take(); len(evs) != 2 {
		t.Fatalf("want two BarrierDone, got%s", fmtEvents(evs))
	}
	cfg := testConfig(0, 2, 0)
	cfg.Epoch, cfg.FreshStart = 2, false
	c.engs[0] = mustNew(t, cfg)
	c.engs[1].Barrier("b", 2, 2, 2)
	c.run()
	evs := c.take()
	if len(evs) != 1 || evs[0].Kind != Refused || !errors.Is(evs[0].Err, ErrBarrierLost) {
		t.Fatalf("want Refused with ErrBarrierLost, got%s", fmtEvents(evs))
	}
	// A fresh name works.
	c.engs[1].Barrier("b2", 1, 2, 3)
	c.run()
	if evs := c.take(); len(evs) != 1 || evs[0].Kind != BarrierDone || evs[0].Generation != tok(2, 1) {
		t.Fatalf("want BarrierDone in generation %#x, got%s", tok(2, 1), fmtEvents(evs))
	}
}

// TestElection: one leader at a time, known to every node; resigning or
// exiting hands over to the next campaigner with a larger token.
func TestElection(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 0 })
	c.engs[1].Campaign("e", 11, 1)
	c.run()
	c.engs[2].Campaign("e", 22, 1)
	c.run()
	evs := c.take()
	wantEvents(t, "campaigns", evs, "Granted:11:1")
	first := evs[0].Token
	for n, e := range c.engs {
		info, ok := e.Leader("e")
		c.run()
		if !ok || info.Node != 1 || info.Client != 11 || info.Token != first {
			t.Fatalf("node %d: Leader = %+v, %v; want node 1 client 11", n, info, ok)
		}
	}
	if _, ok := c.engs[1].Holding("e", 11); ok {
		t.Fatal("an election is visible as a lock of the same name")
	}
	if err := c.engs[1].Resign("e", 11); err != nil {
		t.Fatal(err)
	}
	c.run()
	evs = c.take()
	wantEvents(t, "resign", evs, "Granted:22:1")
	if evs[0].Token <= first {
		t.Fatalf("new leader's token %#x is not above %#x", evs[0].Token, first)
	}
	// Node 1 learns the news when its own is old enough to ask again.
	c.tick(tRenew)
	c.engs[1].Leader("e")
	c.run()
	if info, ok := c.engs[1].Leader("e"); !ok || info.Node != 2 || info.Client != 22 {
		t.Fatalf("node 1: Leader = %+v, %v; want node 2 client 22", info, ok)
	}
	c.engs[2].ReleaseClient(22)
	c.run()
	if info, ok := c.engs[0].Leader("e"); ok {
		t.Fatalf("leader %+v after the leader exited", info)
	}
}

// TestHomeRestart: when the home of a lock dies and restarts, its old
// holder loses the lock before the new incarnation grants it again, with a
// token of the higher epoch.
func TestHomeRestart(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 0 })
	c.engs[1].Lock("a", Exclusive, 1, 1)
	c.run()
	evs := c.take()
	wantEvents(t, "lock", evs, "Granted:1:1")
	old := evs[0].Token
	// The home dies; the holder can no longer renew.
	c.down[0] = true
	c.engs[2].Lock("a", Exclusive, 2, 1)
	c.tick(3)
	cfg := testConfig(0, 3, 0)
	cfg.Epoch, cfg.FreshStart = 2, false
	c.engs[0] = mustNew(t, cfg)
	c.down[0] = false
	lostAt := int64(-1)
	for range 3 * tHoL {
		c.tick(1)
		_, h1 := c.engs[1].Holding("a", 1)
		_, h2 := c.engs[2].Holding("a", 2)
		if h1 && h2 {
			t.Fatalf("two holders at tick %d", c.engs[1].Now())
		}
		for _, ev := range c.take() {
			switch {
			case ev.Kind == Lost && ev.Client == 1:
				lostAt = c.engs[1].Now()
			case ev.Kind == Granted && ev.Client == 2:
				if lostAt < 0 {
					t.Fatalf("granted to client 2 before client 1 lost the lock")
				}
				if ev.Token>>32 != 2 || ev.Token <= old {
					t.Fatalf("token %#x of the new incarnation is not above %#x", ev.Token, old)
				}
				if c.engs[0].Now() < tHoL {
					t.Fatalf("granted at tick %d of the restarted home, before its recovery wait", c.engs[0].Now())
				}
				return
			default:
				t.Fatalf("unexpected %v", ev)
			}
		}
	}
	t.Fatal("the lock was never granted again")
}

// TestNoStarvation: a writer waiting behind readers is granted even though
// readers keep coming; readers that arrive after it wait for it.
func TestNoStarvation(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 0 })
	req := map[uint64]uint64{}
	lock := func(n int, client uint64, mode Mode) {
		req[client]++
		c.engs[n].Lock("a", mode, client, req[client])
		c.run()
	}
	lock(1, 1, SharedMode)
	lock(2, 2, SharedMode)
	lock(1, 3, Exclusive)
	wantEvents(t, "start", c.take(), "Granted:1:1", "Granted:2:1")
	writerDone := false
	for round := range 6 {
		// The readers take turns releasing and coming back.
		client := uint64(1 + round%2)
		if _, ok := c.engs[client].Holding("a", client); ok {
			if err := c.engs[client].Unlock("a", client); err != nil {
				t.Fatal(err)
			}
			c.run()
		}
		lock(int(client), client, SharedMode)
		for _, ev := range c.take() {
			if ev.Client == 3 && ev.Kind == Granted {
				writerDone = true
				if _, ok := c.engs[1].Holding("a", 1); ok {
					t.Fatal("writer granted beside a reader")
				}
				if err := c.engs[1].Unlock("a", 3); err != nil {
					t.Fatal(err)
				}
				c.run()
			} else if ev.Kind == Granted && !writerDone {
				t.Fatalf("reader %d overtook the waiting writer", ev.Client)
			}
		}
	}
	if !writerDone {
		t.Fatal("the writer starved")
	}
}

// TestLocksStatus reports holders and waiters of the locks homed here.
func TestLocksStatus(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[1].Lock("a", SharedMode, 1, 1)
	c.run()
	c.engs[0].Lock("a", Exclusive, 2, 1)
	c.run()
	c.tick(2)
	ls := c.engs[0].Locks()
	if len(ls) != 1 {
		t.Fatalf("Locks() = %+v", ls)
	}
	s := ls[0]
	if s.Name != "a" || s.Space != SpaceLock || s.Mode != SharedMode || len(s.Holders) != 1 || len(s.Waiters) != 1 {
		t.Fatalf("status %+v", s)
	}
	h, w := s.Holders[0], s.Waiters[0]
	if h.Node != 1 || h.Client != 1 || h.Token != tok(1, 1) || h.LeaseLeft <= 0 || h.LeaseLeft > tHoL {
		t.Fatalf("holder %+v", h)
	}
	if w.Node != 0 || w.Client != 2 || w.Mode != Exclusive {
		t.Fatalf("waiter %+v", w)
	}
	if ls := c.engs[1].Locks(); len(ls) != 0 {
		t.Fatalf("node 1 homes nothing, lists %+v", ls)
	}
}
