package imagecat

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLinePrinter(t *testing.T) {
	var buf bytes.Buffer
	pr := NewProgressPrinter(&buf, false)
	for done := int64(0); done <= 1000; done += 7 {
		pr(Progress{Stage: StageDownload, File: "rootfs.ext4", Done: done, Total: 1000})
	}
	pr(Progress{Stage: StageDownload, File: "rootfs.ext4", Done: 1000, Total: 1000})
	pr(Progress{Stage: StageDownload, File: "rootfs.ext4", Done: 1000, Total: 1000})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// 0%, 10%, …, 90% and the completion line, nothing repeated.
	if len(lines) != 11 {
		t.Fatalf("got %d lines:\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[10], "100%") {
		t.Fatalf("last line %q is not the completion", lines[10])
	}
	buf.Reset()
	pr(Progress{Stage: StageBuild, File: "tiny"})
	pr(Progress{Stage: StageBuild, File: "tiny"})
	if got := buf.String(); got != "build\n" {
		t.Fatalf("build stage printed %q", got)
	}
}

func TestBarPrinter(t *testing.T) {
	var buf bytes.Buffer
	pr := NewProgressPrinter(&buf, true)
	pr(Progress{Stage: StageDownload, File: "vmlinux", Done: 0, Total: 4 << 20})
	time.Sleep(70 * time.Millisecond) // the bar throttles redraws
	pr(Progress{Stage: StageDownload, File: "vmlinux", Done: 4 << 20, Total: 4 << 20})
	pr(Progress{Stage: StageDone})
	out := buf.String()
	if !strings.Contains(out, "100%") || !strings.Contains(out, "4.0 MiB") {
		t.Fatalf("bar output lacks completion: %q", out)
	}
}

func TestThrottle(t *testing.T) {
	var got []Progress
	th := throttle(func(p Progress) { got = append(got, p) })
	for i := int64(1); i <= 10000; i++ {
		th(Progress{Stage: StageDownload, File: "f", Done: i, Total: 10000})
	}
	if len(got) > 5 {
		t.Fatalf("%d callbacks for a burst, want few", len(got))
	}
	if last := got[len(got)-1]; last.Done != 10000 {
		t.Fatalf("final report %d lost", last.Done)
	}
}
