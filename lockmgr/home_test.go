package lockmgr

import (
	"fmt"
	"testing"
)

// hstep is one input to a home engine and the messages it must answer with.
type hstep struct {
	msg      *Message // a message to Step, or
	ticks    int      // ticks to advance, or
	peerDown int      // PeerDown(peerDown-1) when > 0
	want     []Message
}

func ack(typ MsgType, to NodeID, name string, client, req, token uint64) Message {
	m := out(typ, to, name, client, req)
	m.Token = token
	return m
}

func rel(from NodeID, name string, client, req, token uint64) *Message {
	return with(in(MsgRelease, from, name, client, req), func(m *Message) { m.Token = token })
}

func renew(from NodeID, name string, client, req, token uint64, stamp int64) *Message {
	return with(in(MsgRenew, from, name, client, req), func(m *Message) { m.Token, m.Stamp = token, stamp })
}

// TestHomeTransitions drives the home side message by message.
func TestHomeTransitions(t *testing.T) {
	const X, S = Exclusive, SharedMode
	tests := []struct {
		name      string
		restarted bool // not FreshStart
		steps     []hstep
	}{
		{name: "exclusive locks are granted in arrival order with increasing tokens", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 5), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 5)}},
			{msg: lockMsg(2, "a", X, 2, 1, 7)},
			{msg: lockMsg(2, "a", X, 3, 4, 8)},
			{msg: rel(1, "a", 1, 1, tok(1, 1)), want: []Message{
				grantMsg(2, "a", X, 2, 1, tok(1, 2), 7), ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			{msg: rel(2, "a", 2, 1, tok(1, 2)), want: []Message{
				grantMsg(2, "a", X, 3, 4, tok(1, 3), 8), ack(MsgReleaseAck, 2, "a", 2, 1, tok(1, 2))}},
		}},
		{name: "readers share and a waiting writer keeps later readers behind it", steps: []hstep{
			{msg: lockMsg(1, "a", S, 1, 1, 0), want: []Message{grantMsg(1, "a", S, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(2, "a", S, 2, 1, 0), want: []Message{grantMsg(2, "a", S, 2, 1, tok(1, 2), 0)}},
			{msg: lockMsg(1, "a", X, 3, 1, 0)},
			{msg: lockMsg(2, "a", S, 4, 1, 0)},
			{msg: rel(1, "a", 1, 1, tok(1, 1)), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			{msg: rel(2, "a", 2, 1, tok(1, 2)), want: []Message{
				grantMsg(1, "a", X, 3, 1, tok(1, 3), 0), ack(MsgReleaseAck, 2, "a", 2, 1, tok(1, 2))}},
			{msg: rel(1, "a", 3, 1, tok(1, 3)), want: []Message{
				grantMsg(2, "a", S, 4, 1, tok(1, 4), 0), ack(MsgReleaseAck, 1, "a", 3, 1, tok(1, 3))}},
		}},
		{name: "a retransmitted granted request renews the lease and gets the same token", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 1), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 1)}},
			{ticks: 10},
			{msg: lockMsg(1, "a", X, 1, 1, 9), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 9)}},
			{msg: lockMsg(2, "a", X, 2, 1, 30)},
			{ticks: 10},
			{msg: lockMsg(2, "a", X, 2, 1, 40)}, // the waiter keeps retransmitting
			{ticks: 1},
			// Expired 12 ticks after the retransmission, not after the grant.
			{ticks: 1, want: []Message{grantMsg(2, "a", X, 2, 1, tok(1, 2), 40)}},
		}},
		{name: "renewals extend the lease; an unknown or expired token is refused", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{ticks: 5},
			{msg: renew(1, "a", 1, 1, tok(1, 1), 4), want: []Message{
				with2(ack(MsgRenewAck, 1, "a", 1, 1, tok(1, 1)), func(m *Message) { m.Stamp = 4 })}},
			{msg: renew(1, "a", 1, 1, tok(1, 9), 4), want: []Message{
				with2(ack(MsgRenewAck, 1, "a", 1, 1, tok(1, 9)), func(m *Message) { m.Code = CodeLeaseExpired })}},
			{msg: lockMsg(2, "a", X, 2, 1, 3)},
			{ticks: 6},
			{msg: lockMsg(2, "a", X, 2, 1, 8)},
			{ticks: 5}, // 5+12 = 17: the renewed lease is over
			{ticks: 1, want: []Message{grantMsg(2, "a", X, 2, 1, tok(1, 2), 8)}},
			{msg: renew(1, "a", 1, 1, tok(1, 1), 16), want: []Message{
				with2(ack(MsgRenewAck, 1, "a", 1, 1, tok(1, 1)), func(m *Message) { m.Code = CodeLeaseExpired })}},
			{msg: lockMsg(1, "a", X, 1, 1, 1)}, // a late copy of the expired request: no ghost
		}},
		{name: "a withdrawn request stays withdrawn when a late copy arrives", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{msg: rel(2, "a", 2, 1, 0), want: []Message{ack(MsgReleaseAck, 2, "a", 2, 1, 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{msg: rel(1, "a", 1, 1, tok(1, 1)), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
			{msg: lockMsg(1, "a", X, 3, 1, 0), want: []Message{grantMsg(1, "a", X, 3, 1, tok(1, 2), 0)}},
		}},
		{name: "a cancel that raced with the grant releases the holder", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: rel(1, "a", 1, 1, 0), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0), want: []Message{grantMsg(2, "a", X, 2, 1, tok(1, 2), 0)}},
		}},
		{name: "a newer request of a client supersedes its old hold", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{msg: lockMsg(1, "a", X, 1, 2, 3), want: []Message{grantMsg(2, "a", X, 2, 1, tok(1, 2), 0)}},
			{msg: lockMsg(1, "a", X, 1, 1, 0)},
			{msg: rel(2, "a", 2, 1, tok(1, 2)), want: []Message{
				grantMsg(1, "a", X, 1, 2, tok(1, 3), 3), ack(MsgReleaseAck, 2, "a", 2, 1, tok(1, 2))}},
		}},
		{name: "a waiter that stops retransmitting is dropped", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{ticks: 11},
			{msg: lockMsg(1, "a", X, 1, 1, 11), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 11)}},
			{ticks: 1},
			{msg: rel(1, "a", 1, 1, tok(1, 1)), want: []Message{ack(MsgReleaseAck, 1, "a", 1, 1, tok(1, 1))}},
		}},
		{name: "a restarted requester's old holds and waits are dropped; its old incarnation is ignored", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(1, "a", X, 3, 1, 0)},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{msg: with(lockMsg(1, "b", X, 1, 1, 0), func(m *Message) { m.Epoch = 2 }), want: []Message{
				grantMsg(2, "a", X, 2, 1, tok(1, 2), 0),
				with2(grantMsg(1, "b", X, 1, 1, tok(1, 3), 0), func(m *Message) { m.PeerEpoch = 2 })}},
			{msg: lockMsg(1, "c", X, 1, 2, 0)},
			{msg: renew(1, "a", 1, 1, tok(1, 1), 1)},
		}},
		{name: "PeerDown drops the node's waiters but keeps its holders until their leases end", steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0), want: []Message{grantMsg(1, "a", X, 1, 1, tok(1, 1), 0)}},
			{msg: lockMsg(1, "a", X, 3, 1, 0)},
			{msg: lockMsg(2, "a", X, 2, 1, 0)},
			{peerDown: 1 + 1},
			{ticks: 11},
			{msg: lockMsg(2, "a", X, 2, 1, 11)},
			{ticks: 1, want: []Message{grantMsg(2, "a", X, 2, 1, tok(1, 2), 11)}},
		}},
		{name: "a restarted home grants nothing until every earlier lease has run out", restarted: true, steps: []hstep{
			{msg: lockMsg(1, "a", X, 1, 1, 0)},
			{msg: renew(1, "b", 1, 7, tok(0, 5), 0), want: []Message{
				with2(ack(MsgRenewAck, 1, "b", 1, 7, tok(0, 5)), func(m *Message) { m.Code = CodeLeaseExpired })}},
			{ticks: 8},
			{msg: lockMsg(1, "a", X, 1, 1, 8)},
			{ticks: 3},
			// It may have forgotten the payload of a release before
			// the restart.
			{ticks: 1, want: []Message{with2(grantMsg(1, "a", X, 1, 1, tok(1, 1), 8), func(m *Message) { m.Flags = FlagPayloadLost })}},
		}},
		{name: "waiting campaigners and queries learn the leader", steps: []hstep{
			{msg: with(lockMsg(1, "e", X, 1, 1, 0), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				with2(grantMsg(1, "e", X, 1, 1, tok(1, 1), 0), func(m *Message) { m.Space = SpaceElection })}},
			{msg: with(lockMsg(2, "e", X, 2, 1, 0), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				{Type: MsgLeader, To: 2, Epoch: 1, PeerEpoch: 1, Space: SpaceElection, Name: "e", Holder: 1, Client: 1, Token: tok(1, 1)}}},
			{msg: &Message{Type: MsgQuery, From: 2, To: 0, Epoch: 1, Space: SpaceElection, Name: "e"}, want: []Message{
				{Type: MsgLeader, To: 2, Epoch: 1, PeerEpoch: 1, Space: SpaceElection, Name: "e", Holder: 1, Client: 1, Token: tok(1, 1)}}},
			{msg: &Message{Type: MsgQuery, From: 2, To: 0, Epoch: 1, Space: SpaceElection, Name: "nobody"}, want: []Message{
				{Type: MsgLeader, To: 2, Epoch: 1, PeerEpoch: 1, Space: SpaceElection, Name: "nobody"}}},
			{msg: with(lockMsg(2, "e", S, 3, 1, 0), func(m *Message) { m.Space = SpaceElection }), want: []Message{
				with2(out(MsgRefuse, 2, "e", 3, 1), func(m *Message) { m.Space, m.Code = SpaceElection, CodeInvalid })}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(0, 3, 0)
			cfg.FreshStart = !tc.restarted
			e := mustNew(t, cfg)
			for i, st := range tc.steps {
				what := fmt.Sprintf("step %d", i)
				switch {
				case st.msg != nil:
					what += fmt.Sprintf(" (%v)", st.msg)
					if err := e.Step(st.msg); err != nil {
						t.Fatalf("%s: %v", what, err)
					}
				case st.peerDown > 0:
					e.PeerDown(NodeID(st.peerDown - 1))
				default:
					for range st.ticks - 1 {
						e.Tick()
						if msgs, _ := e.Ready(); len(msgs) > 0 {
							t.Fatalf("%s: unexpected messages at tick %d:%s", what, e.Now(), fmtMsgs(msgs))
						}
					}
					e.Tick()
					what += fmt.Sprintf(" (tick %d)", e.Now())
				}
				msgs, _ := e.Ready()
				expectMsgs(t, what, msgs, st.want)
			}
		})
	}
}

func with2(m Message, f func(*Message)) Message {
	f(&m)
	return m
}

// TestHomeNotHome: a node refuses requests for names it is not the home of.
func TestHomeNotHome(t *testing.T) {
	e := mustNew(t, testConfig(0, 3, 2))
	if err := e.Step(lockMsg(1, "a", Exclusive, 1, 1, 0)); err != nil {
		t.Fatal(err)
	}
	msgs, _ := e.Ready()
	expectMsgs(t, "lock", msgs, []Message{with2(out(MsgRefuse, 1, "a", 1, 1), func(m *Message) { m.Code = CodeNotHome })})
}
