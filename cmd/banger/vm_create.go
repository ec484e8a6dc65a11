package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"banger/internal/ctl"
)

// addCreateFlags binds vm create's flags; vm run shares them.
func addCreateFlags(fs *pflag.FlagSet, o *ctl.CreateOptions) {
	fs.StringVar(&o.Name, "name", "", "VM name, a DNS label (default: a generated adjective-noun)")
	fs.StringVar(&o.Image, "image", "", "image name or id (default: the daemon's default image, pulled if missing)")
	fs.IntVar(&o.VCPU, "vcpu", 0, "virtual CPUs (default from daemon config)")
	fs.StringVar(&o.Memory, "memory", "", "memory, e.g. 512M or 2G")
	fs.StringVar(&o.SystemOverlaySize, "system-overlay-size", "", "copy-on-write system disk size, e.g. 4G")
	fs.StringVar(&o.WorkDiskSize, "work-disk-size", "", "persistent work disk (/root) size, e.g. 8G")
	fs.BoolVar(&o.NAT, "nat", false, "give the VM outbound internet access through NAT")
	fs.BoolVarP(&o.Quiet, "quiet", "q", false, "don't print create stages")
	fs.StringVar(&o.FromSnapshot, "from-snapshot", "", "restore the VM from this snapshot instead of booting it (image, vcpu, memory and disks are the snapshot's)")
}

func newVMCreateCmd() *cobra.Command {
	var o ctl.CreateOptions
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create (and boot) a VM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			vm, err := ctl.CreateVM(cmd.Context(), globals, o)
			if err != nil {
				return err
			}
			if !globals.JSON {
				fmt.Fprintf(globals.Stdout, "%s %s %s\n", vm.Name, vm.State, vm.GuestIP)
			}
			return nil
		},
	}
	addCreateFlags(cmd.Flags(), &o)
	cmd.Flags().BoolVar(&o.NoStart, "no-start", false, "create the VM stopped")
	addJSON(cmd)
	return cmd
}
