package imagebuild

import (
	"banger/internal/testkit"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
)

// requireTool skips when a host tool is missing, except in CI where that is a failure.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	return testkit.Tool(t, name)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// testCacheDir is shared by all test packages on a machine so the kernel is fetched once.
func testCacheDir() string { return testkit.CacheDir() }

var (
	kernelOnce sync.Once
	kernelPkg  KernelPkg
	kernelErr  error
)

// testKernel returns the Debian cloud kernel via DebianKernel into the shared test cache, as
// the product fetches it; without apt or a mirror the test skips (fails under CI=true).
func testKernel(t *testing.T) KernelPkg {
	t.Helper()
	kernelOnce.Do(func() {
		kernelPkg, kernelErr = DebianKernel(context.Background(), testCacheDir(), slog.New(slog.DiscardHandler))
	})
	if kernelErr != nil {
		testkit.Missing(t, "fetching the Debian kernel into %s: %v", testCacheDir(), kernelErr)
	}
	return kernelPkg
}

// cpioEntryInfo is what readNewc returns for one archive member.
type cpioEntryInfo struct {
	Name         string
	Mode         uint32
	Size         int64
	RMajor, RMin uint32
	Data         []byte
}

// readNewcFile is readNewc of the initrd at path; any error fails t.
func readNewcFile(t *testing.T, path string) []cpioEntryInfo {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := readNewc(f)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// readNewc is an independent newc parser used to check BuildInitrd's output.
func readNewc(r io.Reader) ([]cpioEntryInfo, error) {
	var out []cpioEntryInfo
	var off int64
	read := func(n int64) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(r, b)
		off += n
		return b, err
	}
	align := func() error {
		if pad := (4 - off%4) % 4; pad > 0 {
			_, err := read(pad)
			return err
		}
		return nil
	}
	for {
		hdr, err := read(110)
		if err != nil {
			return nil, err
		}
		if string(hdr[:6]) != "070701" {
			return nil, fmt.Errorf("bad magic %q at %d", hdr[:6], off-110)
		}
		field := func(i int) uint32 {
			v, _ := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			return uint32(v)
		}
		name, err := read(int64(field(11)))
		if err != nil {
			return nil, err
		}
		if err := align(); err != nil {
			return nil, err
		}
		e := cpioEntryInfo{Name: string(bytes.TrimRight(name, "\x00")), Mode: field(1), Size: int64(field(6)), RMajor: field(9), RMin: field(10)}
		if e.Name == "TRAILER!!!" {
			return out, nil
		}
		if e.Data, err = read(e.Size); err != nil {
			return nil, err
		}
		if err := align(); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
}

// elfEntry reads e_entry straight from the header, independent of debug/elf.
func elfEntry(t *testing.T, path string) (machine uint16, entry uint64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var h [64]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		t.Fatal(err)
	}
	if string(h[:4]) != "\x7fELF" {
		t.Fatalf("%s is not ELF", path)
	}
	return binary.LittleEndian.Uint16(h[18:]), binary.LittleEndian.Uint64(h[24:])
}
