package main

import (
	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/ctl"
)

func newImageImportCmd() *cobra.Command {
	var p api.ImageImportParams
	cmd := &cobra.Command{
		Use:   "import [BUNDLE] [--name NAME --kernel PATH [--initrd PATH] --rootfs PATH]",
		Short: "Import an image from a bundle (directory or tarball) or from loose files",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				p.Bundle = args[0]
			}
			return ctl.ImportImage(cmd.Context(), globals, p)
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (a DNS label)")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "kernel: vmlinux ELF or bzImage")
	cmd.Flags().StringVar(&p.Initrd, "initrd", "", "initrd (optional)")
	cmd.Flags().StringVar(&p.Rootfs, "rootfs", "", "root filesystem: an ext4 image")
	addJSON(cmd)
	return cmd
}
