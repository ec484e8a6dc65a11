package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"banger/internal/errdefs"
)

// ListEntry is one entry of a list reply: a file system entry under the listed path, as
// lstat saw it. Nothing is followed: a symlink is listed with its target.
type ListEntry struct {
	Path  string `json:"p"`           // relative to the listed path, slash separated; "." is the path itself
	Mode  uint32 `json:"m"`           // st_mode: type and permission bits
	Size  int64  `json:"s"`           // bytes (regular files, symlinks)
	MTime int64  `json:"mt"`          // modification time, ns since the epoch
	CTime int64  `json:"ct"`          // status change time, ns: any write or chmod moves it
	Ino   uint64 `json:"i"`           // inode number: a replaced file is a new inode
	Link  string `json:"l,omitempty"` // symlink target
}

// Limits of a listing the host accepts: a guest could otherwise send an endless one.
const (
	MaxListEntries = 1 << 20
	maxListLine    = 8 << 10
)

// handleList answers a list request: one JSON line per entry under req.Path (lstat, no
// symlink followed, not crossing into other mounts), as data frames, then data_eof.
func (a *Agent) handleList(conn io.Writer, req Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, Reply{}, err)
	}
	root := filepath.Clean(req.Path)
	rootFi, err := os.Lstat(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return reply(conn, Reply{}, errdefs.NotFound("guest path", req.Path))
		}
		return reply(conn, Reply{}, fmt.Errorf("reading %s: %w", req.Path, err))
	}
	rootDev := rootFi.Sys().(*syscall.Stat_t).Dev
	now := time.Now().UnixNano()
	if err := reply(conn, Reply{Now: now}, nil); err != nil {
		return err
	}
	fw := &frameWriter{w: conn}
	bw := bufio.NewWriterSize(dataWriter{fw: fw}, chunkSize)
	enc := json.NewEncoder(bw)
	if req.Since > now {
		// A clock probe: nothing can have changed after now.
		if err := bw.Flush(); err != nil {
			return err
		}
		return fw.write(FrameDataEOF, nil)
	}
	if req.Watched && req.Since > 0 {
		if ok, err := a.listWatched(root, rootDev, enc); ok {
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				_ = fw.write(FrameError, []byte(err.Error()))
				return err
			}
			return fw.write(FrameDataEOF, nil)
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
		e := ListEntry{Path: filepath.ToSlash(rel), Mode: st.Mode, Size: st.Size,
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
		_ = fw.write(FrameError, []byte(err.Error()))
		return err
	}
	return fw.write(FrameDataEOF, nil)
}

// List asks the agent for a listing of guestPath (since: see Request.Since) and returns
// it with the guest's clock at the start. The guest is not trusted: lines are capped, the
// count is capped at MaxListEntries, every path must be a clean relative path (no "..",
// no absolute name), and paths must be unique.
func List(ctx context.Context, conn io.ReadWriteCloser, opID, guestPathArg string, since int64) ([]ListEntry, int64, error) {
	defer conn.Close()
	defer bindContext(ctx, conn)()
	what := "listing guest " + guestPathArg
	br := bufio.NewReader(conn)
	r, err := roundTrip(ctx, conn, br, Request{Type: TypeList, OpID: opID, Path: guestPathArg, Since: since})
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	if err := r.err(); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	out, err := readListing(ctx, br, what)
	return out, r.Now, err
}

func readListing(ctx context.Context, br *bufio.Reader, what string) ([]ListEntry, error) {
	sc := bufio.NewScanner(&dataReader{r: br})
	sc.Buffer(make([]byte, 0, 4096), maxListLine)
	var out []ListEntry
	seen := map[string]bool{}
	for sc.Scan() {
		if len(out) >= MaxListEntries {
			return nil, fmt.Errorf("%s: more than %d entries", what, MaxListEntries)
		}
		var e ListEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s: bad entry: %w", what, err)
		}
		if !ValidListPath(e.Path) || seen[e.Path] {
			return nil, fmt.Errorf("%s: refusing entry %q", what, peerText(e.Path, maxPeerMessage))
		}
		seen[e.Path] = true
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, failure(ctx, what, err)
	}
	return out, nil
}

// ValidListPath reports whether p is "." or a clean relative slash path with no ".."
// element and no NUL.
func ValidListPath(p string) bool {
	if p == "." {
		return true
	}
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p && p != ".." &&
		!strings.HasPrefix(p, "../") && !strings.ContainsRune(p, 0)
}
