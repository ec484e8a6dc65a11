package guest

import (
	"banger/internal/agentproto"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// handleWatch answers a watch request: it starts recording changes under req.Path (see
// watch_linux.go) and replies with the guest's clock, like a list that matches nothing.
func (a *Agent) handleWatch(conn io.Writer, req agentproto.Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	root, err := filepath.EvalSymlinks(filepath.Clean(req.Path))
	if err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	now := time.Now().UnixNano()
	if err := a.watches.start(root); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	return reply(conn, agentproto.Reply{Now: now, Watching: true}, nil)
}

// listWatched writes the listing of root from its watch: every entry of each directory
// whose entries changed, and each entry that changed itself (lstat, nothing followed, not
// crossing into other mounts), in path order — what a walk with since would list, without
// the walk. ok is false when there is no usable watch (none started, or lost): the caller
// walks instead.
func (a *Agent) listWatched(root string, rootDev uint64, enc *json.Encoder) (ok bool, err error) {
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return false, nil
	}
	w := a.watches.take(real)
	if w == nil {
		return false, nil
	}
	dirs, paths, lost := w.changes()
	if lost != "" {
		a.log.Info("change watch lost; walking the workspace", "path", root, "why", lost)
		return false, nil
	}
	want := map[string]bool{}
	// A directory that changed itself (renamed, chmod'ed, created) is listed with its
	// entries, as the walk lists a directory whose ctime moved.
	listDirs := map[string]bool{}
	for d := range dirs {
		listDirs[d] = true
	}
	for p := range paths {
		want[p] = true
		if fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(p))); err == nil && fi.IsDir() {
			listDirs[p] = true
		}
	}
	for d := range listDirs {
		want[d] = true
		ents, err := os.ReadDir(filepath.Join(root, filepath.FromSlash(d)))
		if err != nil {
			continue // gone since: its parent changed too
		}
		for _, e := range ents {
			want[path.Join(d, e.Name())] = true
		}
	}
	list := make([]string, 0, len(want))
	for p := range want {
		if agentproto.ValidListPath(p) {
			list = append(list, p)
		}
	}
	sort.Strings(list)
	for _, rel := range list {
		p := filepath.Join(root, filepath.FromSlash(rel))
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			continue // removed, or a parent is no longer a directory: its parent lists that
		}
		if err != nil {
			return true, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Dev != rootDev {
			continue // another file system mounted below the workspace
		}
		e := agentproto.ListEntry{Path: rel, Mode: st.Mode, Size: st.Size, MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if e.Link, err = os.Readlink(p); err != nil {
				return true, err
			}
		}
		if err := enc.Encode(e); err != nil {
			return true, err
		}
	}
	return true, nil
}
