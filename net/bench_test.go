package net

import (
	"context"
	"slices"
	"testing"
	"time"
)

// BenchmarkRoundTrip4K measures a 64-byte request and a 4 KiB reply on
// loopback over raw UDP (the machine's limit), this package's Transport
// (encrypted, reliable) and kcp-go's stock sessions (the reference), and
// UDP and the Transport with the replying end in a second process, as the
// node daemons run. Each
// iteration is one round trip; median and p99 are reported in µs.
func BenchmarkRoundTrip4K(b *testing.B) {
	for _, bc := range []struct {
		name string
		kind string
		opts []RoundTripOption
	}{
		{"udp", RoundTripUDP, nil},
		{"transport", RoundTripKCP, nil},
		{"transport-fec", RoundTripKCP, []RoundTripOption{WithFEC(8, 2)}},
		{"kcp-go", RoundTripKCPGo, nil},
		{"udp-2proc", RoundTripUDP2Proc, nil},
		{"transport-2proc", RoundTripKCP2Proc, nil},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			rt, err := newRoundTripper(ctx, bc.kind, bc.opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer rt.Close()
			d := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				x, err := rt.RoundTrip(ctx)
				if err != nil {
					b.Fatal(err)
				}
				d = append(d, x)
			}
			b.StopTimer()
			reportLatency(b, d)
		})
	}
}

func reportLatency(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	us := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))]) / float64(time.Microsecond) }
	b.ReportMetric(us(0.5), "median-µs")
	b.ReportMetric(us(0.99), "p99-µs")
}
