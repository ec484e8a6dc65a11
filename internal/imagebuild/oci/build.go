package oci

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"banger/internal/errdefs"
	"banger/internal/imagebuild"
	"banger/internal/imagestore"
)

// Build makes a bundle from a container image: its flattened filesystem as rootfs.ext4,
// the Debian cloud kernel as vmlinux and the banger initrd (agent as /init plus the guest
// modules). The agent stays PID 1 after switching into the container's filesystem, so the
// image needs no init of its own. It returns a bundle directory inside opts.WorkDir for
// imagestore.ImportBundle; the caller removes it afterwards.
func Build(ctx context.Context, ref string, opts Options) (bundleDir string, err error) {
	r, err := ParseRef(ref, opts.Insecure)
	if err != nil {
		return "", err
	}
	if opts.WorkDir == "" {
		return "", errdefs.InvalidArgument("work_dir", "", "is required")
	}
	if opts.CacheDir == "" {
		return "", errdefs.InvalidArgument("cache_dir", "", "is required")
	}
	if err := imagebuild.CheckAgent(opts.AgentPath); err != nil {
		return "", err
	}
	log := opts.log().With("ref", r.String())
	start := time.Now()

	if err := os.MkdirAll(opts.WorkDir, 0o755); err != nil {
		return "", fmt.Errorf("creating work dir: %w", err)
	}
	dir, err := os.MkdirTemp(opts.WorkDir, "oci-bundle-")
	if err != nil {
		return "", fmt.Errorf("creating bundle dir: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()

	rootfsOpts := opts
	rootfsOpts.Out = filepath.Join(dir, imagestore.RootfsName)
	if err := BuildRootfs(ctx, ref, rootfsOpts); err != nil {
		return "", err
	}
	kernel, err := imagebuild.KernelAndInitrd(ctx, imagebuild.BootFiles{
		CacheDir: opts.CacheDir, AgentPath: opts.AgentPath, OutDir: dir, Log: opts.log(),
	})
	if err != nil {
		return "", err
	}
	m := imagestore.Manifest{
		Schema:  imagestore.SchemaVersion,
		Name:    ImageName(r),
		Version: imageVersion(r),
		Arch:    imagestore.ArchX86_64,
	}
	if err := imagebuild.WriteBundleManifest(dir, m); err != nil {
		return "", err
	}
	log.Info("oci bundle built", "dir", dir, "kernel", kernel, "duration_ms", time.Since(start).Milliseconds())
	return dir, nil
}

var nonLabel = regexp.MustCompile(`[^a-z0-9]+`)

// ImageName derives a banger image name (a DNS label) from a reference:
// docker.io/library/alpine:3.20 -> alpine-3-20, ghcr.io/org/tool@sha256:… -> tool.
func ImageName(r name.Reference) string {
	repo := r.Context().RepositoryStr()
	base := repo[strings.LastIndex(repo, "/")+1:]
	n := base
	if tag, ok := r.(name.Tag); ok && tag.TagStr() != "latest" {
		n += "-" + tag.TagStr()
	}
	n = strings.Trim(nonLabel.ReplaceAllString(strings.ToLower(n), "-"), "-")
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	if n == "" {
		return "oci-image"
	}
	return n
}

// imageVersion is the tag, or the first 12 hex digits of a digest reference.
func imageVersion(r name.Reference) string {
	switch v := r.(type) {
	case name.Tag:
		return v.TagStr()
	case name.Digest:
		d := strings.TrimPrefix(v.DigestStr(), "sha256:")
		return d[:min(12, len(d))]
	}
	return "latest"
}
