package net

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Test pages: zero, text-like, structured (sparse integers, as in arrays of
// small records), random, and zero but for one byte.
func testPages(size int) map[string][]byte {
	rng := rand.New(rand.NewSource(1))
	words := []string{"the", "page", "fault", "node", "memory", "shared", "directory", "owner", "copy", "set", "version", "lock"}
	text := make([]byte, 0, size)
	for len(text) < size {
		text = append(text, words[rng.Intn(len(words))]...)
		text = append(text, ' ')
	}
	structured := make([]byte, size)
	for i := 0; i+16 <= size; i += 16 {
		structured[i], structured[i+4], structured[i+8] = byte(i/16), 1, byte(i)
	}
	random := make([]byte, size)
	rng.Read(random)
	lastByte := make([]byte, size)
	lastByte[size-1] = 1
	return map[string][]byte{
		"zero": make([]byte, size), "text": text[:size], "structured": structured,
		"random": random, "last byte set": lastByte,
	}
}

func TestPageCodecRoundTrip(t *testing.T) {
	for _, size := range []int{4096, 16384} {
		for name, page := range testPages(size) {
			for _, enc := range []struct {
				name string
				f    func(dst, page []byte) []byte
			}{{"EncodePage", EncodePage}, {"EncodePageUncompressed", EncodePageUncompressed}} {
				prefix := []byte("prefix")
				b := enc.f(append([]byte(nil), prefix...), page)
				if !bytes.HasPrefix(b, prefix) {
					t.Fatalf("%s %s: dst prefix clobbered", enc.name, name)
				}
				b = b[len(prefix):]
				got := make([]byte, size)
				for i := range got {
					got[i] = 0xaa // DecodePage must overwrite everything
				}
				if err := DecodePage(got, b); err != nil {
					t.Fatalf("%s %s/%d: %v", enc.name, name, size, err)
				}
				if !bytes.Equal(got, page) {
					t.Fatalf("%s %s/%d: round trip differs", enc.name, name, size)
				}
				switch {
				case name == "zero" && len(b) != 1:
					t.Errorf("%s: zero page encodes to %d bytes, want 1", enc.name, len(b))
				case name == "random" && len(b) != size+1:
					t.Errorf("%s: random page encodes to %d bytes, want raw (%d)", enc.name, len(b), size+1)
				case enc.name == "EncodePage" && (name == "text" || name == "structured") && len(b) > size*3/4:
					t.Errorf("%s page compressed to only %d of %d bytes", name, len(b), size)
				}
				t.Logf("%s %s/%d: %d bytes", enc.name, name, size, len(b))
			}
		}
	}
}

func TestDecodePageErrors(t *testing.T) {
	page := testPages(4096)["text"]
	comp := EncodePage(nil, page)
	if comp[0] != pageS2 {
		t.Fatalf("text page not compressed (flag %d)", comp[0])
	}
	corrupt := append([]byte(nil), comp...)
	for i := len(corrupt) / 2; i < len(corrupt); i++ {
		corrupt[i] ^= 0x5a
	}
	tests := map[string]struct {
		dst, enc []byte
	}{
		"empty":                {make([]byte, 4096), nil},
		"unknown flag":         {make([]byte, 4096), []byte{7}},
		"zero with body":       {make([]byte, 4096), []byte{pageZero, 1}},
		"raw too short":        {make([]byte, 4096), append([]byte{pageRaw}, page[:100]...)},
		"raw for larger page":  {make([]byte, 8192), EncodePageUncompressed(nil, page)},
		"s2 for larger page":   {make([]byte, 8192), comp},
		"s2 truncated":         {make([]byte, 4096), comp[:len(comp)/2]},
		"s2 corrupt":           {make([]byte, 4096), corrupt},
		"s2 bad length varint": {make([]byte, 4096), []byte{pageS2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
	}
	for name, tc := range tests {
		if err := DecodePage(tc.dst, tc.enc); !errors.Is(err, ErrCorruptPage) {
			t.Errorf("%s: DecodePage = %v, want ErrCorruptPage", name, err)
		}
	}
}

// BenchmarkPageCodec measures the candidates for page compression on 4 KiB
// pages; it is how EncodePage's choice of s2 over zstd was made.
func BenchmarkPageCodec(b *testing.B) {
	zenc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true))
	if err != nil {
		b.Fatal(err)
	}
	zdec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		b.Fatal(err)
	}
	defer zdec.Close()
	for _, name := range []string{"zero", "text", "structured", "random"} {
		page := testPages(4096)[name]
		dst := make([]byte, 0, 8192)
		out := make([]byte, 4096)
		b.Run("s2/encode/"+name, func(b *testing.B) {
			var n int
			for b.Loop() {
				n = len(EncodePage(dst[:0], page))
			}
			b.ReportMetric(float64(n), "bytes")
		})
		enc := EncodePage(nil, page)
		b.Run("s2/decode/"+name, func(b *testing.B) {
			for b.Loop() {
				if err := DecodePage(out, enc); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("zstd/encode/"+name, func(b *testing.B) {
			var n int
			for b.Loop() {
				n = len(zenc.EncodeAll(page, dst[:0]))
			}
			b.ReportMetric(float64(n), "bytes")
		})
		z := zenc.EncodeAll(page, nil)
		b.Run("zstd/decode/"+name, func(b *testing.B) {
			for b.Loop() {
				if _, err := zdec.DecodeAll(z, out[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
