package ctrshim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	cerrdefs "github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	ptypes "github.com/containerd/containerd/protobuf/types"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"banger/internal/opid"
)

var empty = &ptypes.Empty{}

// Service is the task service of one shim process: containerd's task API (v2, over
// ttrpc) mapped onto banger VMs. A container outside a pod, or a pod's sandbox, has its
// own VM; a pod's other containers (the same shim serves the whole pod) join the
// sandbox's VM, each in its own root directory there.
type Service struct {
	ctx       context.Context // the shim's: namespace, logger; outlives requests
	ns        string
	daemon    *daemonClient
	publisher shim.Publisher
	sd        shutdown.Service
	events    chan any

	mu         sync.Mutex
	containers map[string]*container
}

// container is one containerd container: its VM and its processes.
type container struct {
	id, bundle string
	rootfs     string // host mount point of the snapshot while it is copied into the guest
	dir        string // its directory in the VM (containerDir); its root is dir/rootfs
	vmID       string
	vmName     string
	pid        uint32     // the VMM's pid: the task's pid as containerd sees it
	sandbox    *container // the pod sandbox whose VM it shares; nil if the VM is its own
	init       *process
	execs      map[string]*process
}

// ownsVM says whether deleting the container deletes its VM.
func (c *container) ownsVM() bool { return c.sandbox == nil }

// process is the init process or one exec: a guest command run through the agent.
type process struct {
	id       string // exec id; "" for init
	req      agentclient.ExecRequest
	stdinP   string
	stdoutP  string
	stderrP  string
	terminal bool
	io       *stdio

	signals chan syscall.Signal
	resize  chan [2]uint16

	mu         sync.Mutex
	cancel     context.CancelFunc // ends the agent stream; set by Start
	starting   bool
	status     task.Status
	exitStatus uint32
	exitedAt   time.Time
	done       chan struct{}
}

// NewService makes the task service. ctx carries containerd's namespace.
func NewService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (*Service, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := &Service{
		ctx: ctx, ns: ns, daemon: newDaemonClient(), publisher: publisher, sd: sd,
		events: make(chan any, 128), containers: map[string]*container{},
	}
	go s.forward()
	sd.RegisterCallback(func(context.Context) error {
		close(s.events)
		return nil
	})
	return s, nil
}

var _ taskAPI.TaskService = (*Service)(nil)

// RegisterTTRPC serves the task API.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

// forward publishes events in order; the publisher itself retries and queues.
func (s *Service) forward() {
	// Not s.ctx: shutdown cancels it, and the last events (the delete) are sent after.
	ctx := context.WithoutCancel(s.ctx)
	for e := range s.events {
		topic := topicOf(e)
		if err := s.publisher.Publish(ctx, topic, e); err != nil {
			log.G(s.ctx).WithError(err).WithField("topic", topic).Error("publishing event")
		}
	}
	_ = s.publisher.Close()
}

func topicOf(e any) string {
	switch e.(type) {
	case *eventstypes.TaskCreate:
		return runtime.TaskCreateEventTopic
	case *eventstypes.TaskStart:
		return runtime.TaskStartEventTopic
	case *eventstypes.TaskExit:
		return runtime.TaskExitEventTopic
	case *eventstypes.TaskDelete:
		return runtime.TaskDeleteEventTopic
	case *eventstypes.TaskExecAdded:
		return runtime.TaskExecAddedEventTopic
	case *eventstypes.TaskExecStarted:
		return runtime.TaskExecStartedEventTopic
	}
	return runtime.TaskUnknownTopic
}

func (s *Service) send(e any) {
	defer func() { _ = recover() }() // events closed by shutdown: nobody listens any more
	s.events <- e
}

// toGRPC maps banger's error kinds to containerd's, which ttrpc carries as status codes.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	for _, m := range []struct{ ours, theirs error }{
		{errdefs.ErrInvalidArgument, cerrdefs.ErrInvalidArgument},
		{errdefs.ErrNotFound, cerrdefs.ErrNotFound},
		{errdefs.ErrAlreadyExists, cerrdefs.ErrAlreadyExists},
		{errdefs.ErrConflict, cerrdefs.ErrFailedPrecondition},
		{errdefs.ErrUnavailable, cerrdefs.ErrUnavailable},
		{errdefs.ErrPermissionDenied, cerrdefs.ErrPermissionDenied},
	} {
		if errors.Is(err, m.ours) && !errors.Is(err, m.theirs) {
			err = fmt.Errorf("%w: %w", m.theirs, err)
			break
		}
	}
	return cerrdefs.ToGRPC(err)
}

func (s *Service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, toGRPC(fmt.Errorf("container %s: %w", id, cerrdefs.ErrNotFound))
	}
	return c, nil
}

func (s *Service) proc(id, execID string) (*container, *process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	if execID == "" {
		return c, c.init, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, toGRPC(fmt.Errorf("exec %s of container %s: %w", execID, id, cerrdefs.ErrNotFound))
	}
	return c, p, nil
}

// Create makes the container's VM, copies the snapshot into it and prepares the init
// process; any failure undoes all of it (no VM, no mount).
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, err error) {
	ctx, op := opid.Ensure(ctx)
	lg := log.G(ctx).WithField("op_id", op).WithField("id", r.ID)
	start := time.Now()
	s.mu.Lock()
	_, dup := s.containers[r.ID]
	s.mu.Unlock()
	if dup {
		return nil, toGRPC(fmt.Errorf("container %s: %w", r.ID, cerrdefs.ErrAlreadyExists))
	}
	if r.Checkpoint != "" {
		return nil, toGRPC(errdefs.InvalidArgument("checkpoint", r.Checkpoint, "restoring checkpoints is not supported by the banger runtime"))
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, toGRPC(err)
	}
	pl, err := planFor(r.ID, spec)
	if err != nil {
		return nil, toGRPC(fmt.Errorf("container %s: %w", r.ID, err))
	}
	c := &container{id: r.ID, bundle: r.Bundle, dir: pl.dir, execs: map[string]*process{}}
	if sbID := podSandbox(spec); sbID != "" {
		// A pod's container: it joins the sandbox's VM, which this shim serves (Start
		// groups a pod onto the sandbox's shim).
		sb, err := s.get(sbID)
		if err != nil {
			return nil, toGRPC(fmt.Errorf("container %s joins pod sandbox %s, which this shim does not serve: %w", r.ID, sbID, cerrdefs.ErrFailedPrecondition))
		}
		c.sandbox, c.vmID, c.vmName, c.pid = sb, sb.vmID, sb.vmName, sb.pid
	} else {
		pl.vm.Name = VMName(s.ns, r.ID)
		pl.vm.Image = imageFor(spec)
		pl.vm.NAT = spec.Annotations["banger.dev/nat"] == "true"
		c.vmName = pl.vm.Name
	}
	c.init = newProcess("", pl.proc, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	c.init.req.TTY = r.Terminal
	defer func() {
		if err != nil {
			lg.WithError(err).Error("create failed; undoing")
			s.teardown(context.WithoutCancel(ctx), c)
		}
	}()

	c.rootfs = filepath.Join(r.Bundle, "rootfs")
	if spec.Root.Path != "" && filepath.IsAbs(spec.Root.Path) {
		c.rootfs = spec.Root.Path
	}
	if len(r.Rootfs) > 0 {
		ms := make([]mount.Mount, 0, len(r.Rootfs))
		for _, m := range r.Rootfs {
			ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
		}
		if err := os.MkdirAll(c.rootfs, 0o711); err != nil {
			return nil, toGRPC(fmt.Errorf("creating the rootfs mount point: %w", err))
		}
		if err := mount.All(ms, c.rootfs); err != nil {
			return nil, toGRPC(fmt.Errorf("mounting the container's snapshot at %s: %w", c.rootfs, err))
		}
	}
	if c.init.io, err = openStdio(s.ctx, r.Stdin, r.Stdout, r.Stderr); err != nil {
		return nil, toGRPC(err)
	}

	streamed := c.rootfs
	if c.ownsVM() {
		if err := s.bootVM(ctx, c, pl); err != nil {
			return nil, toGRPC(err)
		}
		if pl.rootDisk {
			streamed = "" // the rootfs is the VM's disk; only the bind files remain
		}
	}

	t := time.Now()
	if streamed != "" || len(pl.binds) > 0 {
		if err := s.daemon.putContainer(ctx, c.vmID, c.dir, streamed, pl.binds); err != nil {
			return nil, toGRPC(fmt.Errorf("copying the rootfs of container %s into its VM: %w", r.ID, err))
		}
	}
	if streamed != "" {
		lg.WithField("elapsed", time.Since(t).String()).Info("rootfs copied")
	}
	// The guest has its own copy now; the snapshot is not needed mounted.
	unmountRootfs(ctx, c)
	if err := s.daemon.run(ctx, c.vmID, []string{"/bin/sh", "-c", pl.setupScript()}); err != nil {
		return nil, toGRPC(fmt.Errorf("preparing the container's mounts in its VM: %w", err))
	}

	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: c.pid,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	lg.WithField("elapsed", time.Since(start).String()).Info("created")
	return &taskAPI.CreateTaskResponse{Pid: c.pid}, nil
}

// bootVM creates c's own VM. Its rootfs goes in as an ext4 disk (rootdisk.go) unless the
// tree is over bangerd's workspace limit; then pl.rootDisk stays false and it is streamed.
func (s *Service) bootVM(ctx context.Context, c *container, pl *plan) error {
	lg := log.G(ctx).WithField("op_id", opid.From(ctx)).WithField("id", c.id)
	start := time.Now()
	disk, err := s.daemon.uploadRootDisk(ctx, c.rootfs, c.dir+"/rootfs")
	if err != nil {
		return fmt.Errorf("container %s: %w", c.id, err)
	}
	if disk != nil {
		defer disk.close() // the create has claimed the image, or failed
		pl.vm.Workspace, pl.rootDisk = &disk.params, true
		lg.WithField("elapsed", time.Since(start).String()).Info("rootfs image uploaded")
		// The image is bangerd's now; the snapshot is not needed mounted.
		unmountRootfs(ctx, c)
	}
	vm, err := s.daemon.createVM(ctx, pl.vm)
	if err != nil {
		return fmt.Errorf("creating the VM of container %s: %w", c.id, err)
	}
	c.vmID, c.pid = vm.ID, uint32(vm.PID)
	lg.WithField("vm", vm.Name).WithField("vm_id", vm.ID).WithField("elapsed", time.Since(start).String()).Info("vm ready")
	return nil
}

// imageFor picks the VM image: the spec's banger.dev/image annotation, the shim's
// BANGER_SHIM_IMAGE environment, or the daemon's default.
func imageFor(s *specs.Spec) string {
	if img := s.Annotations["banger.dev/image"]; img != "" {
		return img
	}
	return os.Getenv("BANGER_SHIM_IMAGE")
}

func newProcess(execID string, req agentclient.ExecRequest, in, out, errp string, terminal bool) *process {
	return &process{
		id: execID, req: req, stdinP: in, stdoutP: out, stderrP: errp, terminal: terminal,
		signals: make(chan syscall.Signal, 8), resize: make(chan [2]uint16, 4),
		status: task.Status_CREATED, done: make(chan struct{}),
	}
}

// teardown removes everything of c that exists: its processes' streams, its VM (or, in a
// pod's VM, its processes and directory there), the snapshot mount. Every step tolerates
// the thing being gone already. A sandbox's teardown ends the pod: the containers that
// still share its VM are reported exited and dropped.
func (s *Service) teardown(ctx context.Context, c *container) {
	s.mu.Lock()
	procs := append(c.execList(), c.init)
	var members []*container
	if c.ownsVM() {
		for _, m := range s.containers {
			if m.sandbox == c {
				members = append(members, m)
				delete(s.containers, m.id)
			}
		}
	}
	s.mu.Unlock()
	stopAll(procs)
	if c.ownsVM() {
		if err := s.daemon.deleteVM(ctx, c.vmName); err != nil {
			log.G(ctx).WithError(err).WithField("vm", c.vmName).Error("deleting the container's VM")
		}
		for _, m := range members {
			s.memberGone(ctx, m)
		}
	} else if c.vmID != "" {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := s.daemon.run(rctx, c.vmID, []string{"/bin/sh", "-c", removeScript(c.dir)}); err != nil {
			log.G(ctx).WithError(err).WithField("vm", c.vmName).WithField("dir", c.dir).Error("removing the container from its pod's VM")
		}
		cancel()
	}
	unmountRootfs(ctx, c)
}

// memberGone ends a pod container whose VM went with its sandbox: its processes are
// reported exited (137, killed) and containerd's later delete finds nothing to do.
func (s *Service) memberGone(ctx context.Context, m *container) {
	s.mu.Lock()
	procs := append(m.execList(), m.init)
	s.mu.Unlock()
	stopAll(procs)
	for _, p := range procs {
		if p != nil {
			s.exited(m, p, 128+uint32(syscall.SIGKILL))
		}
	}
	unmountRootfs(ctx, m)
}

func stopAll(procs []*process) {
	for _, p := range procs {
		if p == nil {
			continue
		}
		p.stop()
		if p.io != nil {
			p.io.Close()
		}
	}
}

func (c *container) execList() []*process {
	var ps []*process
	for _, p := range c.execs {
		ps = append(ps, p)
	}
	return ps
}

func unmountRootfs(ctx context.Context, c *container) {
	if c.rootfs == "" || c.rootfs != filepath.Join(c.bundle, "rootfs") {
		return // a spec root the shim did not mount stays
	}
	if err := mount.UnmountAll(c.rootfs, 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmounting the container's snapshot")
	}
}

// Start runs the init process or an exec in the VM and returns once the agent reports it
// running.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.status != task.Status_CREATED || p.starting {
		st := p.status
		p.mu.Unlock()
		return nil, toGRPC(fmt.Errorf("process %q of container %s is %s and was started already: %w", r.ExecID, r.ID, st, cerrdefs.ErrFailedPrecondition))
	}
	p.starting = true
	p.mu.Unlock()
	ctx, op := opid.Ensure(ctx)
	pctx, cancel := context.WithCancel(opid.With(s.ctx, op))
	p.mu.Lock()
	p.cancel = cancel
	p.mu.Unlock()
	notStarted := func() {
		cancel()
		p.mu.Lock()
		p.starting = false
		p.mu.Unlock()
	}
	stream, err := s.daemon.agentStream(ctx, c.vmID)
	if err != nil {
		notStarted()
		return nil, toGRPC(fmt.Errorf("reaching the agent of container %s: %w", r.ID, err))
	}
	req := p.req
	req.OpID = op
	started := make(chan struct{})
	failed := make(chan error, 1)
	var stdin io.Reader
	if p.io.stdin != nil {
		stdin = p.io.stdin
	}
	out, errw := p.io.writers()
	eio := agentclient.ExecIO{Stdin: stdin, Stdout: out, Stderr: errw, Signals: p.signals, Resize: p.resize,
		Started: func() {
			// Before any output, so before exited can record the end.
			p.mu.Lock()
			p.status = task.Status_RUNNING
			p.mu.Unlock()
			// Queued before the exit can be: containerd sees start, then exit.
			if r.ExecID == "" {
				s.send(&eventstypes.TaskStart{ContainerID: r.ID, Pid: c.pid})
			} else {
				s.send(&eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: c.pid})
			}
			close(started)
		}}
	go func() {
		code, err := agentclient.Exec(pctx, stream, req, eio)
		select {
		case <-started:
		default:
			failed <- err
			return
		}
		if err != nil {
			// The stream broke (the VM died, bangerd went away): the process is lost.
			log.G(s.ctx).WithError(err).WithField("id", r.ID).WithField("exec_id", r.ExecID).Error("exec stream ended without an exit status")
			code = 255
		}
		s.exited(c, p, uint32(code))
	}()
	select {
	case <-started:
	case <-ctx.Done():
		notStarted()
		return nil, toGRPC(fmt.Errorf("starting %v in container %s: %w", p.req.Argv, r.ID, ctx.Err()))
	case err := <-failed:
		notStarted()
		if errors.Is(err, agentproto.ErrCommandNotFound) {
			err = fmt.Errorf("%w: %w", cerrdefs.ErrNotFound, err)
		}
		return nil, toGRPC(fmt.Errorf("starting %v in container %s: %w", p.req.Argv, r.ID, err))
	}
	return &taskAPI.StartResponse{Pid: c.pid}, nil
}

// exited records p's exit, closes its output so containerd's readers see EOF, and
// publishes it. The init's exit ends the container's execs, as a PID namespace's does.
func (s *Service) exited(c *container, p *process, code uint32) {
	p.mu.Lock()
	if p.status == task.Status_STOPPED {
		p.mu.Unlock()
		return
	}
	p.status, p.exitStatus, p.exitedAt = task.Status_STOPPED, code, time.Now()
	p.mu.Unlock()
	if p.io != nil {
		p.io.Close()
	}
	close(p.done)
	if p.id == "" {
		s.mu.Lock()
		execs := c.execList()
		s.mu.Unlock()
		for _, e := range execs {
			e.stop()
		}
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id, ID: processID(c, p), Pid: c.pid,
		ExitStatus: code, ExitedAt: protobuf.ToTimestamp(p.exitedAt),
	})
}

// stop ends the process's agent stream, which makes the agent hang up and kill it.
func (p *process) stop() {
	p.mu.Lock()
	cancel := p.cancel
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func processID(c *container, p *process) string {
	if p.id == "" {
		return c.id
	}
	return p.id
}

// Delete removes an exec, or the container: its VM and everything else it had.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	status, code, at := p.status, p.exitStatus, p.exitedAt
	p.mu.Unlock()
	if status == task.Status_RUNNING {
		return nil, toGRPC(fmt.Errorf("process %q of container %s is running; kill it first: %w", r.ExecID, r.ID, cerrdefs.ErrFailedPrecondition))
	}
	if r.ExecID != "" {
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		if p.io != nil {
			p.io.Close()
		}
		return &taskAPI.DeleteResponse{Pid: c.pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
	}
	ctx, op := opid.Ensure(ctx)
	msg := "deleting the container's VM"
	if !c.ownsVM() {
		msg = "removing the container from its pod's VM"
	}
	log.G(ctx).WithField("op_id", op).WithField("id", r.ID).WithField("vm", c.vmName).Info(msg)
	s.teardown(ctx, c)
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.mu.Unlock()
	if at.IsZero() {
		at = time.Now()
	}
	s.send(&eventstypes.TaskDelete{ContainerID: r.ID, Pid: c.pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)})
	return &taskAPI.DeleteResponse{Pid: c.pid, ExitStatus: code, ExitedAt: protobuf.ToTimestamp(at)}, nil
}

// Exec adds a process to a running container; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, toGRPC(errdefs.InvalidArgument("spec", nil, "an exec needs a process spec"))
	}
	var ps specs.Process
	if err := unmarshalProcess(r.Spec.GetValue(), &ps); err != nil {
		return nil, toGRPC(err)
	}
	if len(ps.Args) == 0 {
		return nil, toGRPC(errdefs.InvalidArgument("process.args", nil, "an exec needs a command"))
	}
	req := agentclient.ExecRequest{Argv: ps.Args, Env: ps.Env, Cwd: ps.Cwd, TTY: r.Terminal, Root: c.dir + "/rootfs",
		UID: ps.User.UID, GID: ps.User.GID, Groups: ps.User.AdditionalGids}
	if ps.ConsoleSize != nil {
		req.Rows, req.Cols = uint16(ps.ConsoleSize.Height), uint16(ps.ConsoleSize.Width)
	}
	p := newProcess(r.ExecID, req, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if p.io, err = openStdio(s.ctx, r.Stdin, r.Stdout, r.Stderr); err != nil {
		return nil, toGRPC(err)
	}
	s.mu.Lock()
	_, dup := c.execs[r.ExecID]
	c.init.mu.Lock()
	initStatus := c.init.status
	c.init.mu.Unlock()
	if dup || initStatus != task.Status_RUNNING {
		s.mu.Unlock()
		p.io.Close()
		if dup {
			return nil, toGRPC(fmt.Errorf("exec %s: %w", r.ExecID, cerrdefs.ErrAlreadyExists))
		}
		return nil, toGRPC(fmt.Errorf("container %s is not running: %w", r.ID, cerrdefs.ErrFailedPrecondition))
	}
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	s.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return empty, nil
}

// ResizePty passes a terminal size to the process.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case p.resize <- [2]uint16{uint16(r.Height), uint16(r.Width)}:
	default: // a resize storm: the next one carries the final size
	}
	return empty, nil
}

// State reports a process.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.StateResponse{
		ID: processID(c, p), Bundle: c.bundle, Pid: c.pid, Status: p.status,
		Stdin: p.stdinP, Stdout: p.stdoutP, Stderr: p.stderrP, Terminal: p.terminal,
		ExitStatus: p.exitStatus, ExitedAt: protobuf.ToTimestamp(p.exitedAt), ExecID: p.id,
	}, nil
}

// Pause is not supported: a VM could be paused, but banger has no pause yet.
func (s *Service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	return nil, toGRPC(fmt.Errorf("pause: %w", cerrdefs.ErrNotImplemented))
}

// Resume is not supported (see Pause).
func (s *Service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return nil, toGRPC(fmt.Errorf("resume: %w", cerrdefs.ErrNotImplemented))
}

// Kill signals a process (its process group in the guest). A process never started is
// recorded as killed by the signal.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	c, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(r.Signal)
	if sig <= 0 || sig > 64 {
		return nil, toGRPC(errdefs.InvalidArgument("signal", r.Signal, "not a signal number"))
	}
	targets := []*process{p}
	if r.All && r.ExecID == "" {
		s.mu.Lock()
		targets = append(targets, c.execList()...)
		s.mu.Unlock()
	}
	for _, t := range targets {
		t.mu.Lock()
		st := t.status
		t.mu.Unlock()
		switch st {
		case task.Status_CREATED:
			s.exited(c, t, 128+uint32(sig))
		case task.Status_RUNNING:
			select {
			case t.signals <- sig:
			case <-t.done:
			case <-ctx.Done():
				return nil, toGRPC(ctx.Err())
			}
		default:
			if t == p {
				return nil, toGRPC(fmt.Errorf("process %q of container %s has already exited: %w", r.ExecID, r.ID, cerrdefs.ErrNotFound))
			}
		}
	}
	return empty, nil
}

// Pids lists the task's processes as the host sees them: the VM's VMM process.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	return &taskAPI.PidsResponse{Processes: []*task.ProcessInfo{{Pid: c.pid}}}, nil
}

// CloseIO ends a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin && p.io != nil && p.io.stdin != nil {
		p.io.stdin.CloseIO()
	}
	return empty, nil
}

// Checkpoint is not supported.
func (s *Service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, toGRPC(fmt.Errorf("checkpoint: %w", cerrdefs.ErrNotImplemented))
}

// Update is not supported: a running VM's vCPUs and memory are fixed at boot.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	return nil, toGRPC(fmt.Errorf("update of resources: a banger VM's vCPUs and memory are fixed at boot: %w", cerrdefs.ErrNotImplemented))
}

// Wait blocks until the process exits.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.proc(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, toGRPC(ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &taskAPI.WaitResponse{ExitStatus: p.exitStatus, ExitedAt: protobuf.ToTimestamp(p.exitedAt)}, nil
}

// Stats reports the VMM process's CPU time and memory as cgroup v2 metrics.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	any, err := vmmMetrics(int(c.pid))
	if err != nil {
		return nil, toGRPC(fmt.Errorf("stats of container %s: %w", r.ID, err))
	}
	return &taskAPI.StatsResponse{Stats: any}, nil
}

// Connect reports the shim's and the task's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid uint32
	if c, err := s.get(r.ID); err == nil {
		pid = c.pid
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: pid}, nil
}

// Shutdown ends the shim once it serves no container.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n == 0 {
		s.sd.Shutdown()
	}
	return empty, nil
}
