package net

import (
	"bytes"
	"encoding/binary"
	"testing"

	kcp "github.com/xtaci/kcp-go/v5"
)

// fuzzConv is the KCP conversation the fuzz targets decode against.
const fuzzConv = 0x01020304

// fuzzSeeds are well-formed inputs of every frame type.
func fuzzSeeds() [][]byte {
	h := hello{geometry: testGeometry, flags: helloEchoValid}
	copy(h.nonce[:], "0123456789abcdef")
	copy(h.pub[:], "an ephemeral X25519 public key..")
	copy(h.echo[:], "fedcba9876543210")
	challenge := h
	challenge.flags |= helloLive
	seg := kcpSeg(fuzzConv, kcpCmdPush, 0, 5, []byte("payload"))
	ack := kcpSeg(fuzzConv, kcpCmdAck, 0, 5, nil)
	kcpFrame := appendFrame(nil, frameKCP, append(append([]byte(nil), seg...), ack...))
	fec := func(typ frameType, hd fecHeader, body []byte) []byte {
		b := make([]byte, fecHeaderLen)
		hd.put(b)
		return appendFrame(nil, typ, append(b, body...))
	}
	ping := appendFrame(nil, framePing, binary.BigEndian.AppendUint64(nil, 12345))
	dg := make([]byte, dgOverhead+len(kcpFrame))
	(&dgHeader{kind: kindSession, from: 1, to: 2}).put(dg)
	copy(dg[headerLen:], kcpFrame)
	return [][]byte{
		appendFrame(nil, frameHello, h.append(nil)),
		appendFrame(nil, frameHello, challenge.append(nil)),
		kcpFrame,
		append(append([]byte(nil), ping...), appendFrame(nil, framePong, binary.BigEndian.AppendUint64(nil, 1))...),
		appendFrame(nil, frameBye, nil),
		fec(frameFECData, fecHeader{group: 3, index: 1, data: 4, parity: 2}, kcpFrame),
		fec(frameFECParity, fecHeader{group: 3, index: 0, data: 2, parity: 2}, bytes.Repeat([]byte{7}, 40)),
		append([]byte{ProtocolVersion, msgFinal}, "message"...),
		appendBatched(appendBatched([]byte{ProtocolVersion, msgBatch}, []byte("request")), nil),
		dg,
	}
}

// FuzzDecodeFrame feeds arbitrary bytes to every decoder that sees what a
// peer sends: datagram headers, frames, hellos, session payloads (KCP
// segments, pings, FEC shards, which also go through a FEC decoder) and
// message headers. None may panic, and what decodes must re-encode to the
// same bytes.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := decodeHeader(b); err == nil {
			out := make([]byte, headerLen)
			h.put(out)
			if !bytes.Equal(out, b[:headerLen]) {
				t.Fatalf("header %x re-encodes as %x", b[:headerLen], out)
			}
		}
		if typ, body, err := decodeMsgHeader(b); err == nil && typ == msgBatch {
			// What splits re-encodes to the same body.
			if msgs, err := splitBatch(body, nil); err == nil {
				var out []byte
				for _, m := range msgs {
					out = appendBatched(out, m)
				}
				if !bytes.Equal(out, body) && !hasOverlongUvarint(body) {
					t.Fatalf("batch %x re-encodes as %x", body, out)
				}
			}
		}
		rest := b
		for len(rest) > 0 {
			fr, r, err := decodeFrame(rest)
			if err != nil {
				break
			}
			if got := appendFrame(nil, fr.typ, fr.body); !bytes.Equal(got, rest[:len(rest)-len(r)]) {
				t.Fatalf("frame %x re-encodes as %x", rest[:len(rest)-len(r)], got)
			}
			if fr.typ == frameHello {
				if m, err := decodeHello(fr.body); err == nil && !bytes.Equal(m.append(nil), fr.body) {
					t.Fatalf("hello %x re-encodes differently", fr.body)
				}
			}
			rest = r
		}
		var p payload
		err := decodePayload(b, fuzzConv, &p, false)
		if err == nil && len(p.kcp) > 0 {
			// What passes scanKCP must be safe for KCP itself.
			k := kcp.NewKCP(fuzzConv, func([]byte, int) {})
			k.NoDelay(1, kcpInterval, kcpResend, 1)
			k.WndSize(kcpSndWnd, kcpRcvWnd)
			k.SetMtu(kcpMaxMTU)
			for _, seg := range p.kcp {
				if rc := k.Input(seg, kcp.IKCP_PACKET_REGULAR, false); rc < 0 {
					t.Fatalf("kcp rejected a frame scanKCP accepted: code %d", rc)
				}
			}
			for n := k.PeekSize(); n >= 0; n = k.PeekSize() {
				if k.Recv(make([]byte, n)) != n {
					t.Fatal("kcp returned a short message")
				}
			}
			kcpFlush(k, kcp.IKCP_FLUSH_FULL)
		}
		if err == nil && p.isFEC {
			d := newFECDecoder()
			var rebuilt [][]byte
			if p.parity {
				rebuilt, _ = d.addParity(p.fec, p.shard)
			} else {
				rebuilt, _ = d.addData(p.fec, p.shard)
			}
			for _, s := range rebuilt {
				decodePayload(s, fuzzConv, &p, true)
			}
		}
	})
}

// FuzzDecodePage checks that DecodePage never panics and that whatever it
// accepts re-encodes to a page that decodes the same.
func FuzzDecodePage(f *testing.F) {
	for _, page := range testPages(4096) {
		f.Add(EncodePage(nil, page))
		f.Add(EncodePageUncompressed(nil, page))
	}
	f.Add([]byte{pageS2, 0x80, 0x20, 0, 1, 2})
	f.Fuzz(func(t *testing.T, enc []byte) {
		dst := make([]byte, 4096)
		if err := DecodePage(dst, enc); err != nil {
			return
		}
		again := make([]byte, 4096)
		if err := DecodePage(again, EncodePage(nil, dst)); err != nil || !bytes.Equal(again, dst) {
			t.Fatalf("accepted page does not survive re-encoding: %v", err)
		}
	})
}

// hasOverlongUvarint reports whether a batch body spells a length with
// more bytes than it needs (binary.Uvarint accepts such forms, which then
// re-encode shorter).
func hasOverlongUvarint(body []byte) bool {
	for len(body) > 0 {
		l, k := binary.Uvarint(body)
		if k <= 0 {
			return false
		}
		if k != len(binary.AppendUvarint(nil, l)) {
			return true
		}
		body = body[k+int(l):]
	}
	return false
}
