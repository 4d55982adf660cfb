package testdb

import "syscall"

// diesWithParent reports whether a server we start stops when the test
// process dies without closing it: the kernel sends a child its deathSig when the test process dies.
const diesWithParent = true

// sysProcAttr puts a child in its own process group (so a Ctrl-C delivered to
// the test's process group does not kill it before Close runs), runs it as
// cred when non-nil, and has the kernel send deathSig to it if the test
// process dies without calling Close.
func sysProcAttr(cred *credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig}
	if cred != nil {
		attr.Credential = &syscall.Credential{Uid: cred.uid, Gid: cred.gid}
	}
	return attr
}
