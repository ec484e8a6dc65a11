package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"banger/internal/imagestore"
	"banger/internal/testkit"
)

// TestPlainBuildIsStatic builds the agent the way a user might — plain `go build`, with cgo
// on when the host has a C compiler — and checks that the result needs no dynamic loader.
func TestPlainBuildIsStatic(t *testing.T) {
	goBin := testkit.Tool(t, "go")
	cases := map[string][]string{"default environment": nil, "CGO_ENABLED=0": {"CGO_ENABLED=0"}}
	if _, err := exec.LookPath("gcc"); err == nil {
		cases["CGO_ENABLED=1"] = []string{"CGO_ENABLED=1"}
	} else {
		testkit.Missing(t, "gcc is needed to check the cgo build of the agent: %v", err)
	}
	for name, env := range cases {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "banger-agent")
			cmd := exec.Command(goBin, "build", "-o", out, ".")
			cmd.Env = append(os.Environ(), env...)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go build: %v\n%s", err, b)
			}
			if err := imagestore.CheckStaticAgent("agent", out); err != nil {
				t.Fatalf("plain build is not usable as /init: %v", err)
			}
		})
	}
}
