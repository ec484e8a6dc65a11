// Package rpctest holds test helpers for code that serves banger's unix sockets.
package rpctest

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// SocketWatch records how a socket appears at a path, to prove it is never reachable there
// with a wider mode than its final one.
type SocketWatch struct {
	t    testing.TB
	fd   int
	path string
}

// WatchSocket sets the process umask to 000 (the worst case; restored when the test ends)
// and starts watching path's directory with inotify. Call it before the code under test
// listens; then call Check once the socket is there.
func WatchSocket(t testing.TB, path string) *SocketWatch {
	t.Helper()
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatalf("watching %s: %v", filepath.Dir(path), err)
	}
	return &SocketWatch{t: t, fd: fd, path: path}
}

// Check fails the test unless the socket is at its path with mode want and reached it by
// a rename only. A socket bound at its final path shows up as a creation there, and until
// its owner's chmod ran it had the process umask's mode (0777 with umask 000): that is the
// window in which another local user could connect. A socket renamed into place had its
// final mode before its name appeared.
func (w *SocketWatch) Check(want fs.FileMode) {
	w.t.Helper()
	fi, err := os.Lstat(w.path)
	if err != nil {
		w.t.Fatalf("socket: %v", err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != want {
		w.t.Errorf("%s: mode %v, want a socket with mode %v", w.path, fi.Mode(), want)
	}
	name := filepath.Base(w.path)
	created, moved := false, false
	buf := make([]byte, 64*1024)
	for {
		n, err := unix.Read(w.fd, buf)
		if err != nil || n <= 0 {
			break
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			evName := string(raw[:clen(raw)])
			if evName == name {
				created = created || ev.Mask&unix.IN_CREATE != 0
				moved = moved || ev.Mask&unix.IN_MOVED_TO != 0
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	if created {
		w.t.Errorf("%s was created in place (bound at its final path with the umask's mode 0777, chmodded only afterwards)", w.path)
	}
	if !moved {
		w.t.Errorf("%s never appeared by a rename of a socket prepared elsewhere", w.path)
	}
}

func clen(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return len(b)
}
