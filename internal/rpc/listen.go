package rpc

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"banger/internal/errdefs"
)

// ListenUnix listens on a unix socket at path that is never reachable with a mode wider
// than mode. The socket is bound inside a fresh 0700 directory next to path, given its mode
// (and group gid, unless gid is -1) there, and only then renamed into place: bound at path
// directly it would exist with the process umask until a chmod, and a local user who
// connected in that window would keep the connection. Setting the umask around bind instead
// would race with every other goroutine creating files, since the umask is process-wide.
//
// A socket already at path (a stale one; callers check for a live server first) is
// replaced; any other file there is a conflict. Closing the listener removes the socket if
// path still names it.
func ListenUnix(path string, mode fs.FileMode, gid int) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory %s: %w", dir, err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != fs.ModeSocket {
		return nil, errdefs.New(errdefs.ErrConflict, "%s exists and is not a socket; not replacing it", path)
	}
	// MkdirTemp makes the directory 0700 whatever the umask, so nobody but this user (and
	// root) can reach the socket inside it before its mode is set.
	private, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, fmt.Errorf("creating a private directory to bind %s in: %w", path, err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// The socket moves away from the name it was bound at; closing must not unlink by that
	// name, and removes the final one instead (see Close).
	l.SetUnlinkOnClose(false)
	if err := publishSocket(tmp, path, mode, gid); err != nil {
		l.Close()
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return &unixListener{UnixListener: l, path: path, fi: fi}, nil
}

// publishSocket gives the socket at tmp its mode and group, then renames it to path.
func publishSocket(tmp, path string, mode fs.FileMode, gid int) error {
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fmt.Errorf("setting group of %s to %d: %w", path, gid, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("moving socket into place at %s: %w", path, err)
	}
	return nil
}

// unixListener removes its socket file on Close, unless another file has replaced it.
type unixListener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
}

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
		if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	return err
}
