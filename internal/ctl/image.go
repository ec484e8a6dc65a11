package ctl

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
)

// ImportImage is image import. Paths are made absolute: the daemon reads them itself.
func ImportImage(ctx context.Context, g *Globals, p api.ImageImportParams) error {
	for _, s := range []*string{&p.Bundle, &p.Kernel, &p.Initrd, &p.Rootfs} {
		if *s != "" {
			if abs, err := filepath.Abs(*s); err == nil {
				*s = abs
			}
		}
	}
	var res api.ImageResult
	if err := g.call(ctx, api.MethodImageImport, p, &res); err != nil {
		return err
	}
	return g.printImage(res.Image, "imported")
}

func (g *Globals) printImage(im model.Image, verb string) error {
	if g.JSON {
		return g.printJSON(im)
	}
	fmt.Fprintf(g.Stdout, "%s %s (%s)\n", verb, im.Name, shortID(im.ID))
	return nil
}

// ListImages prints the installed images.
func ListImages(ctx context.Context, g *Globals) error {
	var res api.ImageListResult
	if err := g.call(ctx, api.MethodImageList, nil, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.Images)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tVERSION\tARCH\tSIZE\tSOURCE\tAGE")
	for _, im := range res.Images {
		var size int64
		for _, f := range im.Files {
			size += f.Size
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortID(im.ID), im.Name, im.Version, im.Arch,
			humanBytes(size), im.Source, age(im.CreatedAt))
	}
	return tw.Flush()
}

func humanBytes(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}

// ShowImage prints one image with its files and digests.
func ShowImage(ctx context.Context, g *Globals, ref string) error {
	var res api.ImageResult
	if err := g.call(ctx, api.MethodImageShow, api.ImageRef{Image: ref}, &res); err != nil {
		return err
	}
	im := res.Image
	if g.JSON {
		return g.printJSON(im)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID:\t%s\nName:\t%s\nVersion:\t%s\nArch:\t%s\nSource:\t%s\nKernel args:\t%s\nDirectory:\t%s\nCreated:\t%s\n",
		im.ID, im.Name, im.Version, im.Arch, im.Source, im.KernelArgs, im.Dir, im.CreatedAt.Local().Format(time.RFC3339))
	for _, f := range im.Files {
		fmt.Fprintf(tw, "File %s:\t%s %s sha256:%s\n", f.Role, f.Name, humanBytes(f.Size), f.SHA256)
	}
	return tw.Flush()
}

// DeleteImage is image rm.
func DeleteImage(ctx context.Context, g *Globals, ref string) error {
	var res api.ImageResult
	if err := g.call(ctx, api.MethodImageDelete, api.ImageRef{Image: ref}, &res); err != nil {
		return err
	}
	return g.printImage(res.Image, "deleted")
}

// PullImage is image pull (and image build): an async operation with live progress.
func PullImage(ctx context.Context, g *Globals, method string, params any, isTTY bool) error {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := g.call(ctx, method, params, &begin); err != nil {
		return err
	}
	st, err := Follow(ctx, g, api.MethodOpStatus, begin.OpID, progressPrinter(g, isTTY))
	if err != nil {
		return err
	}
	if st.Image == nil {
		return fmt.Errorf("operation %s finished without an image", begin.OpID)
	}
	return g.printImage(*st.Image, "ready:")
}

// Catalog prints the catalog.
func Catalog(ctx context.Context, g *Globals) error {
	var res api.CatalogResult
	if err := g.call(ctx, api.MethodImageCatalog, nil, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.Entries)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tARCH\tINSTALLED\tSOURCE\tDESCRIPTION")
	for _, e := range res.Entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", e.Name, e.Version, e.Arch, e.Installed, e.Source, e.Description)
	}
	return tw.Flush()
}

// Doctor prints the daemon's host checks.
func Doctor(ctx context.Context, g *Globals) (bool, error) {
	var res api.DoctorResult
	if err := g.call(ctx, api.MethodDoctor, nil, &res); err != nil {
		return false, err
	}
	if g.JSON {
		return true, g.printJSON(res.Checks)
	}
	ok := true
	for _, c := range res.Checks {
		mark := "ok  "
		switch {
		case !c.OK && c.Optional:
			mark = "--  "
		case !c.OK:
			mark, ok = "FAIL", false
		}
		fmt.Fprintf(g.Stdout, "[%s] %-18s %s\n", mark, c.Name, c.Detail)
		if c.Fix != "" {
			fmt.Fprintf(g.Stdout, "       fix: %s\n", c.Fix)
		}
	}
	return ok, nil
}

// Ping prints the daemon's version and uptime.
func Ping(ctx context.Context, g *Globals) (*api.PingResult, error) {
	var res api.PingResult
	if err := g.call(ctx, api.MethodPing, nil, &res); err != nil {
		return nil, err
	}
	return &res, nil
}
