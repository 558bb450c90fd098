package analyzer

import (
	"path/filepath"
	"testing"
	"time"
)

// benchStream returns n migrations over 1,000 pages: every tenth page falsely
// shared by two nodes, the rest moving now and then between four nodes.
func benchStream(n int) []Migration {
	t0 := time.Unix(1000, 0)
	ms := make([]Migration, n)
	for i := range ms {
		p := uint32(i % 1000)
		from := uint16(i/1000) % 4
		ms[i] = Migration{
			Page: p, From: from, To: (from + 1) % 4, Write: i%3 != 0,
			Wall:    t0.Add(time.Duration(i) * time.Microsecond),
			Clock:   []uint64{uint64(i), uint64(i / 2), 0, 1},
			Written: []Range{{Off: uint32(from) * 8, Len: 1 + uint32(i%2)}},
			Cost:    50 * time.Microsecond,
		}
	}
	return ms
}

func benchAnalyzer(b *testing.B, n int) *Analyzer {
	b.Helper()
	a := New(ps)
	for p := range uint64(1000) {
		a.AddVars(Var{Name: "a" + itoa(p), Offset: p * ps, Size: 8}, Var{Name: "b" + itoa(p), Offset: p*ps + 8, Size: 8})
	}
	for _, m := range benchStream(n) {
		a.Record(m)
	}
	return a
}

func itoa(n uint64) string { return commas(int(n)) }

func BenchmarkRecord(b *testing.B) {
	ms := benchStream(100_000)
	a := New(ps)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		a.Record(ms[i%len(ms)])
	}
}

func BenchmarkFindings100k(b *testing.B) {
	a := benchAnalyzer(b, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		if len(a.Findings()) == 0 {
			b.Fatal("no findings")
		}
	}
}

func BenchmarkWriteHeatmap100k(b *testing.B) {
	a := benchAnalyzer(b, 100_000)
	path := filepath.Join(b.TempDir(), "h.png")
	for b.Loop() {
		if err := a.WriteHeatmap(path, 1200, 600); err != nil {
			b.Fatal(err)
		}
	}
}
