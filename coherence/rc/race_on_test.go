//go:build race

package rc

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = true
