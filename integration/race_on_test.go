//go:build race

package integration

// raceDetector reports a build with -race: the detector slows the gateway
// several times over, so load and deadline tests scale their numbers.
const raceDetector = true
