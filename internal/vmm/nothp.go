package vmm

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Transparent huge pages off for a VMM. Under TCG, QEMU asks for huge pages
// (MADV_HUGEPAGE) on its translation cache, so a forked VM is charged a whole 2 MiB page
// for each part of the cache it starts to fill: measured, ~20 MiB of a fork's ~46 MiB PSS
// (docs/benchmarks.md, "PSS per fork"). prctl(PR_SET_THP_DISABLE) turns huge pages off
// for a process, madvise or not, and the setting survives fork and execve; Go's os/exec
// cannot run code between fork and exec, so the VMM is started through bangerd itself:
// `bangerd NoTHPArg PATH ARGV...` sets it and execs PATH. Only the VMM gets it (not the
// daemon, whose other children — virtiofsd, mkfs, the helper — have no reason to).

// NoTHPArg, as bangerd's first argument, runs NoTHPMain.
const NoTHPArg = "__vmm-nothp"

// WithoutTHP makes cmd (not started) run through launcher's NoTHPArg mode, which execs
// the same binary with the same argv, environment and descriptors. launcher is bangerd's
// binary; "" leaves cmd alone (a test binary that is not bangerd).
func WithoutTHP(cmd *exec.Cmd, launcher string) {
	if launcher == "" {
		return
	}
	cmd.Args = append([]string{launcher, NoTHPArg, cmd.Path}, cmd.Args...)
	cmd.Path = launcher
}

// vmmArgv is the command line cmd's VMM runs with: cmd's own, without a WithoutTHP prefix.
func vmmArgv(cmd *exec.Cmd) []string {
	if len(cmd.Args) > 3 && cmd.Args[1] == NoTHPArg {
		return append([]string(nil), cmd.Args[3:]...)
	}
	return append([]string(nil), cmd.Args...)
}

// NoTHPMain is bangerd's NoTHPArg mode: args are PATH ARGV...; it turns transparent huge
// pages off for this process and replaces itself with PATH. It returns only when the
// exec fails. A kernel refusing the prctl is reported on stderr (the VMM's console log)
// and the VMM runs anyway: huge pages cost memory, not correctness.
func NoTHPMain(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("%s: want PATH ARGV..., got %q", NoTHPArg, args)
	}
	if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "bangerd: turning transparent huge pages off for the VMM: %v\n", err)
	}
	return fmt.Errorf("executing %s: %w", args[0], syscall.Exec(args[0], args[1:], os.Environ()))
}
