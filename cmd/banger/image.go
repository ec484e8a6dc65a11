package main

import "github.com/spf13/cobra"

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images (kernel + initrd + rootfs bundles)"}
	cmd.AddCommand(newImageImportCmd(), newImageListCmd(), newImageShowCmd(), newImageRmCmd(),
		newImagePullCmd(), newImageBuildCmd(), newImageCatalogCmd())
	return cmd
}
