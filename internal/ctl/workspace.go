package ctl

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"banger/internal/agentproto"
	"banger/internal/api"
	"banger/internal/client"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/workspace"
)

// WorkspaceOptions are --workspace and --exclude.
type WorkspaceOptions struct {
	Spec     string // DIR[:GUESTPATH]; "" no workspace
	Excludes []string
}

// parseWorkspaceSpec splits DIR[:GUESTPATH]: the guest path is what follows the last ":/"
// (a directory name may hold ':' but then no guest path can follow it unambiguously).
func parseWorkspaceSpec(spec string) (dir, guestPath string, err error) {
	dir, guestPath = spec, agentproto.DefaultWorkspacePath
	if i := strings.LastIndex(spec, ":/"); i > 0 {
		dir, guestPath = spec[:i], spec[i+1:]
	}
	if dir == "" {
		return "", "", errdefs.InvalidArgument("--workspace", spec, "needs a directory (DIR[:GUESTPATH])")
	}
	if err := model.ValidateWorkspacePath("--workspace", guestPath); err != nil {
		return "", "", err
	}
	return dir, guestPath, nil
}

// workspaceUpload is a packed workspace held by the daemon for the create that follows:
// the daemon keeps the upload only while this stream is open, so Close (or this process
// dying) releases whatever the create did not claim.
type workspaceUpload struct {
	stream    *client.Stream
	params    api.WorkspaceParams
	root      string // the host tree, resolved
	skipped   []string
	manifest  map[string]workspace.ManifestEntry
	closeOnce func()
}

// pathOrEmpty is the guest mount point, "" without a workspace.
func (w *workspaceUpload) pathOrEmpty() string {
	if w == nil {
		return ""
	}
	return w.params.Path
}

// wsPathOf is the guest path a --workspace spec mounts at ("" when there is none).
func wsPathOf(spec string) string {
	if spec == "" {
		return ""
	}
	_, p, err := parseWorkspaceSpec(spec)
	if err != nil {
		return agentproto.DefaultWorkspacePath
	}
	return p
}

func (w *workspaceUpload) Close() {
	if w != nil {
		w.closeOnce()
	}
}

// uploadWorkspace packs o's tree and uploads it. Nothing is left anywhere when it fails
// or ctx ends: the temporary image is removed and the daemon drops the partial upload.
func uploadWorkspace(ctx context.Context, g *Globals, o WorkspaceOptions, quiet bool) (*workspaceUpload, error) {
	dir, guestPath, err := parseWorkspaceSpec(o.Spec)
	if err != nil {
		return nil, err
	}
	stream, res, err := g.client().WorkspaceUpload(ctx)
	if err != nil {
		return nil, err
	}
	w := &workspaceUpload{stream: stream}
	var once sync.Once
	w.closeOnce = func() { once.Do(func() { stream.Close() }) }
	// A stalled daemon must not hold Ctrl-C: closing the stream ends any blocked write.
	stop := context.AfterFunc(ctx, w.Close)
	defer stop()
	packed, err := workspace.Pack(ctx, workspace.Options{Dir: dir, Excludes: o.Excludes, MaxBytes: res.MaxBytes, Flag: "--workspace"})
	if err != nil {
		w.Close()
		return nil, err
	}
	defer packed.Remove()
	w.root, w.skipped, w.manifest = packed.Root, packed.Skipped, packed.Manifest
	if !quiet {
		msg := fmt.Sprintf("workspace: %d files, %s from %s", packed.Files, model.FormatSize(packed.Bytes), packed.Root)
		if packed.Excluded > 0 {
			msg += fmt.Sprintf(", %d excluded", packed.Excluded)
		}
		fmt.Fprintln(g.Stderr, msg)
		for i, s := range packed.Skipped {
			if i == 5 {
				fmt.Fprintf(g.Stderr, "workspace: … and %d more special files skipped\n", len(packed.Skipped)-5)
				break
			}
			fmt.Fprintf(g.Stderr, "workspace: skipped %s (not a regular file, directory or symlink)\n", s)
		}
	}
	if err := workspace.Upload(ctx, stream, packed.Image); err != nil {
		w.Close()
		return nil, err
	}
	w.params = api.WorkspaceParams{Token: res.Token, Path: guestPath}
	return w, nil
}
