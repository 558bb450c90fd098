package lockmgr

import "testing"

// BenchmarkLockUnlockLocal: an uncontended lock homed on the requester's
// own node (no network): the cost of the state machine alone. The clock
// ticks every 100 iterations.
func BenchmarkLockUnlockLocal(b *testing.B) {
	e := mustNew(b, testConfig(0, 1, 0))
	req := uint64(0)
	for b.Loop() {
		req++
		if req%100 == 0 {
			e.Tick()
		}
		e.Lock("a", Exclusive, 1, req)
		if _, evs := e.Ready(); len(evs) != 1 || evs[0].Kind != Granted {
			b.Fatalf("events%s", fmtEvents(evs))
		}
		if err := e.Unlock("a", 1); err != nil {
			b.Fatal(err)
		}
		e.Ready()
	}
}

// BenchmarkLockUnlockRemote: an uncontended lock on another node, with
// every message encoded and decoded: two round trips per iteration. The
// clocks tick every 100 iterations.
func BenchmarkLockUnlockRemote(b *testing.B) {
	home := mustNew(b, testConfig(0, 2, 0))
	cli := mustNew(b, testConfig(1, 2, 0))
	engs := []*Engine{home, cli}
	var buf []byte
	run := func() (evs []Event) {
		for {
			moved := false
			for _, e := range engs {
				msgs, ev := e.Ready()
				evs = append(evs, ev...)
				for i := range msgs {
					buf = msgs[i].AppendBinary(buf[:0])
					m, err := UnmarshalMessage(buf)
					if err != nil {
						b.Fatal(err)
					}
					if err := engs[m.To].Step(m); err != nil {
						b.Fatal(err)
					}
					moved = true
				}
			}
			if !moved {
				return evs
			}
		}
	}
	req := uint64(0)
	for b.Loop() {
		req++
		if req%100 == 0 {
			home.Tick()
			cli.Tick()
		}
		cli.Lock("a", Exclusive, 1, req)
		if evs := run(); len(evs) != 1 || evs[0].Kind != Granted {
			b.Fatalf("events%s", fmtEvents(evs))
		}
		if err := cli.Unlock("a", 1); err != nil {
			b.Fatal(err)
		}
		run()
	}
}

// BenchmarkMessageCodec: encoding and decoding one grant.
func BenchmarkMessageCodec(b *testing.B) {
	m := grantMsg(1, "some/lock/name", Exclusive, 7, 9, tok(3, 12345), 99999)
	var buf []byte
	for b.Loop() {
		buf = m.AppendBinary(buf[:0])
		if _, err := UnmarshalMessage(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
}

// BenchmarkSimulate: one whole simulated schedule.
func BenchmarkSimulate(b *testing.B) {
	seed := uint64(0)
	for b.Loop() {
		seed++
		if _, err := Simulate(SimConfig{Seed: seed}); err != nil {
			b.Fatal(err)
		}
	}
}
