//go:build !race

package integration

// raceDetector reports a build with -race (see race_on_test.go).
const raceDetector = false
