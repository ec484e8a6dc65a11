package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/imagecat"
	"banger/internal/imagestore"
	"banger/internal/model"
	"banger/internal/oplog"
)

// findOrAutoPullImage resolves ref in the store, and when it is missing but the catalog
// knows it, pulls (or builds) it first. Concurrent callers share one fetch.
func (d *Daemon) findOrAutoPullImage(ctx context.Context, ref string, prog progress) (*model.Image, error) {
	im, err := d.store.ResolveImage(ctx, ref)
	if err == nil {
		return im, nil
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	entry, ok := d.catalog.Lookup(ref)
	if !ok {
		return nil, errdefs.WithHint(errdefs.NotFound("image", ref),
			"list images with `banger image ls` and the catalog with `banger image catalog`, or import one with `banger image import`")
	}
	prog.stage(ctx, "auto_pull_image", fmt.Sprintf("%s is not installed; fetching it from the catalog", ref), "image", ref)
	return d.fetchImage(ctx, entry, "auto_pull_image", prog)
}

// fetchImage pulls or builds a catalog entry once, however many callers want it; progress
// is reported as stage.
func (d *Daemon) fetchImage(ctx context.Context, entry imagecat.Entry, stage string, prog progress) (*model.Image, error) {
	source := entry.SourceString()
	if entry.Name != "" {
		source = "catalog:" + entry.Name + " (" + source + ")"
	}
	return d.fetch.Do(ctx, entry.Key(), func(ctx context.Context, report func(imagecat.Progress)) (im *model.Image, err error) {
		start := time.Now()
		defer func() {
			result := "ok"
			if err != nil {
				result = "error"
			}
			d.metrics.fetchTime.WithLabelValues(result).Observe(time.Since(start).Seconds())
		}()
		bundle, cleanup, err := d.produceBundle(ctx, entry, report)
		if err != nil {
			return nil, err
		}
		defer cleanup()
		return d.publishBundle(ctx, bundle, entry.Name, source)
	}, func(p imagecat.Progress) {
		prog.count(ctx, stage, p.String(), p.Done, p.Total)
	})
}

// produceBundle makes a verified bundle directory for entry: downloaded or built.
func (d *Daemon) produceBundle(ctx context.Context, entry imagecat.Entry, report func(imagecat.Progress)) (string, func(), error) {
	work, err := os.MkdirTemp(d.cfg.CacheDir(), "build-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(work) }
	dir, err := imagecat.Produce(ctx, entry, imagecat.Env{
		ImagesDir:    d.cfg.ImagesDir(),
		CacheDir:     d.cfg.CacheDir(),
		WorkDir:      work,
		AgentPath:    d.agentPath(),
		DebianMirror: d.cfg.DebianMirror,
		Log:          oplog.G(ctx),
	}, report)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return dir, cleanup, nil
}

// publishBundle imports a bundle into the image store and records it. The bundle is copied
// and hashed without imageMu; only the publication takes it.
func (d *Daemon) publishBundle(ctx context.Context, bundle, name, source string) (*model.Image, error) {
	if name != "" {
		if im, err := d.store.ResolveImage(ctx, name); err == nil && im.Name == name {
			return im, nil
		}
	}
	staged, err := imagestore.PrepareBundle(ctx, d.cfg.ImagesDir(), bundle, name)
	if err != nil {
		return nil, err
	}
	defer staged.Discard()
	d.imageMu.Lock()
	defer d.imageMu.Unlock()
	if name != "" {
		if im, err := d.store.ResolveImage(ctx, name); err == nil && im.Name == name {
			return im, nil
		}
	}
	im, err := staged.Commit()
	if err != nil {
		return nil, err
	}
	// The bundle was a temporary directory; where it came from is the catalog entry.
	im.Source = source
	return d.recordImage(ctx, im, source)
}

// publishStaged publishes an image prepared without the lock: under imageMu it re-checks
// that the requested name is still free, renames the files into place and records the row,
// so publications and removals stay ordered while the slow copying is not.
func (d *Daemon) publishStaged(ctx context.Context, staged *imagestore.Staged, name string) (*model.Image, error) {
	d.imageMu.Lock()
	defer d.imageMu.Unlock()
	if err := d.checkNameFree(ctx, name); err != nil {
		return nil, err
	}
	im, err := staged.Commit()
	if err != nil {
		return nil, err
	}
	return d.recordImage(ctx, im, "import")
}

func (d *Daemon) checkNameFree(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	if existing, err := d.store.ResolveImage(ctx, name); err == nil && existing.Name == name {
		return errdefs.New(errdefs.ErrAlreadyExists, "image name %q already exists", name)
	}
	return nil
}

func (d *Daemon) recordImage(ctx context.Context, im *model.Image, source string) (*model.Image, error) {
	if existing, err := d.store.GetImage(ctx, im.ID); err == nil {
		return existing, nil
	}
	if im.Source == "" {
		im.Source = source
	}
	if err := d.store.InsertImage(ctx, im); err != nil {
		return nil, err
	}
	oplog.G(ctx).Info("image published", "image", im.Name, "image_id", im.ID)
	return im, nil
}

// agentPath is the guest agent binary that builders put into initrds.
func (d *Daemon) agentPath() string {
	if d.cfg.AgentPath != "" {
		return d.cfg.AgentPath
	}
	exe, err := os.Executable()
	if err != nil {
		return "banger-agent"
	}
	return filepath.Join(filepath.Dir(exe), "banger-agent")
}

// importImage is image.import. The files named are untrusted input (a FIFO, a device, a
// huge sparse file): they are checked, copied and hashed with no lock held and under ctx,
// which ends when the client hangs up; only the publication takes imageMu.
func (d *Daemon) importImage(ctx context.Context, p api.ImageImportParams) (*model.Image, error) {
	if p.Name != "" {
		if err := model.ValidateName("name", p.Name); err != nil {
			return nil, err
		}
	}
	// Fail fast on a taken name; publishStaged checks again under the lock.
	if err := d.checkNameFree(ctx, p.Name); err != nil {
		return nil, err
	}
	var (
		staged *imagestore.Staged
		err    error
	)
	switch {
	case p.Bundle != "":
		staged, err = imagestore.PrepareBundle(ctx, d.cfg.ImagesDir(), p.Bundle, p.Name)
	case p.Kernel != "" || p.Rootfs != "":
		if p.Name == "" {
			return nil, errdefs.InvalidArgument("name", "", "is required when importing loose files")
		}
		if p.Kernel == "" {
			return nil, errdefs.InvalidArgument("kernel", "", "is required")
		}
		if p.Rootfs == "" {
			return nil, errdefs.InvalidArgument("rootfs", "", "is required")
		}
		staged, err = imagestore.PrepareFiles(ctx, d.cfg.ImagesDir(), p.Name, p.Kernel, p.Initrd, p.Rootfs)
	default:
		return nil, errdefs.InvalidArgument("bundle", "", "give a bundle path, or --kernel and --rootfs")
	}
	if err != nil {
		return nil, err
	}
	defer staged.Discard()
	return d.publishStaged(ctx, staged, p.Name)
}

func (d *Daemon) deleteImage(ctx context.Context, ref string) (*model.Image, error) {
	d.imageMu.Lock()
	defer d.imageMu.Unlock()
	im, err := d.store.ResolveImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	users, err := d.store.VMsUsingImage(ctx, im.ID)
	if err != nil {
		return nil, err
	}
	if len(users) > 0 {
		var names []string
		for _, vm := range users {
			names = append(names, vm.Name)
		}
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrConflict, "image %s is used by vm(s): %s", im.Name, strings.Join(names, ", ")),
			"delete those VMs first")
	}
	if err := d.store.DeleteImage(ctx, im.ID); err != nil {
		return nil, err
	}
	if err := imagestore.Remove(d.cfg.ImagesDir(), im.ID); err != nil {
		return nil, err
	}
	return im, nil
}

// pullImage is image.pull and image.build for catalog names: fetch even when present? No:
// an installed image is returned as is; `image rm` first to refetch.
func (d *Daemon) pullImage(ctx context.Context, ref string, prog progress) (*model.Image, error) {
	if im, err := d.store.ResolveImage(ctx, ref); err == nil && im.Name == ref {
		prog.stage(ctx, "image_resolved", "already installed", "image", im.Name, "image_id", im.ID)
		return im, nil
	}
	entry, ok := d.catalog.Lookup(ref)
	if !ok {
		if strings.HasPrefix(ref, "http://") || strings.HasPrefix(ref, "https://") {
			entry = imagecat.URLEntry(ref)
		} else {
			return nil, errdefs.WithHint(errdefs.NotFound("catalog image", ref), "see `banger image catalog`")
		}
	}
	return d.fetchImage(ctx, entry, "pull_image", prog)
}

// buildImage is image.build: a builder run with an explicit name.
func (d *Daemon) buildImage(ctx context.Context, p api.ImageBuildParams, prog progress) (*model.Image, error) {
	entry, err := imagecat.BuilderEntryWithKernel(p.Builder, p.Ref, p.Name, p.Packages, p.Kernel)
	if err != nil {
		return nil, err
	}
	if err := model.ValidateName("name", entry.Name); err != nil {
		return nil, err
	}
	if im, err := d.store.ResolveImage(ctx, entry.Name); err == nil && im.Name == entry.Name {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrAlreadyExists, "image %q already exists", entry.Name),
			"remove it with `banger image rm "+entry.Name+"` to rebuild")
	}
	return d.fetchImage(ctx, entry, "build_image", prog)
}

// beginImageOp runs fn as an async operation (image.pull.begin, image.build).
func (d *Daemon) beginImageOp(ctx context.Context, kind string, fn func(ctx context.Context, prog progress) (*model.Image, error)) (api.BeginResult, error) {
	return d.beginOp(ctx, kind, func(ctx context.Context, op *operation) {
		im, err := fn(ctx, progress{op})
		op.finish(nil, im, err)
	})
}

// catalogEntries is image.catalog: what the catalogs offer and whether it is installed.
func (d *Daemon) catalogEntries(ctx context.Context) (api.CatalogResult, error) {
	ims, err := d.store.ListImages(ctx)
	if err != nil {
		return api.CatalogResult{}, err
	}
	installed := map[string]bool{}
	for _, im := range ims {
		installed[im.Name] = true
	}
	res := api.CatalogResult{Entries: []api.CatalogEntry{}}
	for _, e := range d.catalog.Entries() {
		res.Entries = append(res.Entries, api.CatalogEntry{Name: e.Name, Version: e.Version, Arch: e.Arch,
			Description: e.Description, Source: e.SourceString(), Installed: installed[e.Name]})
	}
	return res, nil
}
