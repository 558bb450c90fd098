package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestDecodeFrame(t *testing.T) {
	good := appendFrame(nil, frameKCP, []byte("abc"))
	tests := []struct {
		name    string
		in      []byte
		wantErr bool
		typ     frameType
		body    string
		rest    int
	}{
		{"whole frame", good, false, frameKCP, "abc", 0},
		{"frame and more", append(append([]byte(nil), good...), 1, 2), false, frameKCP, "abc", 2},
		{"empty body", appendFrame(nil, frameBye, nil), false, frameBye, "", 0},
		{"empty input", nil, true, 0, "", 0},
		{"short header", good[:5], true, 0, "", 0},
		{"truncated body", good[:len(good)-1], true, 0, "", 0},
		{"bad version", append([]byte{ProtocolVersion + 1}, good[1:]...), true, 0, "", 0},
		{"type zero", append([]byte{ProtocolVersion, 0}, good[2:]...), true, 0, "", 0},
		{"unknown type", append([]byte{ProtocolVersion, 99}, good[2:]...), true, 0, "", 0},
		{"huge length", []byte{ProtocolVersion, 2, 0xff, 0xff, 0xff, 0xff, 0}, true, 0, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, rest, err := decodeFrame(tc.in)
			if tc.wantErr {
				if err == nil || !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.typ != tc.typ || string(f.body) != tc.body || len(rest) != tc.rest {
				t.Errorf("got %v %q rest %d, want %v %q rest %d", f.typ, f.body, len(rest), tc.typ, tc.body, tc.rest)
			}
		})
	}
}

func TestHelloRoundTrip(t *testing.T) {
	m := hello{geometry: testGeometry, flags: helloEchoValid | helloUp}
	copy(m.nonce[:], "0123456789abcdef")
	copy(m.pub[:], "an ephemeral X25519 public key..")
	copy(m.echo[:], "fedcba9876543210")
	b := m.append(nil)
	if len(b) != helloLen {
		t.Fatalf("hello encodes to %d bytes, want %d", len(b), helloLen)
	}
	got, err := decodeHello(b)
	if err != nil || got != m {
		t.Fatalf("decodeHello = %+v, %v; want %+v", got, err, m)
	}
	if _, err := decodeHello(b[:len(b)-1]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short hello: %v", err)
	}
	bad := append([]byte(nil), b...)
	bad[len(bad)-1] = 0x80
	if _, err := decodeHello(bad); !errors.Is(err, ErrMalformed) {
		t.Errorf("hello with unknown flags: %v", err)
	}
	for _, f := range []uint8{helloUp, helloLive, helloEchoValid | helloUp | helloLive} {
		bad[len(bad)-1] = f
		if _, err := decodeHello(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("hello with flags %#x: %v, want ErrMalformed", f, err)
		}
	}
}

func TestDecodeHeader(t *testing.T) {
	h := dgHeader{kind: kindSession, from: 3, to: 4}
	binary.BigEndian.PutUint32(h.nonce[:], 0xdeadbeef)
	binary.BigEndian.PutUint64(h.nonce[4:], 42)
	b := make([]byte, dgOverhead)
	h.put(b)
	got, err := decodeHeader(b)
	if err != nil || got != h {
		t.Fatalf("decodeHeader = %+v, %v; want %+v", got, err, h)
	}
	if sid, ctr := got.session(); sid != 0xdeadbeef || ctr != 42 {
		t.Errorf("session() = %#x, %d", sid, ctr)
	}
	for _, bad := range [][]byte{b[:dgOverhead-1], append([]byte{0}, b[1:]...), append([]byte{ProtocolVersion, 3}, b[2:]...)} {
		if _, err := decodeHeader(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("decodeHeader(%x) = %v, want ErrMalformed", bad[:2], err)
		}
	}
}

// kcpSeg encodes one KCP segment.
func kcpSeg(conv uint32, cmd, frg byte, sn uint32, data []byte) []byte {
	b := make([]byte, kcpOverhead, kcpOverhead+len(data))
	binary.LittleEndian.PutUint32(b, conv)
	b[4], b[5] = cmd, frg
	binary.LittleEndian.PutUint32(b[12:], sn)
	binary.LittleEndian.PutUint32(b[20:], uint32(len(data)))
	return append(b, data...)
}

func TestScanKCP(t *testing.T) {
	const conv = 7
	push := kcpSeg(conv, kcpCmdPush, 0, 1, []byte("hello"))
	ack := kcpSeg(conv, kcpCmdAck, 0, 1, nil)
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"push", push, true},
		{"push and ack", append(append([]byte(nil), push...), ack...), true},
		{"empty", nil, false},
		{"trailing bytes", append(append([]byte(nil), ack...), 1, 2, 3), false},
		{"other conversation", kcpSeg(conv+1, kcpCmdAck, 0, 1, nil), false},
		{"unknown command", kcpSeg(conv, 99, 0, 1, nil), false},
		{"too many fragments", kcpSeg(conv, kcpCmdPush, kcpMaxFrags, 1, []byte("x")), false},
		{"segment too large", kcpSeg(conv, kcpCmdPush, 0, 1, make([]byte, kcpMaxSegData+1)), false},
		{"truncated", push[:len(push)-1], false},
	}
	for _, tc := range tests {
		push, err := scanKCP(tc.in, conv)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("%s: scanKCP = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if wantPush := tc.name == "push" || tc.name == "push and ack"; err == nil && push != wantPush {
			t.Errorf("%s: scanKCP reports data segments = %v", tc.name, push)
		}
	}
}

func TestDecodePayload(t *testing.T) {
	const conv = 9
	ping := binary.BigEndian.AppendUint64(nil, 77)
	seg := kcpSeg(conv, kcpCmdPush, 0, 0, []byte("data"))
	inner := appendFrame(nil, frameKCP, seg)
	fecData := func(idx byte, content []byte) []byte {
		body := make([]byte, fecHeaderLen)
		fecHeader{group: 1, index: idx, data: 2, parity: 1}.put(body)
		return appendFrame(nil, frameFECData, append(body, content...))
	}
	var p payload
	in := append(appendFrame(nil, framePing, ping), inner...)
	in = append(in, appendFrame(nil, frameBye, nil)...)
	if err := decodePayload(in, conv, &p, false); err != nil {
		t.Fatal(err)
	}
	if len(p.pings) != 1 || p.pings[0] != 77 || len(p.kcp) != 1 || !bytes.Equal(p.kcp[0], seg) || !p.bye || !p.push || p.isFEC {
		t.Errorf("decoded %+v", p)
	}
	if err := decodePayload(fecData(1, inner), conv, &p, false); err != nil {
		t.Fatal(err)
	}
	if !p.isFEC || p.parity || p.fec.index != 1 || !bytes.Equal(p.shard, inner) || len(p.kcp) != 1 {
		t.Errorf("fec data shard decoded as %+v", p)
	}
	bad := map[string][]byte{
		"empty":              nil,
		"hello in session":   appendFrame(nil, frameHello, make([]byte, helloLen)),
		"short ping":         appendFrame(nil, framePing, []byte{1}),
		"bye with body":      appendFrame(nil, frameBye, []byte{1}),
		"fec not alone":      append(fecData(0, inner), inner...),
		"fec after frame":    append(append([]byte(nil), inner...), fecData(0, inner)...),
		"nested fec":         fecData(0, fecData(0, inner)),
		"fec index too high": fecData(2, inner),
		"bad kcp in shard":   fecData(0, appendFrame(nil, frameKCP, []byte{1, 2})),
	}
	for name, in := range bad {
		if err := decodePayload(in, conv, &p, false); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: decodePayload = %v, want ErrMalformed", name, err)
		}
	}
}

func TestDecodeMsgHeader(t *testing.T) {
	for _, tc := range []struct {
		in  []byte
		typ byte
		ok  bool
	}{
		{[]byte{ProtocolVersion, msgFinal, 'x'}, msgFinal, true},
		{[]byte{ProtocolVersion, msgPart}, msgPart, true},
		{[]byte{ProtocolVersion, msgBatch, 1, 'x'}, msgBatch, true},
		{[]byte{ProtocolVersion}, 0, false},
		{[]byte{ProtocolVersion + 1, msgFinal}, 0, false},
		{[]byte{ProtocolVersion, 9}, 0, false},
	} {
		typ, _, err := decodeMsgHeader(tc.in)
		if (err == nil) != tc.ok || (tc.ok && typ != tc.typ) {
			t.Errorf("decodeMsgHeader(%v) = %v, %v", tc.in, typ, err)
		}
	}
}

func TestSplitBatch(t *testing.T) {
	var body []byte
	want := [][]byte{[]byte("request"), {}, bytes.Repeat([]byte{7}, 300)}
	for _, m := range want {
		body = appendBatched(body, m)
	}
	got, err := splitBatch(body, [][]byte{[]byte("before")})
	if err != nil || len(got) != 4 || string(got[0]) != "before" {
		t.Fatalf("splitBatch = %q, %v", got, err)
	}
	for i, m := range want {
		if !bytes.Equal(got[i+1], m) {
			t.Errorf("message %d = %q, want %q", i, got[i+1], m)
		}
	}
	// A handler appending to one message must not write over the next.
	if cap(got[1]) != len(got[1]) {
		t.Errorf("a batched message has capacity %d beyond its %d bytes", cap(got[1]), len(got[1]))
	}
	for name, in := range map[string][]byte{
		"empty batch":       nil,
		"length past end":   {5, 'a', 'b'},
		"second past end":   append(appendBatched(nil, []byte("ok")), 9, 1),
		"truncated uvarint": {0x80},
		"overlong uvarint":  bytes.Repeat([]byte{0xff}, 11),
		"huge length":       {0xff, 0xff, 0xff, 0xff, 0x0f, 1},
	} {
		msgs, err := splitBatch(in, [][]byte{[]byte("before")})
		if !errors.Is(err, ErrMalformed) || len(msgs) != 1 {
			t.Errorf("%s: splitBatch = %d messages, %v; want only the one before, ErrMalformed", name, len(msgs), err)
		}
	}
}

func TestReplayWindow(t *testing.T) {
	var w replayWindow
	steps := []struct {
		ctr uint64
		ok  bool
	}{
		{0, true}, {0, false}, {2, true}, {1, true}, {1, false}, {2, false},
		{5000, true}, {5000 - replayWindowSize + 1, true}, {5000 - replayWindowSize, false},
		{4999, true}, {4999, false}, {3, false}, {1 << 40, true}, {5000, false}, {^uint64(0), false},
	}
	for i, s := range steps {
		if got := w.check(s.ctr); got != s.ok {
			t.Fatalf("step %d: check(%d) = %v, want %v", i, s.ctr, got, s.ok)
		}
	}
}

func TestDeriveSessionSymmetric(t *testing.T) {
	o1, err := newOffer()
	if err != nil {
		t.Fatal(err)
	}
	o2, err := newOffer()
	if err != nil {
		t.Fatal(err)
	}
	a, err := deriveSession(testKey, 1, 2, &o1, o2.nonce, o2.pub)
	if err != nil {
		t.Fatal(err)
	}
	b, err := deriveSession(testKey, 2, 1, &o2, o1.nonce, o1.pub)
	if err != nil {
		t.Fatal(err)
	}
	if a.sid != b.sid {
		t.Fatalf("session ids differ: %#x vs %#x", a.sid, b.sid)
	}
	nonce := make([]byte, 12)
	sealed := a.send.Seal(nil, nonce, []byte("hi"), nil)
	if pt, err := b.recv.Open(nil, nonce, sealed, nil); err != nil || string(pt) != "hi" {
		t.Fatalf("b cannot open a's datagram: %v", err)
	}
	if _, err := a.recv.Open(nil, nonce, sealed, nil); err == nil {
		t.Fatal("a's own receive key opens what a sent: the directions share a key")
	}
	if a.sendID == b.sendID {
		t.Fatal("both directions have the same key identity")
	}
	// A replayed peer offer (same nonce, same public key) against a new
	// offer of this node: new keys.
	o1b, err := newOffer()
	if err != nil {
		t.Fatal(err)
	}
	o1b.nonce = o1.nonce // even with the nonce kept, the ephemeral key is new
	c, err := deriveSession(testKey, 1, 2, &o1b, o2.nonce, o2.pub)
	if err != nil {
		t.Fatal(err)
	}
	if c.sendID == a.sendID || c.sid == a.sid {
		t.Error("a new ephemeral key kept the session keys")
	}
	n2 := o2.nonce
	n2[0] ^= 1
	d, err := deriveSession(testKey, 1, 2, &o1, n2, o2.pub)
	if err != nil {
		t.Fatal(err)
	}
	if d.sid == a.sid || d.sendID == a.sendID {
		t.Error("a new nonce kept the session keys")
	}
	// A low-order public key would make the shared secret public.
	if _, err := deriveSession(testKey, 1, 2, &o1, o2.nonce, [32]byte{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("all-zero public key: %v, want ErrMalformed", err)
	}
}
