//go:build !(invariants || race)

package replication

// invariantsEnabled is off in production builds: a refused state
// transition is returned as an error wrapping ErrInvalidTransition.
const invariantsEnabled = false
