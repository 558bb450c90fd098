// Package seedrun runs a simulator's seeded schedules on every CPU and
// finds the smallest failing seed. The four simulators of the project
// (the directory protocol, the release-consistent protocol, the lock
// manager, and the directory protocol through the daemon's page logic)
// run thousands of schedules per go test the same way, so the way lives
// here once. Only tests import it.
package seedrun

import (
	"bytes"
	"io"
	"runtime"
	"strings"
	"sync"
)

// Run runs run(seed) for every seed of first .. first+n-1, on as many
// goroutines as there are CPUs, and returns the smallest seed whose run
// failed and its error (0 and nil when none failed). Seeds above a failing
// one are not started once it is known. add, when set, is given every
// finished schedule's result, one at a time.
func Run[R any](first uint64, n int, run func(seed uint64) (R, error), add func(R)) (uint64, error) {
	var (
		mu       sync.Mutex
		failSeed uint64
		failErr  error
		next     = first
		end      = first + uint64(n)
		wg       sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				seed := next
				next++
				stop := seed >= end || (failErr != nil && seed > failSeed)
				mu.Unlock()
				if stop {
					return
				}
				res, err := run(seed)
				mu.Lock()
				if err != nil && (failErr == nil || seed < failSeed) {
					failSeed, failErr = seed, err
				}
				if add != nil {
					add(res)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failSeed, failErr
}

// TraceTail runs replay with a writer for its trace and returns the last
// lines of what it wrote.
func TraceTail(replay func(trace io.Writer), lines int) string {
	var buf bytes.Buffer
	replay(&buf)
	all := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
