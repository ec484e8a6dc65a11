package ctl

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"banger/internal/api"
	"banger/internal/model"
)

// CreateSnapshot is snapshot create: an async operation whose stages are shown.
func CreateSnapshot(ctx context.Context, g *Globals, p api.SnapshotCreateParams, quiet bool) (*model.Snapshot, error) {
	sn, err := g.client().SnapshotCreate(ctx, p, stagePrinter(g, quiet || g.JSON))
	if err != nil {
		return nil, err
	}
	if g.JSON {
		return sn, g.printJSON(sn)
	}
	fmt.Fprintf(g.Stdout, "%s created (%s)\n", sn.Name, shortID(sn.ID))
	return sn, nil
}

// ListSnapshots prints the snapshots.
func ListSnapshots(ctx context.Context, g *Globals) error {
	list, err := g.client().SnapshotList(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(list)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tVM\tIMAGE\tMEMORY\tVMM\tSIZE\tAGE")
	for _, sn := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortID(sn.ID), sn.Name, sn.VMName, sn.ImageName,
			model.FormatSize(int64(sn.MemoryMiB)<<20), sn.VMM+"/"+sn.Accel, humanBytes(sn.SizeBytes), age(sn.CreatedAt))
	}
	return tw.Flush()
}

// ShowSnapshot prints one snapshot.
func ShowSnapshot(ctx context.Context, g *Globals, ref string) error {
	snp, err := g.client().SnapshotShow(ctx, ref)
	if err != nil {
		return err
	}
	sn := *snp
	if g.JSON {
		return g.printJSON(sn)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", sn.ID)
	row("Name", sn.Name)
	row("VM", fmt.Sprintf("%s (%s)", sn.VMName, shortID(sn.VMID)))
	row("Image", fmt.Sprintf("%s (%s)", sn.ImageName, shortID(sn.ImageID)))
	row("VMM", sn.VMM+"/"+sn.Accel)
	row("vCPU", fmt.Sprint(sn.VCPU))
	row("Memory", model.FormatSize(int64(sn.MemoryMiB)<<20))
	row("Size on disk", humanBytes(sn.SizeBytes))
	row("Directory", sn.Dir)
	row("Created", sn.CreatedAt.Local().Format(time.RFC3339))
	return tw.Flush()
}

// DeleteSnapshot is snapshot rm.
func DeleteSnapshot(ctx context.Context, g *Globals, ref string, force bool) error {
	sn, err := g.client().SnapshotDelete(ctx, api.SnapshotDeleteParams{Snapshot: ref, Force: force})
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(sn)
	}
	fmt.Fprintf(g.Stdout, "%s deleted\n", sn.Name)
	return nil
}

// ForkVM is vm fork: an async operation; prints one line per fork.
func ForkVM(ctx context.Context, g *Globals, p api.VMForkParams, quiet bool) error {
	vms, err := g.client().VMFork(ctx, p, stagePrinter(g, quiet || g.JSON))
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(vms)
	}
	for _, vm := range vms {
		fmt.Fprintf(g.Stdout, "%s %s %s\n", vm.Name, vm.State, vm.GuestIP)
	}
	return nil
}
