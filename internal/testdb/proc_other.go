//go:build !linux

package testdb

import "syscall"

// diesWithParent reports whether a server we start stops when the test
// process dies without closing it: there is no parent-death signal outside Linux.
const diesWithParent = false

// sysProcAttr puts a child in its own process group (so a Ctrl-C delivered to
// the test's process group does not kill it before Close runs) and runs it as
// cred when non-nil. Outside Linux there is no parent-death signal: a server
// whose test process was killed keeps running until stopped by hand.
func sysProcAttr(cred *credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true}
	if cred != nil {
		attr.Credential = &syscall.Credential{Uid: cred.uid, Gid: cred.gid}
	}
	return attr
}
