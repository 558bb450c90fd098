package rc

import (
	"errors"
	"reflect"
	"testing"

	"github.com/dsmrt/dsm/clocks"
)

func TestMessageRoundTrip(t *testing.T) {
	cases := []Message{
		{Kind: MsgFetch, From: 1, To: 2, Page: 7, Seq: 9},
		{Kind: MsgPage, From: 2, To: 1, Page: 7, Seq: 9, Clock: clocks.Vector{1, 0, 3}, Data: []byte{1, 2, 3, 4}},
		{Kind: MsgDiff, From: 1, To: 0, Page: 3, Seq: 4, Interval: 2, Clock: clocks.Vector{0, 2}, Runs: []Run{{Off: 8, Data: []byte{9}}, {Off: 100, Data: []byte{1, 2}}}},
		{Kind: MsgDiffAck, From: 0, To: 1, Page: 3, Seq: 4},
		{Kind: MsgNoticeReq, From: 0, To: 1, Seq: 5, Interval: 3, Upto: 7},
		{Kind: MsgNotices, From: 1, To: 0, Seq: 5, Interval: 3, Upto: 7, Notices: []Notice{{Node: 1, Interval: 4, Pages: []PageID{1, 2}}, {Node: 1, Interval: 6, Pages: []PageID{9}}}},
	}
	for _, m := range cases {
		got, err := UnmarshalMessage(m.Marshal(nil))
		if err != nil {
			t.Fatalf("%v: %v", m.Kind, err)
		}
		if !reflect.DeepEqual(*got, m) {
			t.Fatalf("round trip of %+v gave %+v", m, *got)
		}
		if n := len(m.Marshal(nil)); m.size() != n {
			t.Fatalf("%v: size says %d bytes, the wire form has %d", m.Kind, m.size(), n)
		}
	}
	for _, pl := range []Payload{
		{Clock: clocks.Vector{3, 0, 9}},
		{Clock: clocks.Vector{3, 0, 9}, Notices: []Notice{{Node: 0, Interval: 3, Pages: []PageID{7, 8}}, {Node: 2, Interval: 9, Pages: []PageID{1}}}},
	} {
		b := pl.MarshalPayload()
		got, err := UnmarshalPayload(b)
		if err != nil || !reflect.DeepEqual(got, pl) {
			t.Fatalf("payload round trip: %+v, %v", got, err)
		}
		for n := 1; n < len(b); n++ {
			if _, err := UnmarshalPayload(b[:n]); !errors.Is(err, ErrMalformed) && n != 2+8*len(pl.Clock) {
				t.Fatalf("a payload cut to %d bytes: %v", n, err)
			}
		}
	}
	if got, err := UnmarshalPayload(nil); err != nil || got.Clock != nil {
		t.Fatalf("empty payload: %+v, %v", got, err)
	}
}

func TestMessageMalformed(t *testing.T) {
	good := (&Message{Kind: MsgNotices, From: 1, Notices: []Notice{{Node: 1, Interval: 1, Pages: []PageID{1}}}}).Marshal(nil)
	for n := range len(good) {
		if _, err := UnmarshalMessage(good[:n]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("a message cut to %d bytes: %v", n, err)
		}
	}
	if _, err := UnmarshalMessage(append(good, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a trailing byte: %v", err)
	}
	bad := (&Message{Kind: 99}).Marshal(nil)
	if _, err := UnmarshalMessage(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("kind 99: %v", err)
	}
}

func FuzzUnmarshalMessage(f *testing.F) {
	f.Add((&Message{Kind: MsgDiff, From: 1, Clock: clocks.Vector{1, 2}, Runs: []Run{{Off: 3, Data: []byte{1}}}}).Marshal(nil))
	f.Add((&Message{Kind: MsgNotices, Notices: []Notice{{Node: 1, Interval: 2, Pages: []PageID{3}}}}).Marshal(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		// The same bytes as a payload: decoded or refused, never a panic,
		// and a decoded one encodes back to the same payload.
		if pl, err := UnmarshalPayload(b); err == nil && len(b) > 0 {
			if again, err := UnmarshalPayload(pl.MarshalPayload()); err != nil || !reflect.DeepEqual(again, pl) {
				t.Fatalf("a decoded payload does not decode again: %+v / %+v, %v", pl, again, err)
			}
		}
		m, err := UnmarshalMessage(b)
		if err != nil {
			return
		}
		again, err := UnmarshalMessage(m.Marshal(nil))
		if err != nil {
			t.Fatalf("a decoded message does not decode again: %v", err)
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("re-encoding changed the message: %+v / %+v", m, again)
		}
	})
}
