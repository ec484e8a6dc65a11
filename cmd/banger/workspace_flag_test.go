package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"banger/internal/ctl"
)

// parseRun parses vm run-style arguments the way newVMRunCmd does.
func parseRun(t *testing.T, args ...string) (ctl.CreateOptions, []string) {
	t.Helper()
	var o ctl.CreateOptions
	cmd := &cobra.Command{Use: "run"}
	cmd.Flags().SetInterspersed(false)
	addCreateFlags(cmd.Flags(), &o)
	if err := cmd.Flags().Parse(args); err != nil {
		t.Fatal(err)
	}
	rest, err := takeWorkspaceArg(cmd, &o, cmd.Flags().Args(), false)
	if err != nil {
		t.Fatal(err)
	}
	return o, rest
}

// -W takes its DIR whether written -W=DIR, -W DIR (before "--", with more flags after it)
// or not at all (the current directory).
func TestWorkspaceFlagForms(t *testing.T) {
	for _, c := range []struct {
		args     []string
		spec     string
		excludes string
		argv     string
	}{
		{[]string{"-W", "--", "make", "test"}, ".", "", "make test"},
		{[]string{"-W=src:/src", "--", "make"}, "src:/src", "", "make"},
		{[]string{"--workspace", "proj", "--exclude", "build/", "--exclude", "*.o", "--", "sh", "-c", "x"}, "proj", "build/,*.o", "sh -c x"},
		{[]string{"-W", "missing-dir", "--", "true"}, "missing-dir", "", "true"},
		{[]string{"--", "uname", "-a"}, "", "", "uname -a"},
		{[]string{"-W", "--", "grep", "-r", "x"}, ".", "", "grep -r x"},
	} {
		o, argv := parseRun(t, c.args...)
		if o.Workspace.Spec != c.spec || strings.Join(o.Workspace.Excludes, ",") != c.excludes || strings.Join(argv, " ") != c.argv {
			t.Errorf("%q: spec %q excludes %q argv %q", c.args, o.Workspace.Spec, o.Workspace.Excludes, argv)
		}
	}
}
