package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/oplog"
	"banger/internal/rpc"
	"banger/internal/workspace"
)

// Workspaces: the CLI, which runs as the user and may read the user's tree, packs it into
// an ext4 image and uploads it here over workspace.upload; the daemon never opens a path
// a client names, so a client cannot make it read files the client could not read itself
// (bangerd may run as a service user). The upload is held in the staging directory only
// while its stream stays open: a vm.create.begin naming its token claims it (a rename into
// the VM's directory); when the stream ends unclaimed — the CLI finished, failed or was
// interrupted — the file is removed, so an interrupted preparation leaves nothing behind.

// workspaceTokenRe is what an upload token looks like (it becomes a file name).
var workspaceTokenRe = regexp.MustCompile(`^[0-9a-f]{32}$`)

// uploads tracks staged workspace images by token.
type uploads struct {
	mu sync.Mutex
	m  map[string]*upload
}

type upload struct {
	path     string
	complete bool
}

func (d *Daemon) workspaceStagingDir() string { return filepath.Join(d.cfg.StateDir, "workspaces") }

// workspaceLimits derives the upload bounds from workspace.max_size, which bounds a tree's
// file bytes (the CLI checks it while walking). The image holds more than that: every
// file's last block is rounded up to 4 KiB and every entry has an inode and directory
// space, so data is capped at twice the limit plus 1 GiB (a tree of many tiny files can
// still be refused here); the apparent size is sparse and costs nothing, so its cap only
// has to stop absurd values.
func (d *Daemon) workspaceLimits() workspace.ReceiveLimits {
	m := d.cfg.Workspace.MaxSizeBytes
	return workspace.ReceiveLimits{MaxSize: 4*m + 8<<30, MaxData: 2*m + 1<<30}
}

// workspaceUpload is the workspace.upload stream.
func (d *Daemon) workspaceUpload(ctx context.Context, params json.RawMessage, s *rpc.Stream) error {
	if err := rpc.NoParams(params); err != nil {
		return err
	}
	dir := d.workspaceStagingDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the workspace staging directory: %w", err)
	}
	var b [16]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	path := filepath.Join(dir, token+".ext4")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating the workspace image: %w", err)
	}
	u := &upload{path: path}
	d.uploads.mu.Lock()
	if d.uploads.m == nil {
		d.uploads.m = map[string]*upload{}
	}
	d.uploads.m[token] = u
	d.uploads.mu.Unlock()
	log := oplog.G(ctx)
	defer func() {
		// Unclaimed when the stream ends: the create never came, failed before claiming, or
		// the CLI is gone. A claimed upload was renamed away and is no longer in the map.
		d.uploads.mu.Lock()
		_, unclaimed := d.uploads.m[token]
		delete(d.uploads.m, token)
		d.uploads.mu.Unlock()
		if unclaimed {
			os.Remove(path)
		}
	}()
	// A hang-up must end a stalled read; the stream's context ends with the connection
	// only for synchronous calls, so close the stream when the daemon or request ends.
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	if err := s.Accept(api.WorkspaceUploadResult{Token: token, MaxBytes: d.cfg.Workspace.MaxSizeBytes}); err != nil {
		f.Close()
		return err
	}
	n, err := workspace.ReceiveImage(s, f, d.workspaceLimits())
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("writing the workspace image: %w", cerr)
	}
	reply := map[string]any{"ok": err == nil}
	if err != nil {
		log.Warn("workspace upload failed", "error", err.Error())
		reply["error"] = err.Error()
	}
	line, _ := json.Marshal(reply)
	if _, werr := s.Write(append(line, '\n')); werr != nil || err != nil {
		return nil
	}
	d.uploads.mu.Lock()
	u.complete = true
	d.uploads.mu.Unlock()
	log.Info("workspace uploaded", "token", token, "data_bytes", n)
	// Hold the image until the client hangs up; anything it sends meanwhile is ignored.
	io.Copy(io.Discard, s)
	return nil
}

// claimWorkspace moves the finished upload token into dst (a VM's directory).
func (d *Daemon) claimWorkspace(token, dst string) error {
	d.uploads.mu.Lock()
	u, ok := d.uploads.m[token]
	if ok && u.complete {
		delete(d.uploads.m, token)
	}
	d.uploads.mu.Unlock()
	switch {
	case !ok:
		return errdefs.InvalidArgument("workspace.token", token, "names no workspace upload in progress (its workspace.upload stream must stay open until the create)")
	case !u.complete:
		return errdefs.New(errdefs.ErrConflict, "workspace upload %s is not finished", token)
	}
	if err := os.Rename(u.path, dst); err != nil {
		os.Remove(u.path)
		return fmt.Errorf("moving the workspace image into the vm directory: %w", err)
	}
	return nil
}

// sweepWorkspaces removes staged uploads a previous daemon left: their streams are gone.
func (d *Daemon) sweepWorkspaces() {
	dir := d.workspaceStagingDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		os.Remove(filepath.Join(dir, e.Name()))
	}
}
