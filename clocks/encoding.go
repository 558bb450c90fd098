package clocks

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxVectorLen is the largest entry count DecodeVector accepts. Node ids are
// 16-bit, so no cluster needs a longer clock; the cap keeps a corrupt or
// hostile count from allocating unbounded memory.
const MaxVectorLen = 1 << 16

// Errors returned (wrapped) by DecodeVector. Check them with errors.Is.
var (
	// ErrTruncated means the input ended before the encoded vector did.
	ErrTruncated = errors.New("clocks: truncated vector encoding")
	// ErrTooLong means the encoded entry count exceeds MaxVectorLen.
	ErrTooLong = errors.New("clocks: vector entry count exceeds limit")
	// ErrMalformed means a varint overflows 64 bits or is not minimally
	// encoded.
	ErrMalformed = errors.New("clocks: malformed varint in vector encoding")
)

// AppendBinary appends the compact encoding of v to dst and returns the
// extended slice. The encoding is the entry count as a uvarint followed by
// each entry as a uvarint, so small clocks cost about one byte per node. The
// encoding is canonical: equal vectors of equal length encode identically.
func (v Vector) AppendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(v)))
	for _, x := range v {
		dst = binary.AppendUvarint(dst, x)
	}
	return dst
}

// DecodeVector decodes a vector written by AppendBinary from the start of b.
// It returns the vector and the number of bytes consumed; bytes after the
// vector are left for the caller. A zero-length encoding decodes to an empty,
// non-nil Vector.
//
// The errors wrap ErrTruncated (b is too short: pass the whole message),
// ErrTooLong (the count exceeds MaxVectorLen: the peer is not a DSM node or
// the data is corrupt) or ErrMalformed (a varint overflows or is not minimal).
func DecodeVector(b []byte) (Vector, int, error) {
	return AppendDecodeVector(nil, b)
}

// AppendDecodeVector is DecodeVector decoding into dst's spare capacity,
// which it grows only when the entries do not fit: a message's vectors can
// share one allocation. The result is dst's extension, not dst.
func AppendDecodeVector(dst Vector, b []byte) (Vector, int, error) {
	count, off, err := uvarint(b, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("decoding vector entry count: %w", err)
	}
	if count > MaxVectorLen {
		return nil, 0, fmt.Errorf("%w: %d entries, limit %d", ErrTooLong, count, MaxVectorLen)
	}
	// Every entry takes at least one byte; reject before allocating.
	if count > uint64(len(b)-off) {
		return nil, 0, fmt.Errorf("%w: %d entries need at least %d bytes, %d left",
			ErrTruncated, count, count, len(b)-off)
	}
	var v Vector
	if start := len(dst); count > 0 && uint64(cap(dst)-start) >= count {
		v = dst[start : start+int(count) : start+int(count)]
	} else {
		v = make(Vector, count) // non-nil even when empty
	}
	for i := range v {
		var x uint64
		x, off, err = uvarint(b, off)
		if err != nil {
			return nil, 0, fmt.Errorf("decoding vector entry %d of %d: %w", i, count, err)
		}
		v[i] = x
	}
	return v, off, nil
}

// uvarint decodes one minimal uvarint from b[off:] and returns it and the
// offset after it.
func uvarint(b []byte, off int) (uint64, int, error) {
	x, n := binary.Uvarint(b[off:])
	switch {
	case n == 0:
		return 0, 0, fmt.Errorf("%w: input ends at byte %d inside a varint", ErrTruncated, len(b))
	case n < 0:
		return 0, 0, fmt.Errorf("%w: varint at byte %d overflows 64 bits", ErrMalformed, off)
	case n > 1 && b[off+n-1] == 0:
		return 0, 0, fmt.Errorf("%w: varint at byte %d is not minimally encoded", ErrMalformed, off)
	}
	return x, off + n, nil
}
