package pager

import (
	"encoding/binary"
	"errors"

	"github.com/dsmrt/dsm/analyzer"
)

// DiffRanges appends to dst the byte ranges, at 8-byte granularity, where
// cur differs from twin: what this node wrote on a page since it got it.
func DiffRanges(dst []analyzer.Range, twin, cur []byte) []analyzer.Range {
	out := dst
	for i := 0; i+8 <= len(cur); i += 8 {
		if binary.LittleEndian.Uint64(twin[i:]) == binary.LittleEndian.Uint64(cur[i:]) {
			continue
		}
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == uint32(i) {
			out[k].Len += 8
		} else {
			out = append(out, analyzer.Range{Off: uint32(i), Len: 8})
		}
	}
	return out
}

// EncodeRanges appends ranges to dst, encoded for a page message's
// metadata.
func EncodeRanges(dst []byte, rs []analyzer.Range) []byte {
	b := binary.AppendUvarint(dst, uint64(len(rs)))
	for _, r := range rs {
		b = binary.AppendUvarint(b, uint64(r.Off))
		b = binary.AppendUvarint(b, uint64(r.Len))
	}
	return b
}

// DecodeRanges decodes what EncodeRanges made, checking every range lies
// within a page of pageSize bytes.
func DecodeRanges(b []byte, pageSize int) ([]analyzer.Range, error) {
	if len(b) == 0 {
		return nil, nil
	}
	cnt, k := binary.Uvarint(b)
	if k <= 0 || cnt > uint64(pageSize) {
		return nil, errors.New("bad range count")
	}
	b = b[k:]
	out := make([]analyzer.Range, 0, cnt)
	for i := uint64(0); i < cnt; i++ {
		off, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return nil, errors.New("truncated range")
		}
		l, k2 := binary.Uvarint(b[k1:])
		if k2 <= 0 || off+l > uint64(pageSize) {
			return nil, errors.New("bad range")
		}
		b = b[k1+k2:]
		out = append(out, analyzer.Range{Off: uint32(off), Len: uint32(l)})
	}
	return out, nil
}
