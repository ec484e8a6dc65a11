package ctl

import (
	"context"
	"fmt"
	"strings"

	"banger/internal/agentclient"
	"banger/internal/errdefs"
	"banger/internal/opid"
)

// splitRemote parses "NAME:/path"; a plain local path has no VM part. A path like
// "./a:b" is local: the VM part must be a plausible name (no '/').
func splitRemote(s string) (vm, path string) {
	i := strings.IndexByte(s, ':')
	if i <= 0 || strings.ContainsRune(s[:i], '/') {
		return "", s
	}
	return s[:i], s[i+1:]
}

// Copy copies files between the host and a VM: exactly one of src and dst is NAME:/path.
// opts bound the copy (see agentclient.CopyOptions); copying out treats the guest as hostile.
func Copy(ctx context.Context, g *Globals, src, dst string, opts agentclient.CopyOptions) error {
	ctx, id := opid.Ensure(ctx)
	svm, spath := splitRemote(src)
	dvm, dpath := splitRemote(dst)
	switch {
	case svm != "" && dvm != "":
		return errdefs.InvalidArgument("dst", dst, "copying between two VMs is not supported; copy through the host")
	case svm == "" && dvm == "":
		return errdefs.InvalidArgument("src", src, "one of src and dst must be NAME:/path")
	}
	vm := svm + dvm
	stream, err := g.client().VMAgent(ctx, vm)
	if err != nil {
		return err
	}
	defer stream.Close()
	if dvm != "" {
		err = agentclient.Put(ctx, stream, id, spath, dpath, opts)
	} else {
		err = agentclient.Get(ctx, stream, id, spath, dpath, opts)
	}
	if err != nil {
		return fmt.Errorf("copying %s to %s: %w (%s)", src, dst, err, id)
	}
	return nil
}
