package ctrshim

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"banger/internal/api"
	"banger/internal/workspace"
)

// rootDisk is a container's rootfs packed as an ext4 image and uploaded to bangerd as a
// workspace (workspace.upload): the VM boots with it as a disk mounted at the container's
// root. `mkfs.ext4 -d` of the mounted snapshot (the shim is root, so it reads every file)
// keeps owners, modes, devices, FIFOs, hard links and extended attributes, and is ~10x
// faster than streaming the tree through the agent (docs/benchmarks.md). Only a container
// that gets its own VM can have one: a disk cannot be added to a running VM, so a pod's
// later containers are streamed in (rootfs.go).
type rootDisk struct {
	params api.WorkspaceParams
	close  func() // ends the upload stream; after the create claimed the image
}

// uploadRootDisk packs and uploads rootfs for the container root guestRoot. It answers
// nil, nil when the tree is larger than bangerd's workspace.max_size: the caller streams
// it instead.
func (d *daemonClient) uploadRootDisk(ctx context.Context, rootfs, guestRoot string) (_ *rootDisk, err error) {
	stream, res, err := d.c.WorkspaceUpload(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening the upload of the rootfs image: %w", err)
	}
	defer func() {
		if err != nil {
			stream.Close()
		}
	}()
	usage, entries, err := treeUsage(ctx, rootfs)
	if err != nil {
		return nil, err
	}
	if res.MaxBytes > 0 && usage > res.MaxBytes {
		stream.Close()
		return nil, nil
	}
	tmp, err := os.MkdirTemp("", "banger-shim-rootfs-")
	if err != nil {
		return nil, fmt.Errorf("making a directory for the rootfs image: %w", err)
	}
	defer os.RemoveAll(tmp) // bangerd has its own copy once Upload returns
	img := filepath.Join(tmp, "rootfs.ext4")
	if err := workspace.MakeImage(ctx, rootfs, img, workspace.ImageSize(usage), entries); err != nil {
		return nil, fmt.Errorf("packing the container's rootfs: %w", err)
	}
	if err := workspace.Upload(ctx, stream, img); err != nil {
		return nil, err
	}
	return &rootDisk{params: api.WorkspaceParams{Token: res.Token, Path: guestRoot}, close: func() { stream.Close() }}, nil
}

// treeUsage is the bytes of regular files and the number of entries under root (lstat:
// no link followed), which size the image and its inode table.
func treeUsage(ctx context.Context, root string) (usage, entries int64, err error) {
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		entries++
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			usage += fi.Size()
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("measuring the container's rootfs %s: %w", root, err)
	}
	return usage, entries, nil
}
