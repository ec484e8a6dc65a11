package guest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// handleList answers a list request: one JSON line per entry under req.Path (lstat, no
// symlink followed, not crossing into other mounts), as data frames, then data_eof.
func (a *Agent) handleList(conn io.Writer, req agentproto.Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	root := filepath.Clean(req.Path)
	rootFi, err := os.Lstat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return reply(conn, agentproto.Reply{}, errdefs.NotFound("guest path", req.Path))
		}
		return reply(conn, agentproto.Reply{}, fmt.Errorf("reading %s: %w", req.Path, err))
	}
	rootDev := rootFi.Sys().(*syscall.Stat_t).Dev
	now := time.Now().UnixNano()
	if err := reply(conn, agentproto.Reply{Now: now}, nil); err != nil {
		return err
	}
	fw := &agentproto.FrameWriter{W: conn}
	bw := bufio.NewWriterSize(agentproto.DataWriter{FW: fw}, agentproto.ChunkSize)
	enc := json.NewEncoder(bw)
	if req.Since > now {
		// A clock probe: nothing can have changed after now.
		if err := bw.Flush(); err != nil {
			return err
		}
		return fw.Write(agentproto.FrameDataEOF, nil)
	}
	if req.Watched && req.Since > 0 {
		if ok, err := a.listWatched(root, rootDev, enc); ok {
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				_ = fw.Write(agentproto.FrameError, []byte(err.Error()))
				return err
			}
			return fw.Write(agentproto.FrameDataEOF, nil)
		}
	}
	// With since, a directory whose ctime or mtime moved is listed with all its entries, so
	// the client sees what is missing from it (deletions, renames away).
	changedDirs := map[string]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while listing
			}
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if d.IsDir() && st.Dev != rootDev {
			return filepath.SkipDir
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		e := agentproto.ListEntry{Path: filepath.ToSlash(rel), Mode: st.Mode, Size: st.Size,
			MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino}
		if req.Since > 0 {
			changed := e.CTime >= req.Since || e.MTime >= req.Since
			if d.IsDir() && changed {
				changedDirs[p] = true
			}
			if !changed && !changedDirs[filepath.Dir(p)] {
				return nil
			}
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if e.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		return enc.Encode(e)
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		_ = fw.Write(agentproto.FrameError, []byte(err.Error()))
		return err
	}
	return fw.Write(agentproto.FrameDataEOF, nil)
}
