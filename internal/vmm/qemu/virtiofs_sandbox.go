package qemu

import (
	"flag"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// SandboxMain is bangerd's SandboxArg mode (see virtiofs.go), run in a fresh user and
// mount namespace with the listening vhost-user socket as fd 3: it opens --source refusing
// any symlink on the path, bind-mounts it onto --target, read-only when asked, and
// replaces itself with virtiofsd serving --target. It returns only on failure. (The
// daemon cannot hand over a descriptor of the directory instead: a bind mount's source
// must be a mount of the caller's own mount namespace.)
func SandboxMain(args []string) error {
	fs := flag.NewFlagSet(SandboxArg, flag.ContinueOnError)
	source := fs.String("source", "", "the shared directory")
	target := fs.String("target", "", "bind-mount point of the shared directory")
	bin := fs.String("virtiofsd", "", "virtiofsd binary")
	ro := fs.Bool("readonly", true, "share read-only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *source == "" || *target == "" || *bin == "" {
		return fmt.Errorf("%s: --source, --target and --virtiofsd are required", SandboxArg)
	}
	// Nothing mounted here may propagate back to the host's namespace.
	if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	src, err := openNoSymlinks(*source)
	if err != nil {
		return err
	}
	// MS_REC: a user namespace may not bind a tree while hiding mounts below it.
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", src), *target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting the shared directory %s on %s: %w", *source, *target, err)
	}
	unix.Close(src)
	var st unix.Statfs_t
	if err := unix.Statfs(*target, &st); err != nil {
		return fmt.Errorf("reading the flags of %s: %w", *target, err)
	}
	// A remount must keep the flags the host's mount has (they are locked in a user
	// namespace); it adds nosuid and nodev, and ro for a read-only share.
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID | unix.MS_NODEV)
	flags |= uintptr(st.Flags) & (unix.ST_NOEXEC | unix.ST_NOATIME | unix.ST_NODIRATIME | unix.ST_RELATIME | unix.ST_RDONLY)
	if *ro {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("none", *target, "", flags, ""); err != nil {
		return fmt.Errorf("remounting %s (read-only %v): %w", *target, *ro, err)
	}
	argv := []string{*bin, "--fd=3", "-o", "source=" + *target,
		// cache=none: host changes show in the guest at once (a live folder).
		"-o", "cache=none", "-o", "sandbox=namespace", "-o", "log_level=err",
		"-o", "no_xattr", "-o", "no_posix_lock", "-o", "no_flock"}
	return fmt.Errorf("executing %s: %w", *bin, syscall.Exec(*bin, argv, os.Environ()))
}

// openNoSymlinks opens directory p as an O_PATH descriptor, refusing a symlink anywhere on
// the path: the stored path had its symlinks resolved when the VM was created, so one that
// appeared since is refused rather than followed.
func openNoSymlinks(p string) (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{
		Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return -1, fmt.Errorf("opening shared directory %s (no symlinks followed): %w", p, err)
	}
	return fd, nil
}
