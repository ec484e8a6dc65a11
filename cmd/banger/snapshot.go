package main

import (
	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/ctl"
)

func newSnapshotCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Save a VM's memory and disks, to fork or restore it later"}
	cmd.AddCommand(newSnapshotCreateCmd(), newSnapshotListCmd(), newSnapshotShowCmd(), newSnapshotRmCmd())
	return cmd
}

func newSnapshotCreateCmd() *cobra.Command {
	var p api.SnapshotCreateParams
	var quiet bool
	cmd := &cobra.Command{
		Use:   "create VM",
		Short: "Snapshot a running or paused VM (it runs on afterwards unless --leave-paused)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.VM = args[0]
			_, err := ctl.CreateSnapshot(cmd.Context(), globals, p, quiet)
			return err
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "snapshot name (default: the VM's name and a random suffix)")
	cmd.Flags().BoolVar(&p.LeavePaused, "leave-paused", false, "keep the VM paused afterwards")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no stage lines")
	addJSON(cmd)
	return cmd
}

func newSnapshotListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ListSnapshots(cmd.Context(), globals)
		},
	}
	addJSON(cmd)
	return cmd
}

func newSnapshotShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show SNAPSHOT",
		Short: "Show one snapshot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return ctl.ShowSnapshot(cmd.Context(), globals, args[0])
		},
	}
	addJSON(cmd)
	return cmd
}

func newSnapshotRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm SNAPSHOT...",
		Aliases: []string{"delete"},
		Short:   "Delete snapshots (refused while VMs restored from one exist, unless --force)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, ref := range args {
				if err := ctl.DeleteSnapshot(cmd.Context(), globals, ref, force); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even though VMs were restored from it (they keep running)")
	addJSON(cmd)
	return cmd
}
