package ctrshim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"banger/internal/agentclient"
	"banger/internal/api"
	"banger/internal/client"
	"banger/internal/config"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
)

// daemonClient is the shim's side of bangerd's socket: the shim is a client like the CLI,
// so the VMs it makes are ordinary banger VMs (accounting, DNS, NAT policy, reconcile,
// `banger vm ls`). Every call carries the request's op id, which bangerd logs too.
type daemonClient struct{ c *client.Client }

// newDaemonClient finds bangerd as the CLI does: BANGER_SOCKET, else the default socket of
// the shim's user (root: /run/banger/bangerd.sock). containerd passes its environment to
// shims, so BANGER_SOCKET is set on containerd's service.
func newDaemonClient() *daemonClient {
	socket := os.Getenv("BANGER_SOCKET")
	if socket == "" {
		socket = config.DefaultSocket()
	}
	return &daemonClient{c: client.New(socket)}
}

// createVM creates and boots the VM; the client ends errors bangerd did not answer with
// the op id, so every failure can be found in bangerd's log.
func (d *daemonClient) createVM(ctx context.Context, p api.VMCreateParams) (*model.VM, error) {
	return d.c.VMCreate(ctx, p, nil)
}

// deleteVM removes the VM by name; one that is already gone is success.
func (d *daemonClient) deleteVM(ctx context.Context, name string) error {
	_, err := d.c.VMDelete(ctx, api.VMDeleteParams{VM: name, Force: true})
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	return nil
}

// agentStream opens a raw stream to a fresh agent session of the VM.
func (d *daemonClient) agentStream(ctx context.Context, vm string) (io.ReadWriteCloser, error) {
	return d.c.VMAgent(ctx, vm)
}

// maxSetupOutput bounds what a setup command may print into an error message.
const maxSetupOutput = 4 << 10

// run runs argv in the VM (outside the container's root) and fails with its output
// unless it exits 0.
func (d *daemonClient) run(ctx context.Context, vm string, argv []string) error {
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return err
	}
	var out capped
	code, err := agentclient.Exec(ctx, st, agentclient.ExecRequest{Argv: argv, OpID: opid.From(ctx)}, agentclient.ExecIO{Stdout: &out, Stderr: &out})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s exited %d: %s", argv[0], code, strings.TrimSpace(out.String()))
	}
	return nil
}

type capped struct{ strings.Builder }

func (c *capped) Write(b []byte) (int, error) {
	if room := maxSetupOutput - c.Len(); room > 0 {
		if len(b) > room {
			c.Builder.Write(b[:room])
		} else {
			c.Builder.Write(b)
		}
	}
	return len(b), nil
}

func unmarshalProcess(b []byte, p *specs.Process) error {
	if len(b) > maxSpecBytes {
		return errdefs.InvalidArgument("spec", len(b), "exec process spec too large")
	}
	if err := json.Unmarshal(b, p); err != nil {
		return errdefs.InvalidArgument("spec", "exec process", "not an OCI process: "+err.Error())
	}
	return nil
}

// vmmMetrics reads the VMM process's CPU time and resident memory: what the container
// costs the host. Guest-internal accounting would need the agent's help.
func vmmMetrics(pid int) (*ptypes.Any, error) {
	if pid <= 0 {
		return nil, errdefs.New(errdefs.ErrNotFound, "the VM has no VMM process")
	}
	statB, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("reading the VMM's /proc stat: %w", err)
	}
	// Fields after the command name (which may hold spaces) start at ") ".
	s := string(statB)
	i := strings.LastIndex(s, ") ")
	if i < 0 {
		return nil, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 22 {
		return nil, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	threads, _ := strconv.ParseUint(f[17], 10, 64)
	rssPages, _ := strconv.ParseUint(f[21], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	m := &stats.Metrics{
		Pids: &stats.PidsStat{Current: threads},
		CPU: &stats.CPUStat{
			UsageUsec:  (utime + stime) * 1e6 / clkTck,
			UserUsec:   utime * 1e6 / clkTck,
			SystemUsec: stime * 1e6 / clkTck,
		},
		Memory: &stats.MemoryStat{Usage: rssPages * uint64(os.Getpagesize())},
	}
	a, err := typeurl.MarshalAny(m)
	if err != nil {
		return nil, fmt.Errorf("encoding metrics: %w", err)
	}
	return protobuf.FromAny(a), nil
}
