package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newVMExecCmd() *cobra.Command {
	var o ctl.ExecOptions
	var tty bool
	cmd := &cobra.Command{
		Use:   "exec VM -- CMD...",
		Short: "Run a command in a running VM, streaming stdin/stdout/stderr",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.VM, o.Argv = args[0], args[1:]
			// With flags ending at the VM name, a "--" after it reaches us as an argument.
			if len(o.Argv) > 0 && o.Argv[0] == "--" {
				o.Argv = o.Argv[1:]
			}
			if len(o.Argv) == 0 {
				return fmt.Errorf("vm exec: no command given; usage: banger vm exec VM -- CMD [ARGS...]")
			}
			if cmd.Flags().Changed("tty") {
				o.TTY = &tty
			}
			return ctl.Exec(cmd.Context(), globals, o)
		},
	}
	// Flags end at the first argument, so `vm run uname -a` passes -a to uname.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringArrayVarP(&o.Env, "env", "e", nil, "environment variable KEY=VALUE")
	cmd.Flags().StringVarP(&o.Cwd, "workdir", "w", "", "working directory in the guest (default /root)")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "allocate a pseudo-terminal")
	return cmd
}
