package ctrshim

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// RuntimeName is the runtime containerd is configured with; containerd derives the binary
// name containerd-shim-banger-v2 from it.
const RuntimeName = "io.containerd.banger.v2"

// Register registers the task service as the shim library's ttrpc plugin; call it before
// shim.RunManager.
func Register() {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return NewService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

// Manager starts and cleans up shim processes (containerd's `start` and `delete`
// invocations of the binary).
type Manager struct{}

// Name is the runtime's name.
func (Manager) Name() string { return RuntimeName }

// socketAddress puts the shim's socket beside containerd's own (as containerd's stock shims
// put theirs in its state dir's s/), named by a hash of containerd's address, namespace and
// container, short enough for the 108-byte sun_path limit.
func socketAddress(containerdAddress, ns, id string) string {
	d := sha256.Sum256([]byte(filepath.Join(containerdAddress, ns, id)))
	return fmt.Sprintf("unix://%s/%x", filepath.Join(filepath.Dir(containerdAddress), "s"), d[:16])
}

// Start runs the serving shim process for container id and returns its socket address.
// containerd 1.6 reads that address as plain text from stdout (shim protocol v2; later
// containerd versions also accept it). The containers of a CRI pod are grouped onto one
// shim, as runc's and Kata's v2 shims do: the address is derived from the pod's sandbox id
// (its io.kubernetes.cri.sandbox-id annotation; the sandbox's own id for the sandbox), so
// a pod's later containers find the sandbox's shim serving and are answered its address.
// That one process holds the pod's VM and its containers. Called with the container's
// bundle as the working directory.
func (Manager) Start(ctx context.Context, id string, opts shim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	spec, _ := readSpec(".") // no readable spec: a shim of its own
	group := shimGroup(id, spec)
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	address := socketAddress(opts.Address, ns, group)
	socket, err := shim.NewSocket(address)
	if err != nil {
		if !shim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("creating the shim socket %s: %w", address, err)
		}
		if shim.CanConnect(address) {
			// A shim for this container or its pod already serves: containerd uses it.
			if err := shim.WriteAddress("address", address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := shim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("removing the stale shim socket %s: %w", address, err)
		}
		if socket, err = shim.NewSocket(address); err != nil {
			return "", fmt.Errorf("creating the shim socket %s: %w", address, err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			_ = shim.RemoveSocket(address)
		}
	}()
	if err := shim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	args := []string{"-namespace", ns, "-id", group, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	// Its own process group: containerd's signals to the start invocation must not reach
	// the serving shim.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.ExtraFiles = []*os.File{f} // fd 3: the library serves the listener it finds there
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("starting the serving shim: %w", err)
	}
	go cmd.Wait() //nolint:errcheck // the start invocation exits right after; nothing waits for the result
	if err := shim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		return "", fmt.Errorf("adjusting the shim's OOM score: %w", err)
	}
	return address, nil
}

// shimGroup is the id the shim serving container id is known by: its CRI pod's sandbox id
// (the sandbox's own id for the sandbox), else the container's own.
func shimGroup(id string, spec *specs.Spec) string {
	if spec != nil {
		if sb := spec.Annotations[annoSandboxID]; sb != "" && validID.MatchString(sb) {
			return sb
		}
	}
	return id
}

// Stop is containerd's cleanup of a container whose shim is gone (crashed, killed) or
// whose create failed: it removes the container's VM (found by its derived name, so no
// state of the dead shim is needed) and the snapshot mount. Called with the bundle as the
// working directory. A pod container that shares its sandbox's VM leaves the VM to the
// sandbox's cleanup (its processes and directory are the VM's, and go with it).
func (Manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return shim.StopStatus{}, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return shim.StopStatus{}, err
	}
	name := VMName(ns, id)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	spec, specErr := readSpec(cwd)
	if specErr == nil && podSandbox(spec) != "" {
		log.G(ctx).WithField("id", id).Info("pod container: its VM is the sandbox's, removed with it")
	} else if err := newDaemonClient().deleteVM(dctx, name); err != nil {
		// containerd retries the cleanup of a dead shim's task on its next start; bangerd's
		// reconcile does not know containers, so the VM stays until then.
		return shim.StopStatus{}, fmt.Errorf("deleting vm %s of container %s/%s: %w", name, ns, id, err)
	}
	if err := mount.UnmountAll(filepath.Join(cwd, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting the container's snapshot")
	}
	// A killed shim could not remove its socket; Start wrote its address into the bundle.
	// containerd also runs this cleanup for a pod's container after a normal delete (its
	// connection to the pod's shim closes): that socket is the pod's, still served, and
	// removing it would make the pod's next container start a shim of its own.
	if address, err := shim.ReadAddress(filepath.Join(cwd, "address")); err == nil && !shim.CanConnect(address) {
		_ = shim.RemoveSocket(address)
	}
	return shim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}
