package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A watch records what changes under a workspace while a command runs, so --diff's
// listing afterwards costs what changed instead of a walk of the whole tree (one lstat per
// entry is seconds for 20,000 files under TCG). It is a fanotify mark on the workspace's
// file system (its own ext4 disk, so FAN_MARK_FILESYSTEM sees exactly the workspace)
// reporting directory file handles and names (FAN_REPORT_DFID_NAME) for creates, deletes,
// moves, writes and attribute changes; a reader goroutine resolves each directory handle
// (open_by_handle_at on the mount) to its path at once. A queue overflow, a handle that
// cannot be resolved for a reason other than the directory being gone, or too many
// changed paths make the watch "lost": the listing then walks the tree as before.

// watchEvents are the fanotify events a watch asks for.
// FAN_CLOSE_WRITE also catches a file written through a shared mapping (which makes no
// FAN_MODIFY) once its writer closes it.
const watchEvents = unix.FAN_CREATE | unix.FAN_DELETE | unix.FAN_MOVED_FROM | unix.FAN_MOVED_TO |
	unix.FAN_MODIFY | unix.FAN_CLOSE_WRITE | unix.FAN_ATTRIB | unix.FAN_DELETE_SELF | unix.FAN_MOVE_SELF | unix.FAN_ONDIR

// Bounds: a command that changes more than this is listed by walking.
const (
	maxWatchPaths = 200000
	maxWatches    = 4
)

// fsWatch is one running watch.
type fsWatch struct {
	root    string // the watched directory (the workspace mount point)
	fd      int    // fanotify
	mountFD int    // root, for open_by_handle_at
	done    chan struct{}

	mu      sync.Mutex
	dirs    map[string]bool // dirs whose entries changed (relative; "." is root)
	paths   map[string]bool // entries that changed themselves (relative)
	lost    string          // why the watch cannot be trusted; "" while it can
	stopped bool
}

// watchSet is an agent's watches, by root. The zero value is ready.
type watchSet struct {
	mu sync.Mutex
	m  map[string]*fsWatch
}

// start begins a watch on root, replacing an earlier one on it.
func (s *watchSet) start(root string) error {
	w, err := newWatch(root)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*fsWatch{}
	}
	if old := s.m[root]; old != nil {
		old.stop()
		delete(s.m, root)
	}
	// A client that died between watch and list leaves its watch behind: past the cap one
	// of them (any) goes.
	for len(s.m) >= maxWatches {
		for k, o := range s.m {
			o.stop()
			delete(s.m, k)
			break
		}
	}
	s.m[root] = w
	return nil
}

// take removes root's watch and stops it, returning it (nil if none).
func (s *watchSet) take(root string) *fsWatch {
	s.mu.Lock()
	w := s.m[root]
	delete(s.m, root)
	s.mu.Unlock()
	if w != nil {
		w.stop()
	}
	return w
}

func newWatch(root string) (*fsWatch, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_REPORT_DFID_NAME, unix.O_RDONLY|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, watchEvents, unix.AT_FDCWD, root); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify_mark %s: %w", root, err)
	}
	mfd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening %s: %w", root, err)
	}
	w := &fsWatch{root: root, fd: fd, mountFD: mfd, done: make(chan struct{}), dirs: map[string]bool{}, paths: map[string]bool{}}
	go w.read()
	return w, nil
}

// read drains events until stop, polling so that stop is never blocked by a read.
func (w *fsWatch) read() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(w.fd, buf)
		if err == nil && n > 0 {
			w.parse(buf[:n])
			continue
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
			w.fail("reading events: " + err.Error())
			return
		}
		w.mu.Lock()
		stopped := w.stopped
		w.mu.Unlock()
		if stopped {
			return
		}
		_, _ = unix.Poll([]unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}}, 20)
	}
}

// stop ends the reader after it drained what the kernel queued so far.
func (w *fsWatch) stop() {
	w.mu.Lock()
	already := w.stopped
	w.stopped = true
	w.mu.Unlock()
	if already {
		return
	}
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		w.fail("the event reader did not finish")
	}
	unix.Close(w.fd)
	unix.Close(w.mountFD)
}

func (w *fsWatch) fail(why string) {
	w.mu.Lock()
	if w.lost == "" {
		w.lost = why
	}
	w.mu.Unlock()
}

// metaLen is sizeof(struct fanotify_event_metadata).
const metaLen = 24

// parse reads a buffer of events.
func (w *fsWatch) parse(b []byte) {
	for len(b) >= metaLen {
		evLen := int(binary.NativeEndian.Uint32(b[0:4]))
		hdrLen := int(binary.NativeEndian.Uint16(b[6:8]))
		mask := binary.NativeEndian.Uint64(b[8:16])
		if evLen < metaLen || evLen > len(b) || hdrLen < metaLen || hdrLen > evLen {
			w.fail("malformed event")
			return
		}
		if fd := int32(binary.NativeEndian.Uint32(b[16:20])); fd >= 0 {
			unix.Close(int(fd)) // not with FID reporting, but never leak one
		}
		if mask&unix.FAN_Q_OVERFLOW != 0 {
			w.fail("event queue overflowed")
		} else {
			w.event(mask, b[hdrLen:evLen])
		}
		b = b[evLen:]
	}
}

// event records one event from its info records: a DFID_NAME record (fsid, the parent
// directory's handle, the entry's name), or a DFID or FID record (fsid and the handle of
// the directory or the object itself) for events the kernel reports without a name.
func (w *fsWatch) event(mask uint64, info []byte) {
	for len(info) >= 4 {
		typ := info[0]
		l := int(binary.NativeEndian.Uint16(info[2:4]))
		if l < 4 || l > len(info) {
			w.fail("malformed event info")
			return
		}
		rec := info[4:l]
		info = info[l:]
		switch typ {
		case unix.FAN_EVENT_INFO_TYPE_DFID_NAME, unix.FAN_EVENT_INFO_TYPE_DFID, unix.FAN_EVENT_INFO_TYPE_FID:
		default:
			continue
		}
		if len(rec) < 8+8 {
			w.fail("malformed event info")
			return
		}
		fh := rec[8:] // after the fsid
		hbytes := int(binary.NativeEndian.Uint32(fh[0:4]))
		htype := int32(binary.NativeEndian.Uint32(fh[4:8]))
		if 8+hbytes > len(fh) {
			w.fail("malformed file handle")
			return
		}
		handle := fh[8 : 8+hbytes]
		var name []byte
		if typ == unix.FAN_EVENT_INFO_TYPE_DFID_NAME {
			name = fh[8+hbytes:]
			if i := indexByte(name, 0); i >= 0 {
				name = name[:i]
			}
		}
		w.record(mask, unix.NewFileHandle(htype, append([]byte(nil), handle...)), string(name))
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// record resolves the event's directory and notes what changed.
func (w *fsWatch) record(mask uint64, h unix.FileHandle, name string) {
	dir, err := w.resolve(h)
	if err != nil {
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			// The directory is gone: its own deletion is an event in its parent.
			return
		}
		w.fail("resolving a directory handle: " + err.Error())
		return
	}
	if dir == "" {
		return // outside the watched directory (not possible on its own file system)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.paths)+len(w.dirs) >= maxWatchPaths {
		if w.lost == "" {
			w.lost = "too many changes"
		}
		return
	}
	entry := dir
	if name != "" && name != "." {
		entry = filepath.ToSlash(filepath.Join(dir, name))
	}
	if mask&(unix.FAN_CREATE|unix.FAN_DELETE|unix.FAN_MOVED_FROM|unix.FAN_MOVED_TO) != 0 {
		w.dirs[dir] = true
	}
	w.paths[entry] = true
}

// resolve returns the path, relative to root, of the directory with handle h.
func (w *fsWatch) resolve(h unix.FileHandle) (string, error) {
	fd, err := unix.OpenByHandleAt(w.mountFD, h, unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", err
	}
	if strings.HasSuffix(p, " (deleted)") {
		return "", unix.ESTALE
	}
	rel, err := filepath.Rel(w.root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", nil
	}
	return filepath.ToSlash(rel), nil
}

// changes returns what the watch saw, or why it cannot tell.
func (w *fsWatch) changes() (dirs, paths map[string]bool, lost string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dirs, w.paths, w.lost
}
