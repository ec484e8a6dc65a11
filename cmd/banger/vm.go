package main

import "github.com/spf13/cobra"

func newVMCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run and manage microVMs"}
	cmd.AddCommand(newVMCreateCmd(), newVMListCmd(), newVMShowCmd(), newVMStartCmd(), newVMStopCmd(),
		newVMRestartCmd(), newVMRmCmd(), newVMRenameCmd(), newVMRunCmd(), newVMExecCmd(), newVMShellCmd(), newVMCpCmd(), newVMLogsCmd())
	return cmd
}
