package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"banger/internal/agentproto"
	"banger/internal/model"
)

// Where the pieces of the root end up inside the running guest. The lower and system
// mounts stay reachable for debugging and so shutdown can remount them.
const (
	LowerMount  = "/.banger/lower"
	SystemMount = "/.banger/system"
	WorkMount   = "/root"
)

// ReadyLine is printed on the console once the agent serves, for hosts watching the log.
const ReadyLine = "banger-agent: ready"

const (
	newRoot        = "/newroot"
	initLower      = "/mnt/lower"
	initSystem     = "/mnt/system"
	deviceWait     = 10 * time.Second
	channelWait    = 10 * time.Second
	nicWait        = 5 * time.Second
	fatalPause     = 3 * time.Second
	defaultInit    = "/sbin/init"
	moduleOrderRel = "order"
)

// prefixWriter starts every record with "banger-agent: " so agent lines stand out among
// the kernel's on the console. slog writes each record in one Write call.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// ConsoleLogger logs human-readable key=value records to w (the VM console), each line
// prefixed "banger-agent: ". The console is read in the VM's log file by people first.
func ConsoleLogger(w io.Writer) *slog.Logger { return slog.New(consoleHandler(w)) }

func consoleHandler(w io.Writer) slog.Handler {
	return slog.NewTextHandler(&prefixWriter{w: w, prefix: "banger-agent: "}, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000"))
			}
			return a
		},
	})
}

// RunInit is the guest's PID 1: it assembles the root file system from the VM's disks,
// configures the network from the kernel command line, switches root, and then either
// hands PID 1 to the rootfs's init (with the agent as a child) or stays init and serves the
// agent. It never returns; a fatal error is printed and the VM reboots, which ends the VMM.
func RunInit() {
	os.Setenv("PATH", DefaultPath)
	os.Setenv("HOME", "/root")
	// The first stage: how long the kernel took to hand over to PID 1.
	boot := &bootStages{}
	boot.mark(model.GuestStageInit)
	// No garbage collection until the agent serves: the boot allocates a few MB (module
	// files, logs), and on one emulated vCPU every collection delays readiness.
	gc := debug.SetGCPercent(-1)
	if err := mountEarly(); err != nil {
		fatal(slog.New(slog.NewTextHandler(os.Stderr, nil)), "mounting /proc, /sys, /dev and /run", err)
	}
	// Log records are held until the agent serves (consolehold.go).
	log, console := newHeldLogger(consoleHandler(attachConsole()))
	setHeldConsole(console)
	log.Info("init starting", "version", Version, "uptime_ms", uptimeMillis())
	start := time.Now()

	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fatal(log, "reading /proc/cmdline", err)
	}
	params, err := agentproto.ParseCmdline(string(b))
	if err != nil {
		fatal(log, "parsing the kernel command line", err)
	}
	log.Info("boot parameters", "params", params.Args())

	// Modules load in the background; each step waits only for the drivers it needs, so
	// the disks mount and the network comes up while the rest still load (their device
	// waits overlap with each other's work).
	mods, modsStage := startModules(params.ModulesDir, log)
	modsDone := make(chan struct{})
	if modsStage == model.GuestStageNoModules {
		// Nothing loads: the stage is now, not whenever a goroutine next gets the vCPU.
		boot.mark(modsStage)
		close(modsDone)
	} else {
		go func() {
			defer close(modsDone)
			mods.finish()
			boot.mark(modsStage)
		}()
	}
	netDone := make(chan error, 1)
	go func() {
		mods.wait(append(transports(), "virtio_net")...)
		err := configureNetwork(params, log)
		if err == nil {
			boot.mark(model.GuestStageNetwork)
		}
		netDone <- err
	}()
	mods.wait(append(transports(), "virtio_blk")...)
	if err := assembleRoot(params, log, func() { mods.wait("overlay") }); err != nil {
		fatal(log, "assembling the root file system", err)
	}
	if err := mountShares(params, mods, log); err != nil {
		fatal(log, "mounting the shared folders", err)
	}
	boot.mark(model.GuestStageRoot)
	if err := <-netDone; err != nil {
		fatal(log, "configuring the network", err)
	}
	<-modsDone // the loader reads the initramfs's module files
	// The initramfs's files are freed once the agent serves (or before handing over to
	// another init): deleting ~6 MB costs tens of milliseconds under TCG that need not
	// delay readiness. The old root stays reachable through this descriptor.
	oldRoot, err := os.Open("/")
	if err != nil {
		fatal(log, "opening the initramfs root", err)
	}
	// "/." so the walk starts in the directory the link points to, not at the link.
	oldRootPath := fmt.Sprintf("/proc/self/fd/%d/.", oldRoot.Fd())
	if err := switchRoot(); err != nil {
		fatal(log, "switching to the new root", err)
	}
	if err := writeIdentity(params); err != nil {
		fatal(log, "writing hostname and resolver files", err)
	}
	log.Info("root ready", "duration_ms", time.Since(start).Milliseconds())

	if init := chooseInit(params, log); init != "" {
		freeInitramfs(oldRootPath, log)
		oldRoot.Close()
		debug.SetGCPercent(gc)
		console.release()
		handOver(init, boot, log)
	}

	procs := newProcTable()
	ctx := context.Background()
	go procs.reap(ctx, log)
	agent := &Agent{log: log, powerOff: powerOffAsInit, setIdentity: applyIdentity, procs: procs, boot: boot}
	err = agent.ServeChannels(ctx, channelWait, func() {
		boot.mark(model.GuestStageAgentServing)
		log.Info("agent serving", "uptime_ms", uptimeMillis())
		debug.SetGCPercent(gc)
		go func() {
			// The held records and the ready line go out while the agent answers the
			// host's first ping.
			console.release()
			consoleLine(ReadyLine)
			freeInitramfs(oldRootPath, log)
			oldRoot.Close()
		}()
	})
	fatal(log, "serving the agent", err)
}

// RunAgent runs the agent inside a guest whose PID 1 is another init: the mode init hands
// over in ("banger-agent agent"). It returns when ctx ends or no channel exists.
func RunAgent(ctx context.Context, log *slog.Logger) error {
	a := NewDefaultAgent(log)
	a.boot = bootStagesFromEnv()
	return a.ServeChannels(ctx, channelWait, func() {
		a.boot.mark(model.GuestStageAgentServing)
		consoleLine(ReadyLine)
		log.Info("agent serving")
	})
}

func uptimeMillis() int64 {
	up, err := uptime()
	if err != nil {
		return -1
	}
	return int64(up * 1000)
}

// fatal prints err on the console and reboots after a pause: a VM whose init failed must
// end its VMM rather than hang.
func fatal(log *slog.Logger, what string, err error) {
	log.Error("fatal: "+what, "err", err)
	releaseConsole()
	consoleLine(fmt.Sprintf("banger-agent: FATAL: %s: %v", what, err))
	time.Sleep(fatalPause)
	unix.Sync()
	rebootNow()
}

func mountEarly() error {
	mounts := []struct {
		src, dst, fstype, data string
		flags                  uintptr
	}{
		{"proc", "/proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", "devtmpfs", "mode=0755", unix.MS_NOSUID},
		// Pseudo-terminals for exec with tty; /dev/ptmx from devtmpfs uses this instance.
		{"devpts", "/dev/pts", "devpts", "mode=0620,ptmxmode=0666", unix.MS_NOSUID | unix.MS_NOEXEC},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
		{"tmpfs", "/run", "tmpfs", "mode=0755", unix.MS_NOSUID | unix.MS_NODEV},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// attachConsole makes /dev/console this process's stdio: an initramfs without a console
// node leaves init with no stdio at all. It returns where to log.
func attachConsole() io.Writer {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return os.Stderr
	}
	for fd := 0; fd <= 2; fd++ {
		_ = unix.Dup3(int(f.Fd()), fd, 0)
	}
	return f
}

// waitDevices polls until every device node exists: devtmpfs creates them as the virtio
// drivers probe, which can lag module loading.
func waitDevices(devs []string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		var missing []string
		for _, d := range devs {
			if _, err := os.Stat(d); err != nil {
				missing = append(missing, d)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("block devices %s did not appear within %s", strings.Join(missing, ", "), wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mkdirs(paths ...string) error {
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", p, err)
		}
	}
	return nil
}

// assembleRoot builds /newroot: the base image read-only as overlay lower, the system disk
// holding upper/ and work/, the early mounts and disks moved under it, the work disk on
// /root.
func assembleRoot(p agentproto.BootParams, log *slog.Logger, overlayReady func()) error {
	devs := []string{p.Root, p.System}
	if p.Work != "" {
		devs = append(devs, p.Work)
	}
	if p.Workspace != "" {
		devs = append(devs, p.Workspace)
	}
	if err := waitDevices(devs, deviceWait); err != nil {
		return err
	}
	if err := mkdirs(initLower, initSystem, newRoot); err != nil {
		return err
	}
	if err := unix.Mount(p.Root, initLower, "ext4", unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mounting the base image %s read-only: %w", p.Root, err)
	}
	if err := unix.Mount(p.System, initSystem, "ext4", unix.MS_NOATIME, rwDiskMountData); err != nil {
		return fmt.Errorf("mounting the system disk %s: %w", p.System, err)
	}
	upper, work := filepath.Join(initSystem, "upper"), filepath.Join(initSystem, "work")
	if err := mkdirs(upper, work); err != nil {
		return err
	}
	overlayReady()
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", initLower, upper, work)
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the overlay root (%s): %w", opts, err)
	}
	// The work disk is mounted before /dev moves under the new root: its device path is
	// resolved in the initrd's /dev.
	if p.Work != "" {
		dst := filepath.Join(newRoot, WorkMount)
		if err := mkdirs(dst); err != nil {
			return err
		}
		if err := unix.Mount(p.Work, dst, "ext4", unix.MS_NOATIME, rwDiskMountData); err != nil {
			return fmt.Errorf("mounting the work disk %s on %s: %w", p.Work, WorkMount, err)
		}
	}
	if p.Workspace != "" {
		if err := mountWorkspace(p, log); err != nil {
			return err
		}
	}
	moves := []struct{ from, to string }{
		{"/proc", "proc"}, {"/sys", "sys"}, {"/dev", "dev"}, {"/run", "run"},
		{initLower, strings.TrimPrefix(LowerMount, "/")},
		{initSystem, strings.TrimPrefix(SystemMount, "/")},
	}
	for _, m := range moves {
		dst := filepath.Join(newRoot, m.to)
		if err := mkdirs(dst); err != nil {
			return err
		}
		if err := unix.Mount(m.from, dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("moving %s to %s: %w", m.from, dst, err)
		}
	}
	log.Info("root assembled", "lower", p.Root, "system", p.System, "work", p.Work, "workspace", p.Workspace)
	return nil
}

// mountWorkspace mounts the workspace disk at its path under the new root. The host packs
// the user's files with the user's uid; rather than walking the tree to re-own it (seconds
// for a large tree under emulation), git — which refuses a repository owned by another
// user ("dubious ownership") — is told in the guest's system config to trust it. The
// config lands in the VM's own overlay.
func mountWorkspace(p agentproto.BootParams, log *slog.Logger) error {
	dst := filepath.Join(newRoot, p.WorkspacePath)
	if err := mkdirs(dst); err != nil {
		return err
	}
	if err := unix.Mount(p.Workspace, dst, "ext4", unix.MS_NOATIME|unix.MS_NOSUID|unix.MS_NODEV, workspaceMountData); err != nil {
		return fmt.Errorf("mounting the workspace %s on %s: %w", p.Workspace, p.WorkspacePath, err)
	}
	if err := trustWorkspaceInGit(filepath.Join(newRoot, "etc", "gitconfig"), p.WorkspacePath); err != nil {
		log.Warn("adding the workspace to git's safe.directory failed", "err", err)
	}
	log.Info("workspace mounted", "device", p.Workspace, "path", p.WorkspacePath)
	return nil
}

// trustWorkspaceInGit adds the workspace and the repositories below it to safe.directory
// in the git system config at cfg, once.
func trustWorkspaceInGit(cfg, path string) error {
	entry := fmt.Sprintf("[safe]\n\tdirectory = %s\n\tdirectory = %s/*\n", path, path)
	if b, err := os.ReadFile(cfg); err == nil && strings.Contains(string(b), entry) {
		return nil
	}
	if err := mkdirs(filepath.Dir(cfg)); err != nil {
		return err
	}
	f, err := os.OpenFile(cfg, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(entry)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// configureNetwork brings up lo and, when the VM has an address, eth0 with it and the
// default route. The kernel has no IP autoconfiguration, so this is the only place it
// happens.
func configureNetwork(p agentproto.BootParams, log *slog.Logger) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up: %w", err)
	}
	if !p.Addr.IsValid() {
		log.Info("no network configured")
		return nil
	}
	var eth netlink.Link
	deadline := time.Now().Add(nicWait)
	for {
		eth, err = netlink.LinkByName("eth0")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("eth0 did not appear within %s: %w", nicWait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Addr.Bits(), 32),
	}}
	if err := netlink.AddrReplace(eth, addr); err != nil {
		return fmt.Errorf("adding %s to eth0: %w", p.Addr, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bringing eth0 up: %w", err)
	}
	if p.Gateway.IsValid() {
		route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: p.Gateway.AsSlice()}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("adding the default route via %s: %w", p.Gateway, err)
		}
	}
	log.Info("network configured", "addr", p.Addr.String(), "gateway", p.Gateway.String())
	return nil
}

// freeInitramfs deletes the initramfs's files under root, as switch_root does: once "/"
// moves away only init's descriptor can reach them, yet they would keep occupying guest
// memory. Only files on the initramfs itself are touched; the running binary stays
// executable through /proc/self/exe.
func freeInitramfs(root string, log *slog.Logger) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(root, &sfs); err != nil {
		return
	}
	if sfs.Type != unix.RAMFS_MAGIC && sfs.Type != unix.TMPFS_MAGIC {
		log.Warn("/ is not an initramfs; leaving its files alone", "fs_type", sfs.Type)
		return
	}
	// Stat, not Lstat: root may be a /proc/self/fd link to the old root.
	var rootStat unix.Stat_t
	if err := unix.Stat(root, &rootStat); err != nil {
		return
	}
	var dirs []string
	removed := 0
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil || st.Dev != rootStat.Dev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if p != root {
				dirs = append(dirs, p)
			}
			return nil
		}
		if os.Remove(p) == nil {
			removed++
		}
		return nil
	})
	for _, d := range slices.Backward(dirs) {
		_ = os.Remove(d)
	}
	log.Info("initramfs freed", "files", removed)
}

// switchRoot makes /newroot the root: move it over "/" and chroot into it.
func switchRoot() error {
	if err := unix.Chdir(newRoot); err != nil {
		return fmt.Errorf("entering %s: %w", newRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving %s over /: %w", newRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	return nil
}

// replaceFile writes a regular file at p, replacing a symlink there (for example a
// resolv.conf pointing into a resolver daemon's runtime directory).
func replaceFile(p string, data []byte) error {
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("replacing the symlink %s: %w", p, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(p), err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

// writeIdentity sets the hostname and writes /etc/hostname, /etc/hosts and, with DNS,
// /etc/resolv.conf. It runs after the switch so paths resolve inside the guest's root.
func writeIdentity(p agentproto.BootParams) error {
	if err := unix.Sethostname([]byte(p.Name)); err != nil {
		return fmt.Errorf("setting the hostname: %w", err)
	}
	if err := replaceFile("/etc/hostname", []byte(p.Name+"\n")); err != nil {
		return err
	}
	self := "127.0.1.1"
	if p.Addr.IsValid() {
		self = p.Addr.Addr().String()
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n%s\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", self, p.Name)
	if err := replaceFile("/etc/hosts", []byte(hosts)); err != nil {
		return err
	}
	if len(p.DNS) > 0 {
		var b strings.Builder
		for _, a := range p.DNS {
			fmt.Fprintf(&b, "nameserver %s\n", a)
		}
		if err := replaceFile("/etc/resolv.conf", []byte(b.String())); err != nil {
			return err
		}
	}
	return nil
}

// chooseInit returns the init to hand PID 1 to, or "" to stay init.
func chooseInit(p agentproto.BootParams, log *slog.Logger) string {
	if p.Init == agentproto.InitNone {
		return ""
	}
	candidate := p.Init
	if candidate == "" {
		candidate = defaultInit
	}
	fi, err := os.Stat(candidate)
	if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		if p.Init != "" || !errors.Is(err, fs.ErrNotExist) {
			log.Warn("init not usable; the agent stays PID 1", "init", candidate, "err", err)
		}
		return ""
	}
	return candidate
}

// handOver starts the agent as a child, then replaces this process with the rootfs's
// init. The child survives the exec: it stays a child of PID 1, now the other init.
func handOver(init string, boot *bootStages, log *slog.Logger) {
	cmd := exec.Command("/proc/self/exe", "agent")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stderr, os.Stderr
	cmd.Env = []string{"PATH=" + DefaultPath, "HOME=/root", BootStagesEnv + "=" + boot.env()}
	// Its own session, so the init's job control on the console does not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fatal(log, "starting the agent beside "+init, err)
	}
	log.Info("handing PID 1 to the rootfs init", "init", init, "agent_pid", cmd.Process.Pid)
	env := []string{"PATH=" + DefaultPath, "HOME=/", "TERM=linux"}
	err := syscall.Exec(init, []string{init}, env)
	fatal(log, "executing "+init, err)
}
