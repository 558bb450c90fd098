package analyzer

import (
	"encoding/binary"
	"sort"
)

// span is a half-open byte interval [lo, hi) relative to the start of a page.
type span struct{ lo, hi uint64 }

// spanSet is a sorted list of disjoint, non-adjacent spans: the union of the
// byte ranges added to it.
type spanSet []span

// add inserts [lo, hi) and merges it with any span it overlaps or touches.
func (s spanSet) add(lo, hi uint64) spanSet {
	if lo >= hi {
		return s
	}
	// First span whose end reaches lo (touching spans merge).
	i := sort.Search(len(s), func(i int) bool { return s[i].hi >= lo })
	j := i
	for j < len(s) && s[j].lo <= hi {
		lo = min(lo, s[j].lo)
		hi = max(hi, s[j].hi)
		j++
	}
	if i == j {
		s = append(s, span{})
		copy(s[i+1:], s[i:])
		s[i] = span{lo, hi}
		return s
	}
	s[i] = span{lo, hi}
	return append(s[:i+1], s[j:]...)
}

// union returns s ∪ t as a new set.
func (s spanSet) union(t spanSet) spanSet {
	out := append(spanSet(nil), s...)
	for _, x := range t {
		out = out.add(x.lo, x.hi)
	}
	return out
}

// overlaps reports whether some byte is in both s and t.
func (s spanSet) overlaps(t spanSet) bool {
	i, j := 0, 0
	for i < len(s) && j < len(t) {
		if s[i].lo < t[j].hi && t[j].lo < s[i].hi {
			return true
		}
		if s[i].hi <= t[j].hi {
			i++
		} else {
			j++
		}
	}
	return false
}

// clip returns the part of s inside [lo, hi).
func (s spanSet) clip(lo, hi uint64) spanSet {
	var out spanSet
	for _, x := range s {
		a, b := max(x.lo, lo), min(x.hi, hi)
		if a < b {
			out = append(out, span{a, b})
		}
	}
	return out
}

// intersects reports whether s has a byte in [lo, hi).
func (s spanSet) intersects(lo, hi uint64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i].hi > lo })
	return i < len(s) && s[i].lo < hi
}

// minus returns the bytes of s that are not in t.
func (s spanSet) minus(t spanSet) spanSet {
	var out spanSet
	for _, x := range s {
		lo := x.lo
		for _, y := range t {
			if y.hi <= lo || y.lo >= x.hi {
				continue
			}
			if y.lo > lo {
				out = append(out, span{lo, y.lo})
			}
			lo = max(lo, y.hi)
			if lo >= x.hi {
				break
			}
		}
		if lo < x.hi {
			out = append(out, span{lo, x.hi})
		}
	}
	return out
}

// appendKey appends a compact encoding of s, so that identical write
// patterns share a map entry.
func (s spanSet) appendKey(b []byte) []byte {
	for _, x := range s {
		b = binary.AppendUvarint(b, x.lo)
		b = binary.AppendUvarint(b, x.hi-x.lo)
	}
	return b
}

// key returns the encoding of appendKey as a string.
func (s spanSet) key() string { return string(s.appendKey(nil)) }

// decodeSpans reverses key.
func decodeSpans(k string) spanSet {
	b := []byte(k)
	var out spanSet
	for len(b) > 0 {
		lo, n := binary.Uvarint(b)
		if n <= 0 {
			break
		}
		b = b[n:]
		l, m := binary.Uvarint(b)
		if m <= 0 {
			break
		}
		b = b[m:]
		out = append(out, span{lo, lo + l})
	}
	return out
}
