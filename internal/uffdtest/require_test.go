package uffdtest

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// recorder is a testing.TB whose Skip and Fatal variants record the
// message and end only the goroutine that called them, as the real ones do.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}

// record runs f with a recorder in its own goroutine and waits for it.
func record(t testing.TB, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestRequireDecision(t *testing.T) {
	missing := errors.New("vm.unprivileged_userfaultfd is 0")
	tests := []struct {
		name        string
		probe       error
		mandatory   bool
		wantSkip    bool
		wantFailure bool
	}{
		{"available", nil, false, false, false},
		{"available, mandatory", nil, true, false, false},
		{"missing", missing, false, true, false},
		{"missing, mandatory", missing, true, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := record(t, func(tb testing.TB) { require(tb, func() error { return tt.probe }, tt.mandatory) })
			if (r.skipped != "") != tt.wantSkip || (r.failed != "") != tt.wantFailure {
				t.Fatalf("skipped %q failed %q; want skip %v failure %v", r.skipped, r.failed, tt.wantSkip, tt.wantFailure)
			}
			for _, msg := range []string{r.skipped, r.failed} {
				if msg != "" && !strings.Contains(msg, missing.Error()) {
					t.Errorf("message %q does not give the reason", msg)
				}
			}
		})
	}
}

// TestRequireHere checks Require against this machine: it must return
// normally exactly when the probe finds a usable userfaultfd.
func TestRequireHere(t *testing.T) {
	err := probe()
	t.Setenv(RequireEnv, "")
	r := record(t, Require)
	if (err == nil) != (r.skipped == "") || r.failed != "" {
		t.Fatalf("probe error %v, but Require skipped %q failed %q", err, r.skipped, r.failed)
	}
	t.Setenv(RequireEnv, "1")
	r = record(t, Require)
	if (err == nil) != (r.failed == "") || r.skipped != "" {
		t.Fatalf("with %s=1: probe error %v, but Require skipped %q failed %q", RequireEnv, err, r.skipped, r.failed)
	}
}
