package guest

import (
	"banger/internal/agentproto"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ShutdownLine is printed on the console when the guest powers off, so the host sees why
// the VMM exited in the VM's log.
const ShutdownLine = "banger-agent: guest shutdown"

// Signals that ask an init to power off. systemd counts SIGRTMIN from glibc's 34.
const (
	sigSystemdPoweroff = syscall.Signal(34 + 4)
	sigBusyboxPoweroff = syscall.SIGUSR2
)

const (
	termGrace = 2 * time.Second
	killGrace = 500 * time.Millisecond
)

// defaultPowerOff picks what a shutdown request does for this process: the init's
// power-off as PID 1, a request to PID 1 inside a banger guest, nothing on a host.
func defaultPowerOff() func(*slog.Logger) {
	if os.Getpid() == 1 {
		return powerOffAsInit
	}
	if inBangerGuest() {
		return askInitToPowerOff
	}
	return nil
}

// inBangerGuest reports whether the kernel was booted by banger (its command line carries
// banger.name), which is what makes powering off the machine the right reaction.
func inBangerGuest() bool {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false
	}
	for _, arg := range agentproto.SplitCmdline(string(b)) {
		if strings.HasPrefix(arg, agentproto.ParamName+"=") {
			return true
		}
	}
	return false
}

// consoleLine writes one line to the console, where the VMM's log captures it; kmsg is
// the fallback when /dev/console cannot be opened.
func consoleLine(s string) {
	for _, dev := range []string{"/dev/console", "/dev/kmsg"} {
		f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_NOCTTY, 0)
		if err != nil {
			continue
		}
		_, err = f.WriteString(s + "\n")
		f.Close()
		if err == nil {
			return
		}
	}
}

// powerOffAsInit stops the guest when the agent is PID 1: every process is asked to end,
// then killed, file systems are made consistent, and the machine reboots, which ends the
// VMM (both VMMs run guests with no-reboot semantics). It does not return.
func powerOffAsInit(log *slog.Logger) {
	releaseConsole() // what init still holds belongs before the shutdown in the log
	consoleLine(ShutdownLine)
	log.Info("guest shutdown: stopping processes")
	_ = syscall.Kill(-1, syscall.SIGTERM)
	deadline := time.Now().Add(termGrace)
	for time.Now().Before(deadline) && otherProcesses() > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-1, syscall.SIGKILL)
	time.Sleep(killGrace)
	unix.Sync()
	releaseDisks(log)
	unix.Sync()
	log.Info("guest shutdown: rebooting to end the VM")
	rebootNow()
}

// releaseDisks unmounts the work disk and leaves the overlay and the system disk read-only,
// in reverse order of mounting. The root overlay cannot be unmounted while it is "/", so a
// read-only remount flushes it instead; the system disk under it stays busy the same way.
func releaseDisks(log *slog.Logger) {
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		if p, err := agentproto.ParseCmdline(string(b)); err == nil && p.WorkspacePath != "" {
			if err := unix.Unmount(p.WorkspacePath, 0); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				log.Warn("unmounting the workspace failed; remounting it read-only", "err", err)
				_ = unix.Mount("", p.WorkspacePath, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
			}
		}
	}
	if err := unix.Unmount(WorkMount, 0); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		log.Warn("unmounting the work disk failed; remounting it read-only", "err", err)
		_ = unix.Mount("", WorkMount, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
	for _, m := range []string{"/", SystemMount} {
		if err := unix.Mount("", m, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			log.Warn("remounting read-only failed", "mount", m, "err", err)
		}
	}
}

// otherProcesses counts user-space processes besides this one; kernel threads (children
// of kthreadd, pid 2) do not count.
func otherProcesses() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	self := os.Getpid()
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 2 {
			continue
		}
		state, ppid, ok := procStat(pid)
		if !ok || ppid == 2 || state == 'Z' {
			continue
		}
		n++
	}
	return n
}

// rebootNow restarts the machine; with a no-reboot VMM that ends the VM.
func rebootNow() {
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		// Only a missing privilege gets here; nothing else can be done but to keep trying.
		time.Sleep(time.Second)
	}
}

// initPowerOffGrace is how long a rootfs init gets to power off before the agent reboots
// the machine itself, so a VM never outlives a shutdown request it accepted.
const initPowerOffGrace = 30 * time.Second

// askInitToPowerOff is for an agent running beside a rootfs init: that init owns the
// processes and mounts, so it is asked to power off in its own language.
func askInitToPowerOff(log *slog.Logger) {
	consoleLine(ShutdownLine)
	exe, _ := os.Readlink("/proc/1/exe")
	comm, _ := os.ReadFile("/proc/1/comm")
	name := filepath.Base(exe) + " " + strings.TrimSpace(string(comm))
	asked := false
	var sig syscall.Signal
	switch {
	case strings.Contains(name, "systemd"):
		sig = sigSystemdPoweroff
	case strings.Contains(name, "busybox"):
		sig = sigBusyboxPoweroff
	}
	if sig != 0 {
		log.Info("guest shutdown: asking init to power off", "init", name, "signal", int(sig))
		if err := syscall.Kill(1, sig); err != nil {
			log.Warn("signalling init failed", "err", err)
		} else {
			asked = true
		}
	}
	if !asked {
		if path, err := exec.LookPath("poweroff"); err == nil {
			log.Info("guest shutdown: running poweroff", "path", path)
			if err := exec.Command(path).Run(); err != nil {
				log.Warn("poweroff failed", "err", err)
			} else {
				asked = true
			}
		}
	}
	if asked {
		time.Sleep(initPowerOffGrace)
		log.Warn("guest shutdown: init did not power off in time; rebooting directly", "init", name)
	} else {
		log.Warn("guest shutdown: no way to ask init; rebooting directly", "init", name)
	}
	unix.Sync()
	rebootNow()
}
