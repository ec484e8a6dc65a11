// Command floorinit is the PID 1 of the floor benchmark (BenchmarkFloorBoot): the least a
// Linux guest can do once the kernel hands it the machine. It writes one line on the
// console and reboots, which the kernel (reboot=t) turns into a triple fault and QEMU
// (-no-reboot) into its exit. Built static (CGO_ENABLED=0), it is the only file of its
// initramfs besides /dev/console.
package main

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Line is what the benchmark looks for on the console to know the guest ran.
const Line = "floorinit: reached"

func main() {
	// Uptime at PID 1's start: the same "init" stage banger's guests report.
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		_, _ = f.WriteString(Line + " uptime_ms=" + strconv.FormatInt(ts.Nano()/1e6, 10) + "\n")
		_ = f.Sync()
	}
	// RESTART, not POWER_OFF: it is how banger's agent ends a VM too, and it needs no ACPI
	// power-off path in the machine.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}
