//go:build unix

package main

import "syscall"

// diskFree is the bytes free to unprivileged users on the file system
// holding path; ok is false when path cannot be read (a remote server's).
func diskFree(path string) (free int64, ok bool) {
	var st syscall.Statfs_t
	if syscall.Statfs(path, &st) != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
