package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMRunCmd() *cobra.Command {
	var o ctl.RunOptions
	cmd := &cobra.Command{
		Use:   "run [flags] [-- CMD...]",
		Short: "Create a VM, run a command (or a shell) in it, and exit with its exit code",
		Example: `  banger vm run -- uname -a
  banger vm run --rm --memory 2G -- make test
  banger vm run --rm -W -- make test          # this directory, a copy, at /work
  banger vm run --rm -W . --diff fix.patch -- ./fix.sh
  banger vm run --rm -W=src:/src --out /src/bin:./bin -- make
  banger vm run --name dev          # interactive shell`,
		RunE: func(cmd *cobra.Command, args []string) error {
			args, err := takeWorkspaceArg(cmd, &o.Create, args, false)
			if err != nil {
				return err
			}
			o.Exec.Argv = args
			return ctl.Run(cmd.Context(), globals, o)
		},
	}
	// Flags end at the first argument, so `vm run uname -a` passes -a to uname.
	cmd.Flags().SetInterspersed(false)
	addCreateFlags(cmd.Flags(), &o.Create)
	cmd.Flags().BoolVar(&o.Remove, "rm", false, "delete the VM when the command ends (also on Ctrl-C)")
	cmd.Flags().StringArrayVarP(&o.Exec.Env, "env", "e", nil, "environment variable KEY=VALUE for the command")
	cmd.Flags().StringVarP(&o.Exec.Cwd, "workdir", "w", "", "working directory in the guest (default /root, or the workspace)")
	cmd.Flags().StringVar(&o.Diff, "diff", "", "after the command, write what it changed in the workspace as a git patch to FILE (- for stdout)")
	cmd.Flags().StringArrayVar(&o.Outs, "out", nil, "after the command, copy GUESTPATH (relative: under the workspace) into HOSTDIR (default .): GUESTPATH[:HOSTDIR], repeatable")
	return cmd
}
