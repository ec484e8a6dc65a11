package main

import (
	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

func newDoctorCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what banger needs (VMM, KVM, kernel, helper) and say how to fix it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ok, err := ctl.Doctor(cmd.Context(), globals)
			if err != nil {
				return err
			}
			if !ok {
				return &ctl.ExitError{Code: 1}
			}
			return nil
		},
	}
	addJSON(cmd)
	return cmd
}
