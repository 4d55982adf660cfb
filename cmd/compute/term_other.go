//go:build !linux

package main

// isTTY is unknown off Linux without a dependency: no terminal is assumed,
// so bulk actions and downward migrations need --yes there.
func isTTY(fd uintptr) bool { return false }
