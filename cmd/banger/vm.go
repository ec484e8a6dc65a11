package main

import "github.com/spf13/cobra"

func newVMCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, run and manage microVMs"}
	cmd.AddCommand(newVMCreateCmd(), newVMListCmd(), newVMRunCmd(), newVMCpCmd())
	cmd.AddCommand(withVMCompletion(newVMShowCmd(), newVMStartCmd(), newVMStopCmd(), newVMRestartCmd(), newVMPauseCmd(), newVMResumeCmd(), newVMForkCmd(),
		newVMRmCmd(), newVMRenameCmd(), newVMExecCmd(), newVMShellCmd(), newVMLogsCmd())...)
	return cmd
}
