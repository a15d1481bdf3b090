//go:build race

package gateway

// raceEnabled slows nothing down by itself; tests that measure use it to
// scale their load down, since the race detector multiplies CPU cost.
const raceEnabled = true
