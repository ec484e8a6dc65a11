package ctl

import (
	"context"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"banger/internal/api"
	"banger/internal/model"
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
	im, err := g.client().ImageImport(ctx, p)
	if err != nil {
		return err
	}
	return g.printImage(*im, "imported")
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
	images, err := g.client().ImageList(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(images)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tVERSION\tARCH\tSIZE\tSOURCE\tAGE")
	for _, im := range images {
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
	im, err := g.client().ImageShow(ctx, ref)
	if err != nil {
		return err
	}
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
	im, err := g.client().ImageDelete(ctx, ref)
	if err != nil {
		return err
	}
	return g.printImage(*im, "deleted")
}

// PullImage is image pull: an async operation with live progress.
func PullImage(ctx context.Context, g *Globals, ref string, isTTY bool) error {
	im, err := g.client().ImagePull(ctx, api.ImagePullParams{Ref: ref}, progressPrinter(g, isTTY))
	if err != nil {
		return err
	}
	return g.printImage(*im, "ready:")
}

// BuildImage is image build: an async operation with live progress.
func BuildImage(ctx context.Context, g *Globals, p api.ImageBuildParams, isTTY bool) error {
	im, err := g.client().ImageBuild(ctx, p, progressPrinter(g, isTTY))
	if err != nil {
		return err
	}
	return g.printImage(*im, "ready:")
}

// Catalog prints the catalog.
func Catalog(ctx context.Context, g *Globals) error {
	entries, err := g.client().ImageCatalog(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(entries)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tARCH\tINSTALLED\tSOURCE\tDESCRIPTION")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", e.Name, e.Version, e.Arch, e.Installed, e.Source, e.Description)
	}
	return tw.Flush()
}

// Doctor prints the daemon's host checks.
func Doctor(ctx context.Context, g *Globals) (bool, error) {
	checks, err := g.client().Doctor(ctx)
	if err != nil {
		return false, err
	}
	if g.JSON {
		return true, g.printJSON(checks)
	}
	ok := true
	for _, c := range checks {
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
	return g.client().Ping(ctx)
}
