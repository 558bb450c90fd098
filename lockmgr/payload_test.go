package lockmgr

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// relP is a release of an exclusive hold that hands payload on.
func relP(from NodeID, name string, client, req, token uint64, payload string) *Message {
	return with(rel(from, name, client, req, token), func(m *Message) { m.Mode, m.Payload = Exclusive, []byte(payload) })
}

// grantP is grantMsg carrying payload.
func grantP(to NodeID, name string, mode Mode, client, req, token uint64, stamp int64, payload string) Message {
	m := grantMsg(to, name, mode, client, req, token, stamp)
	if payload != "" {
		m.Payload = []byte(payload)
	}
	return m
}

// TestHomePayloads drives a home message by message: it keeps the payload
// of the exclusive release with the largest token, hands it on with every
// grant, and ignores copies, earlier releases and tokens it never granted.
func TestHomePayloads(t *testing.T) {
	const X, S = Exclusive, SharedMode
	tests := []struct {
		name  string
		steps []hstep
	}{
		{"a release's payload goes to the next holder, also after the lock was free", []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{msg: relP(1, "a", 1, 1, tok(1, 1), "p1"), want: []Message{
				grantP(2, "a", X, 2, 1, tok(1, 2), 0, "p1"), ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			// A release without a payload hands nothing new on.
			{msg: rel(2, "a", 2, 1, tok(1, 2)), want: []Message{ack(MsgReleaseAck, 2, "a", 2, 1, tok(1, 2))}},
			{msg: lockMsg(1, "a", X, 3, 1, 0), want: []Message{grantP(1, "a", X, 3, 1, tok(1, 3), 0, "p1")}},
			{msg: relP(1, "a", 3, 1, tok(1, 3), "p3"), want: []Message{ack(MsgReleaseAck, 1, "a", 3, 1, tok(1, 3))}},
			// Readers get it; their own releases hand nothing on.
			{msg: lockMsg(2, "a", S, 4, 1, 0), want: []Message{grantP(2, "a", S, 4, 1, tok(1, 4), 0, "p3")}},
			{msg: relP(2, "a", 4, 1, tok(1, 4), "reader"), want: []Message{ack(MsgReleaseAck, 2, "a", 4, 1, tok(1, 4))}},
			{msg: lockMsg(2, "a", X, 5, 1, 0), want: []Message{grantP(2, "a", X, 5, 1, tok(1, 5), 0, "p3")}},
		}},
		{"copies and late earlier releases do not replace a later payload", []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: relP(1, "a", 1, 1, tok(1, 1), "p1"), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			{msg: lockMsg(2, "a", X, 2, 1, 0), want: []Message{grantP(2, "a", X, 2, 1, tok(1, 2), 0, "p1")}},
			{msg: relP(2, "a", 2, 1, tok(1, 2), "p2"), want: []Message{ack(MsgReleaseAck, 2, "a", 2, 1, tok(1, 2))}},
			{msg: relP(1, "a", 1, 1, tok(1, 1), "p1"), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			// Tokens this home never granted, of this epoch or a later one.
			{msg: relP(1, "a", 1, 2, tok(1, 99), "bogus"), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 2, tok(1, 99))}},
			{msg: relP(1, "a", 1, 3, tok(2, 1), "future"), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 3, tok(2, 1))}},
			{msg: lockMsg(2, "a", X, 3, 1, 0), want: []Message{grantP(2, "a", X, 3, 1, tok(1, 3), 0, "p2")}},
		}},
		{"regrants and grants after a lease ran out carry the payload; a late release still counts", []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: relP(1, "a", 1, 1, tok(1, 1), "p1"), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			{msg: lockMsg(1, "a", X, 2, 1, 1), want: []Message{grantP(1, "a", X, 2, 1, tok(1, 2), 1, "p1")}},
			{msg: lockMsg(1, "a", X, 2, 1, 2), want: []Message{grantP(1, "a", X, 2, 1, tok(1, 2), 2, "p1")}},
			{msg: lockMsg(2, "a", X, 3, 1, 2)},
			{ticks: tHoL - 1},
			{msg: lockMsg(2, "a", X, 3, 1, 13)},
			{ticks: 1, want: []Message{grantP(2, "a", X, 3, 1, tok(1, 3), 13, "p1")}},
			// Client 2's release was too late for the grant, but it is
			// the latest hold released with a payload.
			{msg: relP(1, "a", 2, 1, tok(1, 2), "p2 late"), want: []Message{ack(MsgReleaseAck, 1, "a", 2, 1, tok(1, 2))}},
			{msg: lockMsg(2, "a", X, 3, 1, 14), want: []Message{grantP(2, "a", X, 3, 1, tok(1, 3), 14, "p2 late")}},
		}},
		{"elections hand nothing on", []hstep{
			{msg: with(lockMsg(1, "e", X, 1, 1, 0), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				with2(grantMsg(1, "e", X, 1, 1, tok(1, 1), 0), func(m *Message) { m.Space = SpaceElection })}},
			{msg: with(relP(1, "e", 1, 1, tok(1, 1), "p"), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				with2(ack(MsgReleaseAck, 1, "e", 1, 1, tok(1, 1)), func(m *Message) { m.Space = SpaceElection })}},
			{msg: with(lockMsg(1, "e", X, 2, 1, 0), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				with2(grantMsg(1, "e", X, 2, 1, tok(1, 2), 0), func(m *Message) { m.Space = SpaceElection })}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := mustNew(t, testConfig(0, 3, 0))
			for i, st := range tc.steps {
				what := fmt.Sprintf("step %d", i)
				if st.msg != nil {
					what += fmt.Sprintf(" (%v)", st.msg)
					step(t, e, st.msg)
				} else {
					for range st.ticks {
						e.Tick()
					}
				}
				msgs, _ := e.Ready()
				expectMsgs(t, what, msgs, st.want)
			}
		})
	}
}

// TestLockPayloadThroughEngines: UnlockWithPayload hands the payload to
// the next holder's Granted event, through the codec, from remote and
// local homes; a shared hold's payload is not even sent.
func TestLockPayloadThroughEngines(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 0 })
	a, b, home := c.engs[1], c.engs[2], c.engs[0]
	a.Lock("x", Exclusive, 1, 1)
	c.run()
	if g := grantOf(t, c.take()); g.Payload != nil || g.PayloadLost {
		t.Fatalf("first grant %v: want no payload", g)
	}
	b.Lock("x", Exclusive, 2, 1)
	c.run()
	payload := []byte("vector clock and notices")
	if err := a.UnlockWithPayload("x", 1, 0, payload); err != nil {
		t.Fatal(err)
	}
	payload[0] = 'V' // the engine copied it
	c.run()
	if g := grantOf(t, c.take()); g.Client != 2 || string(g.Payload) != "vector clock and notices" {
		t.Fatalf("grant %v payload %q: want client 2 with the payload", g, g.Payload)
	}
	if err := b.UnlockWithPayload("x", 2, 0, []byte("from b")); err != nil {
		t.Fatal(err)
	}
	c.run()
	home.Lock("x", SharedMode, 3, 1) // a local grant
	c.run()
	if g := grantOf(t, c.take()); string(g.Payload) != "from b" {
		t.Fatalf("local shared grant %v payload %q, want %q", g, g.Payload, "from b")
	}
	if err := home.UnlockWithPayload("x", 3, 0, []byte("reader")); err != nil {
		t.Fatal(err)
	}
	// The release of a remote shared hold carries no payload.
	a.Lock("x", SharedMode, 1, 2)
	c.run()
	c.take()
	if err := a.UnlockWithPayload("x", 1, 0, []byte("reader")); err != nil {
		t.Fatal(err)
	}
	msgs, _ := a.Ready()
	if r := ofType(msgs, MsgRelease); len(r) != 1 || r[0].Payload != nil || r[0].Mode != 0 {
		t.Fatalf("release of a shared hold: %s", fmtMsgs(msgs))
	}
	c.queue = append(c.queue, msgs...)
	c.run()
	b.Lock("x", Exclusive, 2, 2)
	c.run()
	if g := grantOf(t, c.take()); string(g.Payload) != "from b" {
		t.Fatalf("grant %v payload %q, want the last writer's %q", g, g.Payload, "from b")
	}
}

// TestLockPayloadTooLarge: a payload over MaxPayload is refused and the
// lock stays held; one of MaxPayload bytes travels whole.
func TestLockPayloadTooLarge(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[1].Lock("x", Exclusive, 1, 1)
	c.run()
	c.take()
	big := bytes.Repeat([]byte{7}, MaxPayload+1)
	if err := c.engs[1].UnlockWithPayload("x", 1, 0, big); !errors.Is(err, ErrPayloadTooLarge) {
		t.Fatalf("error %v, want ErrPayloadTooLarge", err)
	}
	if _, ok := c.engs[1].Holding("x", 1); !ok {
		t.Fatal("the refused release let go of the lock")
	}
	if err := c.engs[1].UnlockWithPayload("x", 1, 0, big[:MaxPayload]); err != nil {
		t.Fatal(err)
	}
	c.engs[0].Lock("x", Exclusive, 2, 1)
	c.run()
	if g := grantOf(t, c.take()); !bytes.Equal(g.Payload, big[:MaxPayload]) {
		t.Fatalf("grant carries %d bytes, want %d", len(g.Payload), MaxPayload)
	}
}

// TestCachedLockPayload: a cached lock given back after a recall hands its
// payload on like any release, together with the last token it used.
func TestCachedLockPayload(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 1 })
	c.engs[0].LockCached("x", 1, 1)
	c.run()
	g := grantOf(t, c.take())
	c.engs[1].Lock("x", Exclusive, 2, 1)
	c.run()
	c.take() // Recalled
	if err := c.engs[0].UnlockWithPayload("x", 1, g.Token+2, []byte("cached writes")); err != nil {
		t.Fatal(err)
	}
	c.run()
	g2 := grantOf(t, c.take())
	if g2.Client != 2 || string(g2.Payload) != "cached writes" || g2.Token != g.Token+3 {
		t.Fatalf("grant %v payload %q: want client 2, token %#x, the cached holder's payload", g2, g2.Payload, g.Token+3)
	}
}

// TestPayloadLostAfterHomeRestart: a restarted home flags its grants as
// possibly missing a payload until it keeps one released under a token of
// its own incarnation; a payload from before the restart does not end that.
func TestPayloadLostAfterHomeRestart(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	cfg := testConfig(0, 2, 0)
	cfg.Epoch, cfg.FreshStart = 2, false
	c.engs[0] = mustNew(t, cfg)
	// A release of a hold granted by the old incarnation arrives late.
	step(t, c.engs[0], &Message{Type: MsgRelease, From: 1, To: 0, Epoch: 1, Space: SpaceLock, Mode: Exclusive,
		Name: "x", Client: 9, Req: 1, Token: tok(1, 4), Payload: []byte("old")})
	c.engs[0].Ready()
	c.engs[1].Lock("x", Exclusive, 1, 1)
	c.tick(tHoL + 1)
	g := grantOf(t, c.take())
	if !g.PayloadLost || string(g.Payload) != "old" {
		t.Fatalf("grant %v payload %q: want the old payload, flagged lost", g, g.Payload)
	}
	if err := c.engs[1].UnlockWithPayload("x", 1, 0, []byte("new")); err != nil {
		t.Fatal(err)
	}
	c.run()
	c.engs[1].Lock("x", Exclusive, 1, 2)
	c.run()
	if g := grantOf(t, c.take()); g.PayloadLost || string(g.Payload) != "new" {
		t.Fatalf("grant %v payload %q: want the new payload, not flagged", g, g.Payload)
	}
}

// TestBarrierPayloads: every participant gets all arrivals' payloads in
// participant order, once each however often arrivals are retransmitted;
// a copy of an arrival after completion is answered with them again.
func TestBarrierPayloads(t *testing.T) {
	c := newTestNet(t, 3, func(string) NodeID { return 1 })
	c.engs[2].BarrierWithPayload("b", 3, 30, 1, []byte("from 2"))
	c.engs[0].BarrierWithPayload("b", 3, 10, 1, []byte("from 0"))
	c.run()
	c.tick(tRetry * 3) // retransmissions
	c.engs[1].Barrier("b", 3, 20, 1)
	c.run()
	evs := c.take()
	want := [][]byte{[]byte("from 0"), nil, []byte("from 2")}
	if len(evs) != 3 {
		t.Fatalf("want 3 BarrierDone, got%s", fmtEvents(evs))
	}
	for _, ev := range evs {
		if ev.Kind != BarrierDone || !slices.EqualFunc(ev.Payloads, want, bytes.Equal) {
			t.Fatalf("%v payloads %q, want %q", ev, ev.Payloads, want)
		}
	}
	step(t, c.engs[1], &Message{Type: MsgArrive, From: 0, To: 1, Epoch: 1, Space: SpaceBarrier, Name: "b",
		Client: 10, Req: 1, Count: 3, Payload: []byte("from 0")})
	msgs, _ := c.engs[1].Ready()
	if len(msgs) != 1 || msgs[0].Type != MsgBarrierDone || !slices.EqualFunc(msgs[0].Payloads, want, bytes.Equal) {
		t.Fatalf("answer to a copy of a completed arrival:%s", fmtMsgs(msgs))
	}
	// A generation without payloads carries none.
	for i, n := range []NodeID{0, 1, 2} {
		c.engs[n].Barrier("b", 3, uint64(10*(i+1)), 2)
	}
	c.run()
	for _, ev := range c.take() {
		if ev.Kind != BarrierDone || ev.Payloads != nil {
			t.Fatalf("%v payloads %q, want none", ev, ev.Payloads)
		}
	}
}

// TestBarrierPayloadTooLarge: an arrival's payload over MaxPayload is
// refused at once; one that would take its generation's payloads past
// MaxBarrierPayload is refused by the home, and the others still complete.
func TestBarrierPayloadTooLarge(t *testing.T) {
	c := newTestNet(t, 2, func(string) NodeID { return 0 })
	c.engs[1].BarrierWithPayload("b", 2, 1, 1, make([]byte, MaxPayload+1))
	if _, evs := c.engs[1].Ready(); len(evs) != 1 || !errors.Is(evs[0].Err, ErrPayloadTooLarge) {
		t.Fatalf("want Refused with ErrPayloadTooLarge, got%s", fmtEvents(evs))
	}
	e := mustNew(t, testConfig(0, 2, 0))
	full := make([]byte, MaxPayload)
	const n = MaxBarrierPayload / MaxPayload
	arrive := func(client uint64, payload []byte) []Message {
		step(t, e, &Message{Type: MsgArrive, From: 1, To: 0, Epoch: 1, Space: SpaceBarrier, Name: "b",
			Client: client, Req: 1, Count: n + 1, Payload: payload})
		msgs, _ := e.Ready()
		return msgs
	}
	for i := range n {
		if msgs := arrive(uint64(i+1), full); len(msgs) != 0 {
			t.Fatalf("arrival %d:%s", i, fmtMsgs(msgs))
		}
	}
	if msgs := arrive(n+1, []byte{1}); len(msgs) != 1 || msgs[0].Code != CodePayloadTooLarge {
		t.Fatalf("arrival past the limit:%s", fmtMsgs(msgs))
	}
	msgs := arrive(n+2, nil)
	if len(msgs) != n+1 || msgs[0].Type != MsgBarrierDone || len(msgs[0].Payloads) != n+1 {
		t.Fatalf("want %d BarrierDone with %d payloads, got %d messages", n+1, n+1, len(msgs))
	}
	if _, err := UnmarshalMessage(msgs[0].AppendBinary(nil)); err != nil {
		t.Fatalf("the largest BarrierDone does not decode: %v", err)
	}
}
