package main

import (
	"fmt"
	"slices"
	"strings"

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
	fs.StringVarP(&o.Workspace.Spec, "workspace", "W", "", "copy host directory DIR into the guest at /work (DIR[:GUESTPATH]; bare -W means .)")
	fs.Lookup("workspace").NoOptDefVal = bareWorkspace
	fs.StringArrayVar(&o.MountSpecs, "mount", nil, "share host directory HOSTDIR live at GUESTPATH (HOSTDIR:GUESTPATH[:ro|:rw], read-only by default; repeatable; qemu only)")
	fs.StringArrayVar(&o.Workspace.Excludes, "exclude", nil, "leave paths matching this gitignore-style pattern out of the workspace (repeatable; .bangerignore is read too)")
}

// bareWorkspace is --workspace's value when given without one. pflag takes a value for
// such a flag only as -W=DIR, so `-W DIR` leaves DIR as the first argument;
// takeWorkspaceArg moves it back.
const bareWorkspace = "."

// takeWorkspaceArg handles `-W DIR`: flag parsing stops at DIR (pflag takes a value for
// a flag with a default only as -W=DIR), so with -W given bare, a first argument that is
// followed by "--" (vm run: `-W DIR [flags] -- CMD`) or is the only argument (vm create)
// is the workspace DIR, and the flags after it are parsed too. `-W=DIR` is never
// ambiguous; `vm run -W -- CMD -- ARGS` needs it (`-W=.`), since CMD would be taken as DIR.
func takeWorkspaceArg(cmd *cobra.Command, o *ctl.CreateOptions, args []string, single bool) ([]string, error) {
	f := cmd.Flags().Lookup("workspace")
	if f == nil || !f.Changed || o.Workspace.Spec != bareWorkspace || len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return args, nil
	}
	if single {
		if len(args) != 1 {
			return args, nil
		}
		o.Workspace.Spec = args[0]
		return nil, nil
	}
	if !slices.Contains(args[1:], "--") {
		return args, nil
	}
	o.Workspace.Spec = args[0]
	if err := cmd.Flags().Parse(args[1:]); err != nil {
		return nil, err
	}
	return cmd.Flags().Args(), nil
}

func newVMCreateCmd() *cobra.Command {
	var o ctl.CreateOptions
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create (and boot) a VM",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			args, err := takeWorkspaceArg(cmd, &o, args, true)
			if err != nil {
				return err
			}
			if len(args) > 0 {
				return fmt.Errorf("vm create takes no arguments, got %q", args[0])
			}
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
