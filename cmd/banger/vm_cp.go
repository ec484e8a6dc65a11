package main

import (
	"github.com/spf13/cobra"

	"banger/internal/agentclient"
	"banger/internal/ctl"
	"banger/internal/errdefs"
	"banger/internal/model"
)

func newVMCpCmd() *cobra.Command {
	var maxSize string
	var opts agentclient.CopyOptions
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between the host and a VM (NAME:/path on one side)",
		Long: `Copy files or directories between the host and a VM (NAME:/path on one side).

Copying out of a VM treats the guest as untrusted: only the name that was asked for
(the source's base name) is written, nothing lands outside DST or through a symlink,
setuid/setgid/sticky bits are dropped and the umask applies, existing directories keep
their mode, and the copy is capped at --max-size. A copy fails when no data moved for
--idle-timeout.`,
		Example: `  banger vm cp ./src dev:/root/src
  banger vm cp dev:/root/out.log .`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := model.ParseSize("max-size", maxSize)
			if err != nil {
				return err
			}
			opts.MaxBytes = n
			if opts.IdleTimeout <= 0 {
				return errdefs.InvalidArgument("idle-timeout", opts.IdleTimeout, "must be greater than zero")
			}
			return ctl.Copy(cmd.Context(), globals, args[0], args[1], opts)
		},
	}
	cmd.Flags().StringVar(&maxSize, "max-size", model.FormatSize(agentclient.DefaultCopyMaxBytes), "largest archive accepted from the VM")
	cmd.Flags().DurationVar(&opts.IdleTimeout, "idle-timeout", agentclient.DefaultCopyIdleTimeout, "give up when no data moved for this long")
	return cmd
}
