//go:build !race

package net

// raceEnabled reports whether the tests run under the race detector.
const raceEnabled = false
