//go:build !race

package coherence

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = false
