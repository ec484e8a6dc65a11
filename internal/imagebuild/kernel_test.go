package imagebuild

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestDebianKernelSecondCallUsesCache(t *testing.T) {
	first := testKernel(t)
	start := time.Now()
	again, err := DebianKernel(context.Background(), testCacheDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cached DebianKernel call took %v", time.Since(start))
	if again != first {
		t.Fatalf("second call %+v, first %+v", again, first)
	}
	if _, err := os.Stat(filepath.Join(again.ModulesDir, "kernel")); err != nil {
		t.Fatalf("modules dir incomplete: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(testCacheDir(), ".fetch-*")); len(leftovers) != 0 {
		t.Fatalf("download dirs left behind: %v", leftovers)
	}
}

func TestVersionLess(t *testing.T) {
	if !versionLess("linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64") {
		t.Fatal("6.1.0-9 should sort before 6.1.0-56")
	}
	if versionLess("linux-image-6.12.0-1-cloud-amd64", "linux-image-6.1.0-56-cloud-amd64") {
		t.Fatal("6.12 should sort after 6.1")
	}
}
