package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchMemory is the guest size of the snapshot benchmarks (the 512 MiB guest).
const benchMemory = "512M"

// benchSource creates a running 512 MiB VM for a benchmark and removes it at the end.
func (x *env) benchSource(b *testing.B, name string) {
	b.Helper()
	x.warmImage(b)
	x.mustCLIB(b, "vm", "create", "-q", "--name", name, "--memory", benchMemory)
	b.Cleanup(func() { x.cli(nil, "vm", "rm", "-f", name) })
}

// BenchmarkSnapshotCreate is `banger snapshot create` of an idle 512 MiB tiny guest: pause,
// memory and device state to a file, disk copies, resume.
func BenchmarkSnapshotCreate(b *testing.B) {
	x := needB(b)
	x.benchSource(b, "bench-snapsrc")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench-snap-%d", i)
		start := time.Now()
		out := x.mustCLIB(b, "snapshot", "create", "-q", "--json", "--name", name, "bench-snapsrc")
		el := time.Since(start)
		b.StopTimer()
		var sn snapRecord
		json.Unmarshal([]byte(out), &sn)
		b.ReportMetric(float64(sn.SizeBytes)/(1<<20), "MiB-on-disk")
		b.ReportMetric(float64(el.Milliseconds()), "ms-snapshot")
		x.mustCLIB(b, "snapshot", "rm", name)
		b.StartTimer()
	}
}

// BenchmarkRestoreOne is `banger vm create --from-snapshot` until the restored guest's
// agent answered and its identity is applied.
func BenchmarkRestoreOne(b *testing.B) {
	x := needB(b)
	x.benchSource(b, "bench-restsrc")
	x.mustCLIB(b, "snapshot", "create", "-q", "--name", "bench-restsnap", "bench-restsrc")
	b.Cleanup(func() { x.cli(nil, "snapshot", "rm", "-f", "bench-restsnap") })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench-rest-%d", i)
		start := time.Now()
		x.mustCLIB(b, "vm", "create", "-q", "--from-snapshot", "bench-restsnap", "--name", name)
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(el.Milliseconds()), "ms-ready")
		x.mustCLIB(b, "vm", "rm", "-f", name)
		b.StartTimer()
	}
}

// BenchmarkForkTen is `banger vm fork VM --count 10` of a running 512 MiB VM until all ten
// are agent-ready with their identities applied; it reports the host memory each fork's
// VMM adds (PSS from /proc/PID/smaps_rollup, measured once all ten run), the mean over
// the iterations (one iteration's varies by several MiB: how much translation cache the
// guest fills) and the largest.
func BenchmarkForkTen(b *testing.B) {
	x := needB(b)
	x.benchSource(b, "bench-forksrc")
	var pssSum, pssMax, srcSum int64
	// The ratio is the median of the iterations over the median of floor boots made
	// between them (untimed), under the same load.
	var samples, floors []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		prefix := fmt.Sprintf("bf%d", i)
		start := time.Now()
		x.mustCLIB(b, "vm", "fork", "-q", "--count", "10", "--name-prefix", prefix, "bench-forksrc")
		el := time.Since(start)
		b.StopTimer()
		samples = append(samples, el)
		var pss int64
		names := make([]string, 10)
		for j := range names {
			names[j] = fmt.Sprintf("%s-%d", prefix, j+1)
			var rec vmRecord
			if err := json.Unmarshal([]byte(x.mustCLIB(b, "vm", "show", "--json", names[j])), &rec); err != nil {
				b.Fatal(err)
			}
			kb, err := pssKiB(rec.PID)
			if err != nil {
				b.Fatal(err)
			}
			pss += kb
		}
		var src vmRecord
		json.Unmarshal([]byte(x.mustCLIB(b, "vm", "show", "--json", "bench-forksrc")), &src)
		srcKB, _ := pssKiB(src.PID)
		if os.Getenv("BANGER_BENCH_DEBUG") != "" {
			var r vmRecord
			json.Unmarshal([]byte(x.mustCLIB(b, "vm", "show", "--json", names[0])), &r)
			cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.PID))
			roll, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", r.PID))
			b.Logf("iteration %d: ten forks ready in %d ms", i, el.Milliseconds())
			b.Logf("fork cmdline: %s\nsmaps_rollup:\n%s\nmappings over 1 MiB PSS:\n%s",
				strings.ReplaceAll(string(cl), "\x00", " "), roll, bigMappings(r.PID))
			for _, l := range strings.Split(readFile(x.daemonLog.Name()), "\n") {
				if (strings.Contains(l, "vm.fork") && strings.Contains(l, "stage")) || strings.Contains(l, "\"WARN\"") || strings.Contains(l, "\"ERROR\"") {
					b.Log(l)
				}
			}
		}
		pssSum, pssMax, srcSum = pssSum+pss, max(pssMax, pss), srcSum+srcKB
		x.mustCLIB(b, append([]string{"vm", "rm", "-f"}, names...)...)
		x.interleavedFloor(b, &floors)
		b.StartTimer()
	}
	reportRatio(b, x, "ForkTen", samples, floors)
	if dst := os.Getenv("BANGER_BENCH_LOG"); dst != "" {
		// The daemon's whole log, for a per-phase breakdown of the forks (op events, stages).
		_ = os.WriteFile(dst, []byte(readFile(x.daemonLog.Name())), 0o600)
	}
	b.ReportMetric(float64(pssSum)/float64(b.N)/10/1024, "MiB-PSS/fork")
	b.ReportMetric(float64(pssMax)/10/1024, "MiB-PSS/fork-max")
	b.ReportMetric(float64(srcSum)/float64(b.N)/1024, "MiB-PSS-source")
}

// pssKiB reads a process's proportional set size.
func pssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss line for pid %d", pid)
}

// bigMappings lists the mappings of pid with more than 1 MiB of PSS (for BANGER_BENCH_DEBUG).
func bigMappings(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	var out strings.Builder
	head := ""
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			head = l
		}
		if len(f) == 3 && f[0] == "Pss:" {
			if n, _ := strconv.Atoi(f[1]); n > 1024 {
				fmt.Fprintf(&out, "%6d kB  %s\n", n, head)
			}
		}
	}
	return out.String()
}
