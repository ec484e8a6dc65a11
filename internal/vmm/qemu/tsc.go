package qemu

import (
	"bufio"
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel's own calibration is the most exact source of the TSC rate: "Refined TSC
// clocksource calibration" when present, else "tsc: Detected … MHz processor".
var (
	tscRefined  = regexp.MustCompile(`Refined TSC clocksource calibration: ([0-9]+\.[0-9]+) MHz`)
	tscDetected = regexp.MustCompile(`tsc: Detected ([0-9]+\.[0-9]+) MHz`)
)

// DetectTSCkHz returns the host TSC frequency in kHz from the kernel log, falling back to
// /proc/cpuinfo's "cpu MHz" (which equals the TSC rate on the constant-TSC CPUs and VMs
// banger runs on). It returns 0 when neither source has it.
func DetectTSCkHz() int {
	if log := readKernelLog(); log != nil {
		if k := tscFromKernelLog(log); k > 0 {
			return k
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		return tscFromCPUInfo(b)
	}
	return 0
}

func readKernelLog() []byte {
	const sysActionReadAll, sysActionSizeBuffer = 3, 10
	size, err := unix.Klogctl(sysActionSizeBuffer, nil)
	if err != nil || size <= 0 {
		return nil // dmesg_restrict hides the log from unprivileged daemons
	}
	buf := make([]byte, size)
	n, err := unix.Klogctl(sysActionReadAll, buf)
	if err != nil || n <= 0 {
		return nil
	}
	return buf[:n]
}

func tscFromKernelLog(log []byte) int {
	if m := tscRefined.FindSubmatch(log); m != nil {
		return mhzToKHz(string(m[1]))
	}
	if m := tscDetected.FindSubmatch(log); m != nil {
		return mhzToKHz(string(m[1]))
	}
	return 0
}

func tscFromCPUInfo(b []byte) int {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			return mhzToKHz(strings.TrimSpace(v))
		}
	}
	return 0
}

// mhzToKHz converts "2596.098" to 2596098 without floating-point rounding.
func mhzToKHz(s string) int {
	whole, frac, _ := strings.Cut(s, ".")
	frac = (frac + "000")[:3]
	w, err1 := strconv.Atoi(whole)
	f, err2 := strconv.Atoi(frac)
	if err1 != nil || err2 != nil || w <= 0 {
		return 0
	}
	return w*1000 + f
}
