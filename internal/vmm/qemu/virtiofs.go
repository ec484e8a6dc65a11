package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// Shared folders (vmm.Spec.Shares) are virtiofs devices, each served by its own virtiofsd
// (Debian 12 ships QEMU 7.2's in qemu-system-common as /usr/lib/qemu/virtiofsd; newer
// systems have the Rust one in /usr/libexec). virtio-9p is not an option: the Debian cloud
// kernel the guests boot is built without 9P.
//
// virtiofsd runs as the daemon's user, started through SandboxArg: bangerd re-executed in
// a new user and mount namespace (uid 0 there is the daemon's uid), which bind-mounts the
// shared directory — opened refusing any symlink on its path — onto a
// directory in the VM's directory, read-only for a read-only share (C virtiofsd 7.2 has no
// read-only option: the kernel enforces it, EROFS), and then execs virtiofsd with its own
// namespace sandbox (pid, mount and net namespaces, pivot_root into the shared directory,
// so no lookup — "..", an absolute symlink — reaches anything outside it). Its vhost-user
// socket is a listening socket the daemon made in the VM's directory (owner-only) and
// hands over as fd 3: virtiofsd's own socket path mode would want /run/virtiofsd, which an
// unprivileged user cannot create. virtiofsd serves one QEMU connection and exits when it
// closes, so it never outlives its VMM for long; the daemon also kills it with the VMM and
// sweeps strays (its command line names the VM's directory).

// VirtiofsdPaths are where virtiofsd is looked for, in order, when the configuration names
// none: Debian 13's virtiofsd package, then Debian 12's qemu-system-common.
var VirtiofsdPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// VirtiofsdBinary is the base name stray virtiofsd processes are found by.
const VirtiofsdBinary = "virtiofsd"

// SandboxArg, as bangerd's first argument, runs SandboxMain.
const SandboxArg = "__virtiofsd-sandbox"

// shareTagRe is what a share's tag may be: it names files in the VM's directory and
// travels on the kernel command line.
var shareTagRe = regexp.MustCompile(`^bgr[0-9]{1,2}$`)

// SharesFolders reports that QEMU VMs can have shared folders.
func (d *Driver) SharesFolders() bool { return true }

// findVirtiofsd returns the virtiofsd to run.
func findVirtiofsd() (string, error) {
	for _, p := range VirtiofsdPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(VirtiofsdBinary); err == nil {
		return p, nil
	}
	return "", errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "shared folders need virtiofsd, found in none of %s nor PATH", strings.Join(VirtiofsdPaths, ", ")),
		"install it: apt-get install qemu-system-common (Debian 12) or virtiofsd (Debian 13)")
}

// shareSocket and shareMount are a share's vhost-user socket and bind-mount point.
func shareSocket(dir, tag string) string { return filepath.Join(dir, "vfs-"+tag+".sock") }
func shareMount(dir, tag string) string  { return filepath.Join(dir, "share-"+tag) }
func shareLog(dir, tag string) string    { return filepath.Join(dir, "virtiofsd-"+tag+".log") }

// validateShares checks the shares of spec.
func validateShares(spec vmm.Spec) error {
	seen := map[string]bool{}
	for _, s := range spec.Shares {
		if !shareTagRe.MatchString(s.Tag) || seen[s.Tag] {
			return errdefs.InvalidArgument("spec.shares.tag", s.Tag, "must be a distinct bgrN")
		}
		seen[s.Tag] = true
		if !filepath.IsAbs(s.Source) || filepath.Clean(s.Source) != s.Source {
			return errdefs.InvalidArgument("spec.shares.source", s.Source, "must be an absolute, clean path")
		}
		// listenShare binds in a temporary directory beside it first.
		if len(shareSocket(spec.Dir, s.Tag)) > vmm.MaxSocketPath || len(filepath.Join(spec.Dir, ".vfs-0123456789/s")) > vmm.MaxSocketPath {
			return errdefs.InvalidArgument("spec.dir", spec.Dir, "too long for the virtiofs socket inside it")
		}
	}
	return nil
}

// shareProcs are the virtiofsd processes of one VM.
type shareProcs []*exec.Cmd

// kill ends every virtiofsd and waits for it (bounded: SIGKILL cannot be refused).
func (s shareProcs) kill() {
	for _, c := range s {
		_ = c.Process.Kill()
	}
	for _, c := range s {
		done := make(chan struct{})
		go func() { _, _ = c.Process.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	}
}

// startShares starts one virtiofsd per share of spec. On error none is left running.
func startShares(spec vmm.Spec) (shareProcs, error) {
	if len(spec.Shares) == 0 {
		return nil, nil
	}
	bin, err := findVirtiofsd()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding bangerd's own binary for the virtiofsd sandbox: %w", err)
	}
	var procs shareProcs
	for _, s := range spec.Shares {
		c, err := startShare(spec.Dir, self, bin, s)
		if err != nil {
			procs.kill()
			return nil, fmt.Errorf("starting virtiofsd for %s: %w", s.Source, err)
		}
		procs = append(procs, c)
	}
	return procs, nil
}

func startShare(dir, self, bin string, s vmm.Share) (*exec.Cmd, error) {
	mnt := shareMount(dir, s.Tag)
	if err := os.Mkdir(mnt, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating its mount point: %w", err)
	}
	// Checked here for a clear error before anything starts; the sandbox opens it again.
	fd, err := openNoSymlinks(s.Source)
	if err != nil {
		return nil, errdefs.New(errdefs.ErrInvalidArgument, "--mount: %w", err)
	}
	unix.Close(fd)
	sock, err := listenShare(shareSocket(dir, s.Tag))
	if err != nil {
		return nil, err
	}
	defer sock.Close()
	logf, err := os.OpenFile(shareLog(dir, s.Tag), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating its log: %w", err)
	}
	defer logf.Close()
	// Not CommandContext: like the VMM, it must outlive the request and the daemon.
	cmd := exec.Command(self, SandboxArg, "--source="+s.Source, "--target="+mnt, "--virtiofsd="+bin, "--readonly="+strconv.FormatBool(s.ReadOnly))
	cmd.ExtraFiles = []*os.File{sock} // fd 3
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		// Root in the namespace is the daemon's user outside it: virtiofsd gets the
		// capabilities its sandbox needs over this namespace only, and every file it
		// creates for the guest is owned by the daemon's user.
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", self, err)
	}
	return cmd, nil
}

// listenShare makes the owner-only listening socket virtiofsd serves on, and returns it
// as a file to hand over. It is bound inside a fresh 0700 directory and renamed into place,
// so no other user ever reaches it (the first connection is the one virtiofsd serves).
func listenShare(path string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".vfs-")
	if err != nil {
		return nil, fmt.Errorf("making a private directory for %s: %w", path, err)
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	if err := os.Chmod(bound, 0o600); err != nil {
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	if err := os.Rename(bound, path); err != nil {
		return nil, fmt.Errorf("placing %s: %w", path, err)
	}
	f, err := l.File()
	if err != nil {
		return nil, fmt.Errorf("handing over %s: %w", path, err)
	}
	return f, nil
}

// shareArgs are QEMU's arguments for the shares' devices.
func shareArgs(spec vmm.Spec, machine string) []string {
	var args []string
	if len(spec.Shares) > 0 && machine != "q35" {
		// vhost-user (libvhost-user in virtiofsd) serves only modern virtio devices, and
		// microvm's virtio-mmio transport defaults to legacy.
		args = append(args, "-global", "virtio-mmio.force-legacy=false")
	}
	for _, s := range spec.Shares {
		dev := "vhost-user-fs-device"
		if machine == "q35" {
			dev = "vhost-user-fs-pci"
		}
		args = append(args,
			"-chardev", "socket,id=vfs-"+s.Tag+",path="+shareSocket(spec.Dir, s.Tag),
			"-device", dev+",queue-size=1024,chardev=vfs-"+s.Tag+",tag="+s.Tag)
	}
	return args
}
