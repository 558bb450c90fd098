package lockmgr

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// reqEngine is requester node 1 of 3; names are homed on node 0.
func reqEngine(t *testing.T) *Engine { return mustNew(t, testConfig(1, 3, 0)) }

// reply builds a message of home 0 to requester 1.
func reply(typ MsgType, name string, client, req, token uint64, stamp int64) *Message {
	return &Message{Type: typ, From: 0, To: 1, Epoch: 1, PeerEpoch: 1, Space: SpaceLock, Name: name,
		Client: client, Req: req, Token: token, Stamp: stamp, Mode: Exclusive}
}

func step(t *testing.T, e *Engine, m *Message) {
	t.Helper()
	if err := e.Step(m); err != nil {
		t.Fatalf("Step(%v): %v", m, err)
	}
}

// ofType returns the messages of type typ.
func ofType(msgs []Message, typ MsgType) []Message {
	var out []Message
	for _, m := range msgs {
		if m.Type == typ {
			out = append(out, m)
		}
	}
	return out
}

// tickUntil ticks e up to tick n, collecting outputs.
func tickUntil(e *Engine, n int64) (msgs []Message, evs []Event) {
	for e.Now() < n {
		e.Tick()
		m, ev := e.Ready()
		msgs, evs = append(msgs, m...), append(evs, ev...)
	}
	return msgs, evs
}

func wantEvents(t *testing.T, what string, got []Event, want ...string) {
	t.Helper()
	if g := evKinds(got); !slices.Equal(g, want) {
		t.Fatalf("%s: events%s\nwant %v", what, fmtEvents(got), want)
	}
}

// TestLeaseCountsFromSend: the holder's lease runs from when it sent the
// request the home answered, however late the grant arrives; a grant too
// old to prove a live lease is confirmed with a renewal first.
func TestLeaseCountsFromSend(t *testing.T) {
	for _, delay := range []int64{0, 3, tHL - 1, tHL, tHL + 4} {
		e := reqEngine(t)
		e.Lock("a", Exclusive, 7, 1)
		msgs, _ := e.Ready()
		if l := ofType(msgs, MsgLock); len(l) != 1 || l[0].Stamp != 0 {
			t.Fatalf("delay %d: want one MsgLock with stamp 0, got%s", delay, fmtMsgs(msgs))
		}
		tickUntil(e, delay)
		step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 1), 0))
		msgs, evs := e.Ready()
		if delay < tHL {
			wantEvents(t, "grant", evs, "Granted:7:1")
			if evs[0].Token != tok(1, 1) {
				t.Fatalf("delay %d: token %#x", delay, evs[0].Token)
			}
			// Believed until exactly stamp + HolderLeaseTicks.
			_, evs = tickUntil(e, tHL-1)
			if _, ok := e.Holding("a", 7); !ok || len(evs) != 0 {
				t.Fatalf("delay %d: not holding at tick %d (events%s)", delay, e.Now(), fmtEvents(evs))
			}
			msgs, evs = tickUntil(e, tHL)
			if _, ok := e.Holding("a", 7); ok {
				t.Fatalf("delay %d: still holding at tick %d, the lease was sent at 0", delay, e.Now())
			}
			wantEvents(t, "expiry", evs, "Lost:7:1")
			if !errors.Is(evs[0].Err, ErrLeaseExpired) {
				t.Fatalf("delay %d: Lost with %v", delay, evs[0].Err)
			}
			if r := ofType(msgs, MsgRelease); len(r) != 1 || r[0].Token != tok(1, 1) {
				t.Fatalf("delay %d: want a release of the expired hold, got%s", delay, fmtMsgs(msgs))
			}
			continue
		}
		// Too late: confirm with a renewal stamped now.
		wantEvents(t, "stale grant", evs)
		r := ofType(msgs, MsgRenew)
		if len(r) != 1 || r[0].Stamp != delay || r[0].Token != tok(1, 1) {
			t.Fatalf("delay %d: want a renewal stamped %d, got%s", delay, delay, fmtMsgs(msgs))
		}
		if _, ok := e.Holding("a", 7); ok {
			t.Fatalf("delay %d: holding before the renewal was answered", delay)
		}
		tickUntil(e, delay+2)
		step(t, e, reply(MsgRenewAck, "a", 7, 1, tok(1, 1), delay))
		_, evs = e.Ready()
		wantEvents(t, "confirmed", evs, "Granted:7:1")
		if _, evs := tickUntil(e, delay+tHL-1); len(evs) != 0 {
			t.Fatalf("delay %d: events before the confirmed lease ended%s", delay, fmtEvents(evs))
		}
		if _, evs = tickUntil(e, delay+tHL); len(evs) != 1 || evs[0].Kind != Lost {
			t.Fatalf("delay %d: want Lost at %d, got%s", delay, delay+tHL, fmtEvents(evs))
		}
	}
}

// TestRenewal: renewals go out every RenewTicks stamped with the send
// time; an answered renewal extends the lease from its stamp; a refused one
// ends it.
func TestRenewal(t *testing.T) {
	e := reqEngine(t)
	e.Lock("a", Exclusive, 7, 1)
	step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 1), 0))
	e.Ready()
	msgs, _ := tickUntil(e, tRenew)
	r := ofType(msgs, MsgRenew)
	if len(r) != 1 || r[0].Stamp != tRenew || r[0].Token != tok(1, 1) || r[0].To != 0 {
		t.Fatalf("want one renewal at tick %d, got%s", tRenew, fmtMsgs(msgs))
	}
	tickUntil(e, tRenew+2)
	step(t, e, reply(MsgRenewAck, "a", 7, 1, tok(1, 1), tRenew))
	// A late copy of an older answer changes nothing.
	step(t, e, reply(MsgRenewAck, "a", 7, 1, tok(1, 1), 0))
	if _, evs := tickUntil(e, tRenew+tHL-1); len(evs) != 0 {
		t.Fatalf("events while the renewed lease lasts%s", fmtEvents(evs))
	}
	if _, ok := e.Holding("a", 7); !ok {
		t.Fatal("not holding before the renewed lease ends")
	}
	_, evs := tickUntil(e, tRenew+tHL)
	wantEvents(t, "renewed lease ends", evs, "Lost:7:1")

	e = reqEngine(t)
	e.Lock("a", Exclusive, 7, 1)
	step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 1), 0))
	e.Ready()
	step(t, e, reply(MsgRenewAck, "a", 7, 1, tok(1, 2), 0)) // another token: ignored
	if _, ok := e.Holding("a", 7); !ok {
		t.Fatal("an answer about another token ended the hold")
	}
	m := reply(MsgRenewAck, "a", 7, 1, tok(1, 1), 0)
	m.Code = CodeLeaseExpired
	step(t, e, m)
	_, evs = e.Ready()
	wantEvents(t, "refused renewal", evs, "Lost:7:1")
	if _, ok := e.Holding("a", 7); ok {
		t.Fatal("holding after the home refused the renewal")
	}
}

// TestCancel: Cancel withdraws a waiting request, releases a grant that won
// the race, and gives back grants that arrive afterwards.
func TestCancel(t *testing.T) {
	tests := []struct {
		name      string
		grant     int64 // stamp of a grant delivered before Cancel (-1: none)
		barrier   bool
		wantEvent string
		wantErr   error
		wantMsg   Message
	}{
		{name: "waiting", grant: -1, wantEvent: "Refused:7:1", wantErr: ErrCanceled,
			wantMsg: Message{Type: MsgRelease, From: 1, To: 0, Epoch: 1, Space: SpaceLock, Name: "a", Client: 7, Req: 1}},
		{name: "granted and announced", grant: 0, wantEvent: "Lost:7:1", wantErr: ErrCanceled,
			wantMsg: Message{Type: MsgRelease, From: 1, To: 0, Epoch: 1, Space: SpaceLock, Name: "a", Client: 7, Req: 1, Token: tok(1, 1)}},
		{name: "granted, not yet confirmed", grant: -tHL, wantEvent: "Refused:7:1", wantErr: ErrCanceled,
			wantMsg: Message{Type: MsgRelease, From: 1, To: 0, Epoch: 1, Space: SpaceLock, Name: "a", Client: 7, Req: 1, Token: tok(1, 1)}},
		{name: "barrier arrival", barrier: true, wantEvent: "Refused:7:1", wantErr: ErrCanceled,
			wantMsg: Message{Type: MsgLeave, From: 1, To: 0, Epoch: 1, Space: SpaceBarrier, Name: "a", Client: 7, Req: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := reqEngine(t)
			if tc.barrier {
				e.Barrier("a", 2, 7, 1)
			} else {
				e.Lock("a", Exclusive, 7, 1)
			}
			if tc.grant != -1 {
				tickUntil(e, tHL)
				step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 1), tHL+tc.grant))
			}
			e.Ready()
			e.Cancel("a", 7, 1)
			msgs, evs := e.Ready()
			wantEvents(t, "cancel", evs, tc.wantEvent)
			if !errors.Is(evs[0].Err, tc.wantErr) {
				t.Fatalf("error %v, want %v", evs[0].Err, tc.wantErr)
			}
			expectMsgs(t, "cancel", msgs, []Message{tc.wantMsg})
			// Canceling again, or a finished request, does nothing.
			e.Cancel("a", 7, 1)
			if msgs, evs := e.Ready(); len(msgs)+len(evs) != 0 {
				t.Fatalf("second Cancel: %s%s", fmtMsgs(msgs), fmtEvents(evs))
			}
			if tc.barrier {
				return
			}
			// The release is retransmitted until acknowledged.
			msgs, _ = tickUntil(e, e.Now()+2*tRetry)
			if len(ofType(msgs, MsgRelease)) == 0 {
				t.Fatalf("release not retransmitted:%s", fmtMsgs(msgs))
			}
			step(t, e, reply(MsgReleaseAck, "a", 7, 1, tc.wantMsg.Token, 0))
			if msgs, _ = tickUntil(e, e.Now()+3*tRetry); len(msgs) != 0 {
				t.Fatalf("messages after the ack:%s", fmtMsgs(msgs))
			}
			// A grant still in flight is given back, not reported.
			step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 2), e.Now()))
			msgs, evs = e.Ready()
			wantEvents(t, "late grant", evs)
			expectMsgs(t, "late grant", msgs, []Message{{Type: MsgRelease, From: 1, To: 0, Epoch: 1,
				Space: SpaceLock, Name: "a", Client: 7, Req: 1, Token: tok(1, 2)}})
		})
	}
}

// TestBadRequests: misuse is refused with an error that says what is
// wrong.
func TestBadRequests(t *testing.T) {
	tests := []struct {
		name string
		do   func(e *Engine) error // returns Unlock's error, or nil for event-reporting calls
		want error
	}{
		{"empty name", func(e *Engine) error { e.Lock("", Exclusive, 1, 1); return nil }, ErrInvalid},
		{"long name", func(e *Engine) error { e.Lock(strings.Repeat("x", MaxNameLen+1), Exclusive, 1, 1); return nil }, ErrInvalid},
		{"request id 0", func(e *Engine) error { e.Lock("a", Exclusive, 1, 0); return nil }, ErrInvalid},
		{"request id not increasing", func(e *Engine) error {
			e.Lock("a", Exclusive, 1, 5)
			e.Ready()
			e.Lock("b", Exclusive, 1, 5)
			return nil
		}, ErrInvalid},
		{"bad mode", func(e *Engine) error { e.Lock("a", Mode(9), 1, 1); return nil }, ErrInvalid},
		{"second request for the same lock", func(e *Engine) error {
			e.Lock("a", Exclusive, 1, 1)
			e.Ready()
			e.Lock("a", SharedMode, 1, 2)
			return nil
		}, ErrBusy},
		{"second campaign", func(e *Engine) error {
			e.Campaign("a", 1, 1)
			e.Ready()
			e.Campaign("a", 1, 2)
			return nil
		}, ErrBusy},
		{"barrier count 0", func(e *Engine) error { e.Barrier("a", 0, 1, 1); return nil }, ErrInvalid},
		{"second barrier call", func(e *Engine) error {
			e.Barrier("a", 2, 1, 1)
			e.Ready()
			e.Barrier("a", 2, 1, 2)
			return nil
		}, ErrBusy},
		{"unlock without lock", func(e *Engine) error { return e.Unlock("a", 1) }, ErrNotHeld},
		{"unlock while waiting", func(e *Engine) error { e.Lock("a", Exclusive, 1, 1); return e.Unlock("a", 1) }, ErrNotHeld},
		{"resign without leading", func(e *Engine) error { return e.Resign("a", 1) }, ErrNotHeld},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := reqEngine(t)
			err := tc.do(e)
			if err == nil {
				_, evs := e.Ready()
				if len(evs) != 1 || evs[0].Kind != Refused {
					t.Fatalf("want one Refused event, got%s", fmtEvents(evs))
				}
				err = evs[0].Err
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// TestPeerDown: requests and holds on names homed on a dead node end at
// once; the rest is untouched.
func TestPeerDown(t *testing.T) {
	cfg := testConfig(1, 3, 0)
	cfg.Home = func(name string) NodeID { return map[string]NodeID{"a": 0, "b": 0, "c": 2}[name] }
	e := mustNew(t, cfg)
	e.Lock("a", Exclusive, 7, 1)
	e.Lock("b", Exclusive, 8, 1)
	e.Lock("c", Exclusive, 9, 1)
	e.Barrier("a", 3, 10, 1)
	step(t, e, reply(MsgGrant, "b", 8, 1, tok(1, 1), 0))
	e.Ready()
	e.PeerDown(0)
	_, evs := e.Ready()
	wantEvents(t, "PeerDown", evs, "Refused:7:1", "Lost:8:1", "Refused:10:1")
	for _, ev := range evs {
		if !errors.Is(ev.Err, ErrHomeDown) {
			t.Fatalf("%v: want ErrHomeDown", ev)
		}
	}
	if _, ok := e.Holding("b", 8); ok {
		t.Fatal("still holding a lock homed on a dead node")
	}
	if len(e.reqs) != 1 || e.reqs[localKey{lockKey{SpaceLock, "c"}, 9}] == nil {
		t.Fatalf("the request homed on node 2 was touched: %v", e.reqs)
	}
}

// TestReleaseClient: an exited client's holds are released, its waits and
// barrier arrivals withdrawn, silently; grants that arrive later are given
// back.
func TestReleaseClient(t *testing.T) {
	e := reqEngine(t)
	e.Lock("a", Exclusive, 7, 1)
	e.Lock("b", SharedMode, 7, 2)
	e.Barrier("c", 2, 7, 3)
	e.Lock("a", Exclusive, 8, 1)
	step(t, e, reply(MsgGrant, "a", 7, 1, tok(1, 1), 0))
	e.Ready()
	e.ReleaseClient(7)
	msgs, evs := e.Ready()
	wantEvents(t, "ReleaseClient", evs)
	base := Message{From: 1, To: 0, Epoch: 1, Client: 7}
	expectMsgs(t, "ReleaseClient", msgs, []Message{
		with2(base, func(m *Message) { m.Type, m.Space, m.Name, m.Req, m.Token = MsgRelease, SpaceLock, "a", 1, tok(1, 1) }),
		with2(base, func(m *Message) { m.Type, m.Space, m.Name, m.Req = MsgRelease, SpaceLock, "b", 2 }),
		with2(base, func(m *Message) { m.Type, m.Space, m.Name, m.Req, m.Flags = MsgLeave, SpaceBarrier, "c", 3, FlagFinal }),
	})
	step(t, e, reply(MsgGrant, "b", 7, 2, tok(1, 2), 0))
	msgs, evs = e.Ready()
	wantEvents(t, "late grant", evs)
	if r := ofType(msgs, MsgRelease); len(r) != 1 || r[0].Token != tok(1, 2) {
		t.Fatalf("late grant not given back:%s", fmtMsgs(msgs))
	}
	if _, ok := e.reqs[localKey{lockKey{SpaceLock, "a"}, 8}]; !ok {
		t.Fatal("another client's request was dropped")
	}
}

// TestRetryJitter: retransmissions come RetryTicks to 1.5*RetryTicks apart,
// drawn from the seeded source only: the same seed gives the same schedule.
func TestRetryJitter(t *testing.T) {
	schedule := func(seed uint64) []int64 {
		cfg := testConfig(1, 3, 0)
		cfg.RetryTicks = 8
		cfg.HolderLeaseTicks, cfg.HomeLeaseTicks = 20, 24
		cfg.Rand = rand.New(rand.NewPCG(seed, 0))
		e := mustNew(t, cfg)
		e.Lock("a", Exclusive, 1, 1)
		var at []int64
		for e.Now() < 400 {
			msgs, _ := e.Ready()
			for range ofType(msgs, MsgLock) {
				at = append(at, e.Now())
			}
			e.Tick()
		}
		return at
	}
	a, b, c := schedule(1), schedule(1), schedule(2)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different schedules:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Fatalf("different seeds, same schedule %v: no jitter", a)
	}
	gaps := make(map[int64]bool)
	for i := 1; i < len(a); i++ {
		g := a[i] - a[i-1]
		if g < 8 || g > 12 {
			t.Fatalf("retransmission gap %d, want 8 to 12: %v", g, a)
		}
		gaps[g] = true
	}
	if len(gaps) < 3 {
		t.Fatalf("gaps %v barely vary", gaps)
	}
}
