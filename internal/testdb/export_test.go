package testdb

import "context"

// StartLazy is the start of NewLazy outside Run.
func StartLazy(ctx context.Context, logf func(string, ...any)) (*Server, error) {
	return start(ctx, logf, false)
}

// Internal helpers exported for the external test package.
var (
	RedactConnString = redactConnString
	ParseDockerPort  = parseDockerPort
	GlobNewestFirst  = globNewestFirst
	DockerAvailable  = dockerAvailable
)

// SetBinaryDirPatterns replaces the install locations searched for binaries
// (after PATH) and returns a function that restores them. Not for parallel tests.
func SetBinaryDirPatterns(patterns []string) (restore func()) {
	saved := binaryDirPatterns
	binaryDirPatterns = patterns
	return func() { binaryDirPatterns = saved }
}
