package uffd_test

import (
	"slices"
	"testing"
	"time"

	"github.com/dsmrt/dsm/internal/uffdtest"
	"github.com/dsmrt/dsm/uffd"
)

// TestLocalFault runs the two-process measurement over several passes of a
// small window, so the hole punching between passes is exercised: every
// pass must fault again on every page and read the copied data (Run checks
// a checksum of what the child read).
func TestLocalFault(t *testing.T) {
	uffdtest.Require(t)
	l, err := uffd.StartLocalFault(16)
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.Run(50)
	if cerr := l.Close(); cerr != nil {
		t.Errorf("Close: %v", cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) != 50 {
		t.Fatalf("%d samples, want 50", len(res.Samples))
	}
	var sum time.Duration
	for i, s := range res.Samples {
		if s <= 0 {
			t.Errorf("sample %d = %v", i, s)
		}
		sum += s
	}
	if res.Elapsed < sum {
		t.Errorf("elapsed %v is less than the sum of the samples %v", res.Elapsed, sum)
	}

	samples, err := uffd.MeasureLocalFault(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 10 {
		t.Fatalf("MeasureLocalFault gave %d samples", len(samples))
	}
}

// BenchmarkLocalFault measures a MISSING fault on a memfd mapping resolved
// with UFFDIO_COPY by another process: the userfaultfd limit that other
// benchmarks quote. ns/op is the faulting process's wall time per fault;
// med-µs and p99-µs come from per-fault timestamps in the faulting process.
func BenchmarkLocalFault(b *testing.B) {
	uffdtest.Require(b)
	l, err := uffd.StartLocalFault(0)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Run(256); err != nil { // warm up
		b.Fatal(err)
	}
	b.ResetTimer()
	res, err := l.Run(b.N)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	s := slices.Clone(res.Samples)
	slices.Sort(s)
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(float64(res.Elapsed.Nanoseconds())/float64(b.N), "ns/op")
	b.ReportMetric(us(s[len(s)/2]), "med-µs")
	b.ReportMetric(us(s[(len(s)*99)/100]), "p99-µs")
}
