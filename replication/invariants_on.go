//go:build invariants || race

package replication

// invariantsEnabled turns refused state transitions into panics. It is on
// in builds with the "invariants" tag and in race builds, which is how the
// tests run in CI; production builds return errors instead.
const invariantsEnabled = true
