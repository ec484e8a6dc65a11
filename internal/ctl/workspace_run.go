package ctl

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/oplog"
	"banger/internal/workspace"
)

// agentStream opens one vm.agent stream (one agent request) to vm.
func agentStream(ctx context.Context, g *Globals, vm string) (io.ReadWriteCloser, error) {
	return g.client().VMAgent(ctx, vm)
}

// listWorkspace lists the workspace tree in the guest (since: agentproto.Request.Since) and
// returns the guest's clock at the start.
func listWorkspace(ctx context.Context, g *Globals, vm, guestPath string, since int64) ([]agentproto.ListEntry, int64, error) {
	ctx, id := opid.Ensure(ctx)
	st, err := agentStream(ctx, g, vm)
	if err != nil {
		return nil, 0, err
	}
	return agentclient.List(ctx, st, id, guestPath, since)
}

// listWatched is listWorkspace answered from the agent's watch.
func listWatched(ctx context.Context, g *Globals, vm, guestPath string, since int64) ([]agentproto.ListEntry, error) {
	ctx, id := opid.Ensure(ctx)
	st, err := agentStream(ctx, g, vm)
	if err != nil {
		return nil, err
	}
	return agentclient.ListWatched(ctx, st, id, guestPath, since)
}

// guestClock reads the guest's wall clock (a list that can match nothing) for --diff's
// since. The margin covers the kernel's coarse file-time clock, which may lag by a tick.
func guestClock(ctx context.Context, g *Globals, vm, guestPath string) (int64, error) {
	_, now, err := listWorkspace(ctx, g, vm, guestPath, math.MaxInt64)
	if err == nil && now <= 0 {
		err = fmt.Errorf("the guest agent reported no clock")
	}
	return now - clockMargin, err
}

// diffWatch is what --diff learned before the command: the guest's clock, and whether the
// agent records the command's changes (so the listing after it needs no walk).
type diffWatch struct {
	since    int64
	watching bool
}

// startDiffWatch asks the agent to watch the workspace and reads the guest's clock. An
// agent from before watches gets the clock probe alone (the listing then walks); one from
// before listings cannot do --diff at all, and says so.
func startDiffWatch(ctx context.Context, g *Globals, vm, guestPath string) (diffWatch, error) {
	ctx, id := opid.Ensure(ctx)
	st, err := agentStream(ctx, g, vm)
	if err != nil {
		return diffWatch{}, err
	}
	now, err := agentclient.Watch(ctx, st, id, guestPath)
	if err == nil {
		return diffWatch{since: now - clockMargin, watching: true}, nil
	}
	if !agentclient.IsUnknownRequest(err) {
		oplog.G(ctx).Debug("no change watch; the listing will walk", "error", err.Error())
	}
	since, err := guestClock(ctx, g, vm, guestPath)
	if agentclient.IsUnknownRequest(err) {
		return diffWatch{}, errdefs.WithHint(errdefs.New(errdefs.ErrConflict,
			"the image's guest agent is too old for --diff (it has no list request): %w", err),
			"rebuild or re-pull the image with this banger (banger image rm IMAGE, then run again)")
	}
	return diffWatch{since: since}, err
}

// clockMargin covers the kernel's coarse file-time clock, which may lag by a tick.
const clockMargin = int64(50 * time.Millisecond)

// getFromGuest copies guestPath into the host directory dir (created if missing) through
// the hardened extractor: what lands is dir/base(guestPath) and nothing else.
func getFromGuest(ctx context.Context, g *Globals, vm, guestPath, dir string) error {
	ctx, id := opid.Ensure(ctx)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	st, err := agentStream(ctx, g, vm)
	if err != nil {
		return err
	}
	if err := agentclient.Get(ctx, st, id, guestPath, dir, agentclient.CopyOptions{}); err != nil {
		return fmt.Errorf("copying %s out of vm %s: %w (%s)", guestPath, vm, err, id)
	}
	return nil
}

// fetchParallel is how many changed files are copied out at once: each copy is a round
// trip through the daemon and the agent, so a few in flight hide the latency.
const fetchParallel = 4

// fetchAll copies the changed paths (relative to guestRoot) into dst at the same places.
// Every parent directory is made first, so concurrent copies never race to create one.
func fetchAll(ctx context.Context, g *Globals, vm, guestRoot, dst string, paths []string) error {
	for _, p := range paths {
		if err := os.MkdirAll(filepath.Join(dst, filepath.FromSlash(path.Dir(p))), 0o755); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, fetchParallel)
	errs := make(chan error, len(paths))
	for _, p := range paths {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			err := getFromGuest(ctx, g, vm, path.Join(guestRoot, p), filepath.Join(dst, filepath.FromSlash(path.Dir(p))))
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	for range paths {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// parseOut splits --out GUESTPATH[:HOSTDIR]; a relative GUESTPATH is under the workspace,
// HOSTDIR defaults to the current directory.
func parseOut(spec, wsPath string) (guestPath, hostDir string, err error) {
	guestPath, hostDir = spec, "."
	if i := strings.IndexByte(spec, ':'); i >= 0 {
		guestPath, hostDir = spec[:i], spec[i+1:]
	}
	if guestPath == "" || hostDir == "" {
		return "", "", errdefs.InvalidArgument("--out", spec, "must be GUESTPATH[:HOSTDIR]")
	}
	if !path.IsAbs(guestPath) {
		if wsPath == "" {
			return "", "", errdefs.InvalidArgument("--out", spec, "a relative GUESTPATH needs --workspace")
		}
		guestPath = path.Join(wsPath, guestPath)
	}
	guestPath = path.Clean(guestPath)
	if guestPath == "/" {
		return "", "", errdefs.InvalidArgument("--out", spec, "cannot copy the whole guest root")
	}
	return guestPath, hostDir, nil
}

// workspaceDiff builds the patch of what the command changed under the workspace (before
// is the guest's clock just before it) and writes it to target ("-": stdout).
func workspaceDiff(ctx context.Context, g *Globals, vm string, ws *workspaceUpload, dw diffWatch, target string) (retErr error) {
	since := dw.since
	var after []agentproto.ListEntry
	var err error
	if dw.watching {
		after, err = listWatched(ctx, g, vm, ws.params.Path, since)
	} else {
		after, _, err = listWorkspace(ctx, g, vm, ws.params.Path, since)
	}
	if err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	changes := workspace.Compare(ws.manifest, after, since)
	var out io.Writer = g.Stdout
	if target != "-" {
		// Written only once the patch is complete, so a failure never leaves half a patch.
		f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".tmp-")
		if err != nil {
			return fmt.Errorf("--diff: creating %s: %w", target, err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		out = f
		defer func() {
			if retErr == nil {
				if retErr = f.Close(); retErr == nil {
					retErr = os.Rename(f.Name(), target)
				}
				if retErr != nil {
					retErr = fmt.Errorf("--diff: writing %s: %w", target, retErr)
				}
			}
		}()
	}
	if changes.Empty() {
		return nil
	}
	tmp, err := os.MkdirTemp("", "banger-diff-")
	if err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	defer os.RemoveAll(tmp)
	// Names unlike any path prefix git prints, so only they are rewritten.
	a, b := filepath.Join(tmp, "banger-old"), filepath.Join(tmp, "banger-new")
	if err := os.Mkdir(a, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(b, 0o700); err != nil {
		return err
	}
	if err := workspace.CopyOriginals(ws.root, a, changes.Old); err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	if err := fetchAll(ctx, g, vm, ws.params.Path, b, changes.Fetch); err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	if err := workspace.MakeLinks(b, changes.Links); err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	if err := workspace.GitDiff(ctx, a, b, out); err != nil {
		return fmt.Errorf("--diff: %w", err)
	}
	return nil
}
