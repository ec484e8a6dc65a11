package ctrshim

import (
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// ctr writes its stdin into the FIFO and calls CloseIO the moment its own stdin ends,
// before the shim necessarily read those bytes: they must still reach the process.
func TestStdinKeepsBytesWrittenBeforeCloseIO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openStdin(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello through stdin\n"))
	w.Close() // the client's writer gone: no EOF yet, the shim holds one
	r.CloseIO()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "hello through stdin\n" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// Before any client opened the FIFO, a read waits instead of reporting EOF; CloseIO then
// ends it.
func TestStdinWaitsForTheClientAndCloseIOEndsIt(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openStdin(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error, 1)
	go func() {
		_, err := r.Read(make([]byte, 10))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("read returned before any writer or CloseIO: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	r.CloseIO()
	select {
	case err := <-done:
		if err != io.EOF {
			t.Fatalf("want EOF after CloseIO, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("CloseIO did not wake the read")
	}
}

func TestStdinRefusesNonFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, nil, 0o600)
	if _, err := openStdin(p); err == nil {
		t.Fatal("a regular file accepted as the stdin FIFO")
	}
}

// ctr may reach its stdin's EOF before it registered CloseIO: the client closing its
// writer ends stdin too.
func TestStdinEndsWhenTheClientClosesItsWriter(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stdin")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openStdin(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abc"))
	w.Close()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "abc" {
		t.Fatalf("got %q, %v", got, err)
	}
}
