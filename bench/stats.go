package main

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"time"
)

// Stat summarises a set of durations. Every figure of the suite that is a
// latency carries one.
type Stat struct {
	Count  int     `json:"count"`
	Median float64 `json:"median_ns"`
	P99    float64 `json:"p99_ns"`
	Mean   float64 `json:"mean_ns"`
	Min    float64 `json:"min_ns"`
	P10    float64 `json:"p10_ns"`
	P25    float64 `json:"p25_ns"`
	P75    float64 `json:"p75_ns"`
	P90    float64 `json:"p90_ns"`
	P999   float64 `json:"p999_ns"`
	Max    float64 `json:"max_ns"`
}

// summarize computes a Stat over samples given in nanoseconds. It sorts a
// copy; samples is left as it is.
func summarize(samples []int64) Stat {
	n := len(samples)
	if n == 0 {
		return Stat{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += float64(v)
	}
	return Stat{
		Count:  n,
		Median: median(s),
		P99:    quantile(s, 0.99),
		Mean:   sum / float64(n),
		Min:    float64(s[0]),
		P10:    quantile(s, 0.10),
		P25:    quantile(s, 0.25),
		P75:    quantile(s, 0.75),
		P90:    quantile(s, 0.90),
		P999:   quantile(s, 0.999),
		Max:    float64(s[n-1]),
	}
}

// median of sorted s: the middle value, or the mean of the two middle ones.
func median(s []int64) float64 {
	n := len(s)
	if n%2 == 1 {
		return float64(s[n/2])
	}
	return (float64(s[n/2-1]) + float64(s[n/2])) / 2
}

// quantile of sorted s by the nearest-rank method: the smallest value at or
// above which a fraction q of the samples lie.
func quantile(s []int64, q float64) float64 {
	n := len(s)
	k := int(math.Ceil(q*float64(n))) - 1
	k = max(0, min(n-1, k))
	return float64(s[k])
}

// durationsNs converts durations to nanoseconds.
func durationsNs(d []time.Duration) []int64 {
	out := make([]int64, len(d))
	for i, v := range d {
		out[i] = int64(v)
	}
	return out
}

// fmtNs prints a duration given in nanoseconds the way the table shows it.
func fmtNs(ns float64) string {
	switch {
	case ns <= 0:
		return "—"
	case ns < 1e3:
		return trimFloat(ns, 0) + " ns"
	case ns < 1e6:
		return trimFloat(ns/1e3, 1) + " µs"
	case ns < 1e9:
		return trimFloat(ns/1e6, 2) + " ms"
	default:
		return trimFloat(ns/1e9, 2) + " s"
	}
}

// hist is a log-linear histogram of durations in nanoseconds with a
// relative resolution of 1/32, for operations too many to keep one by one.
// add does not allocate.
type hist struct {
	Counts []uint64 `json:"counts"`
	N      uint64   `json:"n"`
	Sum    float64  `json:"sum_ns"`
	Min    int64    `json:"min_ns"`
	Max    int64    `json:"max_ns"`
}

const (
	histLinear = 64 // values below are counted exactly
	histSub    = 32 // sub-buckets per power of two above
	histOcts   = 40 // powers of two above histLinear (up to ~ 2^46 ns)
)

func newHist() *hist { return &hist{Counts: make([]uint64, histLinear+histOcts*histSub)} }

// histBucket returns the index of the bucket of v.
func histBucket(v int64) int {
	if v < histLinear {
		return int(max(v, 0))
	}
	e := bits.Len64(uint64(v)) - 6 // v >> e is in [32, 64)
	m := int(uint64(v) >> e)
	return min(histLinear+(e-1)*histSub+(m-histSub), histLinear+histOcts*histSub-1)
}

// histValue is the middle of bucket i.
func histValue(i int) float64 {
	if i < histLinear {
		return float64(i)
	}
	e := (i-histLinear)/histSub + 1
	m := (i-histLinear)%histSub + histSub
	lo := float64(uint64(m) << e)
	return lo + float64(uint64(1)<<e)/2
}

func (h *hist) add(v int64) {
	h.Counts[histBucket(v)]++
	if h.N == 0 || v < h.Min {
		h.Min = v
	}
	if v > h.Max {
		h.Max = v
	}
	h.N++
	h.Sum += float64(v)
}

// merge adds o's counts to h.
func (h *hist) merge(o *hist) error {
	if len(o.Counts) != len(h.Counts) {
		return fmt.Errorf("histogram of %d buckets, want %d", len(o.Counts), len(h.Counts))
	}
	if o.N == 0 {
		return nil
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	if h.N == 0 || o.Min < h.Min {
		h.Min = o.Min
	}
	h.Max = max(h.Max, o.Max)
	h.N += o.N
	h.Sum += o.Sum
	return nil
}

// quantile returns the value at quantile q (nearest rank), to the
// histogram's resolution.
func (h *hist) quantile(q float64) float64 {
	if h.N == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.N)))
	rank = max(1, min(h.N, rank))
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen >= rank {
			return math.Min(math.Max(histValue(i), float64(h.Min)), float64(h.Max))
		}
	}
	return float64(h.Max)
}

// stat summarises the histogram.
func (h *hist) stat() Stat {
	if h.N == 0 {
		return Stat{}
	}
	return Stat{
		Count: int(h.N), Median: h.quantile(0.5), P99: h.quantile(0.99),
		Mean: h.Sum / float64(h.N), Min: float64(h.Min),
		P10: h.quantile(0.10), P25: h.quantile(0.25), P75: h.quantile(0.75),
		P90: h.quantile(0.90), P999: h.quantile(0.999), Max: float64(h.Max),
	}
}
