package ctl

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
)

// CreateSnapshot is snapshot create: an async operation whose stages are shown.
func CreateSnapshot(ctx context.Context, g *Globals, p api.SnapshotCreateParams, quiet bool) (*model.Snapshot, error) {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := g.call(ctx, api.MethodSnapshotCreateBegin, p, &begin); err != nil {
		return nil, err
	}
	st, err := Follow(ctx, g, api.MethodOpStatus, begin.OpID, stagePrinter(g, quiet || g.JSON))
	if err != nil {
		return nil, err
	}
	if st.Snapshot == nil {
		return nil, fmt.Errorf("snapshot.create finished without a snapshot (%s)", begin.OpID)
	}
	if g.JSON {
		return st.Snapshot, g.printJSON(st.Snapshot)
	}
	fmt.Fprintf(g.Stdout, "%s created (%s)\n", st.Snapshot.Name, shortID(st.Snapshot.ID))
	return st.Snapshot, nil
}

// ListSnapshots prints the snapshots.
func ListSnapshots(ctx context.Context, g *Globals) error {
	var res api.SnapshotListResult
	if err := g.call(ctx, api.MethodSnapshotList, nil, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.Snapshots)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tVM\tIMAGE\tMEMORY\tVMM\tSIZE\tAGE")
	for _, sn := range res.Snapshots {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortID(sn.ID), sn.Name, sn.VMName, sn.ImageName,
			model.FormatSize(int64(sn.MemoryMiB)<<20), sn.VMM+"/"+sn.Accel, humanBytes(sn.SizeBytes), age(sn.CreatedAt))
	}
	return tw.Flush()
}

// ShowSnapshot prints one snapshot.
func ShowSnapshot(ctx context.Context, g *Globals, ref string) error {
	var res api.SnapshotResult
	if err := g.call(ctx, api.MethodSnapshotShow, api.SnapshotRef{Snapshot: ref}, &res); err != nil {
		return err
	}
	sn := res.Snapshot
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
	var res api.SnapshotResult
	if err := g.call(ctx, api.MethodSnapshotDelete, api.SnapshotDeleteParams{Snapshot: ref, Force: force}, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.Snapshot)
	}
	fmt.Fprintf(g.Stdout, "%s deleted\n", res.Snapshot.Name)
	return nil
}

// ForkVM is vm fork: an async operation; prints one line per fork.
func ForkVM(ctx context.Context, g *Globals, p api.VMForkParams, quiet bool) error {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := g.call(ctx, api.MethodVMForkBegin, p, &begin); err != nil {
		return err
	}
	st, err := Follow(ctx, g, api.MethodOpStatus, begin.OpID, stagePrinter(g, quiet || g.JSON))
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(st.VMs)
	}
	for _, vm := range st.VMs {
		fmt.Fprintf(g.Stdout, "%s %s %s\n", vm.Name, vm.State, vm.GuestIP)
	}
	return nil
}
