package main

import (
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/ctl"
)

func newImageBuildCmd() *cobra.Command {
	var p api.ImageBuildParams
	var fromOCI, debian string
	cmd := &cobra.Command{
		Use:   "build [tiny [--kernel microvm]] [--from-oci REF | --debian SUITE] [--name NAME]",
		Short: "Build an image: tiny (busybox), from an OCI image, or from Debian",
		Example: `  banger image build tiny
  banger image build tiny --kernel microvm
  banger image build --from-oci docker.io/library/alpine:3 --name alpine
  banger image build --debian bookworm
  banger image build --debian bookworm --packages build-essential,git,python3 --name dev`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case fromOCI != "":
				p.Builder, p.Ref = "oci", fromOCI
			case debian != "":
				p.Builder, p.Ref = "debian", debian
			case len(args) == 1:
				p.Builder = args[0]
			default:
				p.Builder = "tiny"
			}
			return ctl.BuildImage(cmd.Context(), globals, p, term.IsTerminal(int(os.Stderr.Fd())))
		},
	}
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (default: the builder's)")
	cmd.Flags().StringVar(&fromOCI, "from-oci", "", "build the rootfs from this OCI image reference")
	cmd.Flags().StringVar(&debian, "debian", "", "build with debootstrap from this Debian suite")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "tiny only: debian (Debian's cloud kernel, the default) or microvm (compiled here from linux-source, no modules; named tiny-microvm)")
	cmd.Flags().StringSliceVar(&p.Packages, "packages", nil, "extra Debian packages to install (comma separated; --debian only)")
	addJSON(cmd)
	return cmd
}
