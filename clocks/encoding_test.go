package clocks

import (
	"bytes"
	"errors"
	"math"
	"math/rand"
	"reflect"
	"testing"
)

func TestEncodingRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(4))
	vectors := []Vector{
		{}, {0}, {1, 2, 3}, {math.MaxUint64, 0, 127, 128, 16383, 16384},
		NewVector(MaxVectorLen),
	}
	for i := 0; i < 1000; i++ {
		v := make(Vector, r.Intn(40))
		for j := range v {
			v[j] = r.Uint64() >> uint(r.Intn(64))
		}
		vectors = append(vectors, v)
	}
	trailer := []byte{0xde, 0xad}
	for _, v := range vectors {
		prefix := []byte{9, 9}
		b := v.AppendBinary(prefix)
		if !bytes.Equal(b[:2], prefix) {
			t.Fatalf("AppendBinary clobbered the prefix")
		}
		enc := b[2:]
		got, n, err := DecodeVector(append(enc, trailer...))
		if err != nil {
			t.Fatalf("DecodeVector(%v encoded) failed: %v", v, err)
		}
		if n != len(enc) {
			t.Fatalf("DecodeVector consumed %d bytes, encoding is %d", n, len(enc))
		}
		if !reflect.DeepEqual(got, v) {
			t.Fatalf("round trip: got %v, want %v", got, v)
		}
	}
}

func TestEncodingSize(t *testing.T) {
	// Small clocks cost one byte per entry plus the count.
	v := Vector{1, 2, 3, 4, 5, 6, 7, 8}
	if got := len(v.AppendBinary(nil)); got != 9 {
		t.Errorf("8 small entries encode to %d bytes, want 9", got)
	}
}

func TestDecodeVectorErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty input", nil, ErrTruncated},
		{"count varint cut", []byte{0x80}, ErrTruncated},
		{"missing entries", []byte{3, 1, 2}, ErrTruncated},
		{"entry varint cut", []byte{2, 1, 0x80}, ErrTruncated},
		{"huge count few bytes", []byte{0xff, 0xff, 0x03}, ErrTruncated},
		{"count over limit", []byte{0x81, 0x80, 0x04}, ErrTooLong}, // 65537
		{"count overflows", bytes.Repeat([]byte{0xff}, 11), ErrMalformed},
		{"entry overflows", append([]byte{1}, append(bytes.Repeat([]byte{0xff}, 9), 0x7f)...), ErrMalformed},
		{"non-minimal count", []byte{0x81, 0x00, 7}, ErrMalformed},
		{"non-minimal entry", []byte{1, 0x80, 0x00}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, n, err := DecodeVector(tt.in)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeVector(% x) error = %v, want %v", tt.in, err, tt.want)
			}
			if v != nil || n != 0 {
				t.Errorf("on error got vector %v and n=%d, want nil and 0", v, n)
			}
		})
	}
	// The largest accepted count.
	b := NewVector(MaxVectorLen).AppendBinary(nil)
	if _, _, err := DecodeVector(b); err != nil {
		t.Errorf("vector of MaxVectorLen entries rejected: %v", err)
	}
}

func FuzzDecodeVector(f *testing.F) {
	f.Add([]byte{0})
	f.Add(Vector{1, 2, 3}.AppendBinary(nil))
	f.Add(Vector{math.MaxUint64, 128}.AppendBinary(nil))
	f.Add([]byte{0x81, 0x80, 0x04})
	f.Add([]byte{1, 0x80, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, n, err := DecodeVector(b)
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrTooLong) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v wraps none of the package's sentinel errors", err)
			}
			return
		}
		if n < 1 || n > len(b) {
			t.Fatalf("consumed %d bytes of %d", n, len(b))
		}
		if len(v) > MaxVectorLen {
			t.Fatalf("decoded %d entries, over the limit", len(v))
		}
		// The encoding is canonical: re-encoding gives back exactly the
		// bytes consumed.
		if enc := v.AppendBinary(nil); !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoding %v gives % x, input was % x", v, enc, b[:n])
		}
	})
}
