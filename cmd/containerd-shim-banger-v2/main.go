// Command containerd-shim-banger-v2 is containerd's runtime v2 shim for banger: containerd
// (and through it Kubernetes, nerdctl, ctr) runs each container as a banger microVM. It
// speaks containerd's task API over ttrpc, built on containerd 1.7's shim library, whose
// protocol containerd 1.6 and later speak. See docs/kubernetes.md.
package main

import (
	"context"

	"github.com/containerd/containerd/runtime/v2/shim"

	"banger/internal/ctrshim"
)

func main() {
	ctrshim.Register()
	shim.RunManager(context.Background(), ctrshim.Manager{})
}
