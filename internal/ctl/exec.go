package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/opid"
)

// ExecOptions are vm exec's (and vm run's) command options.
type ExecOptions struct {
	VM   string
	Argv []string // empty: interactive shell
	Env  []string
	Cwd  string
	TTY  *bool // nil: a TTY when argv is empty and stdin is a terminal
}

// Exec runs a command (or a shell) in a running VM, streaming stdio, and returns an
// *ExitError carrying the guest command's exit code when it is not zero.
func Exec(ctx context.Context, g *Globals, o ExecOptions) error {
	ctx, id := opid.Ensure(ctx)
	stdinFile, stdinIsFile := g.Stdin.(*os.File)
	isTerm := stdinIsFile && term.IsTerminal(int(stdinFile.Fd()))
	tty := len(o.Argv) == 0 && isTerm
	if o.TTY != nil {
		tty = *o.TTY
	}
	argv := o.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh", "-l"}
	}
	req := agentclient.ExecRequest{Argv: argv, Env: o.Env, Cwd: o.Cwd, TTY: tty, OpID: id}

	stream, err := g.client().VMAgent(ctx, o.VM)
	if err != nil {
		return err
	}
	defer stream.Close()

	sigs := make(chan syscall.Signal, 4)
	resize := make(chan [2]uint16, 4)
	stdio := agentclient.ExecIO{Stdin: g.Stdin, Stdout: g.Stdout, Stderr: g.Stderr, Signals: sigs, Resize: resize}

	if tty && isTerm {
		fd := int(stdinFile.Fd())
		if cols, rows, err := term.GetSize(fd); err == nil {
			req.Rows, req.Cols = uint16(rows), uint16(cols)
		}
		req.Term = os.Getenv("TERM")
		old, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("setting terminal to raw mode: %w", err)
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if cols, rows, err := term.GetSize(fd); err == nil {
					select {
					case resize <- [2]uint16{uint16(rows), uint16(cols)}:
					default:
					}
				}
			}
		}()
	} else {
		// Without a TTY, Ctrl-C and friends go to the guest process, as with ssh. A
		// command that ignores them is abandoned on the third: the stream closes and the
		// agent kills it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(ch)
		go func() {
			n := 0
			for s := range ch {
				if n++; n >= 3 {
					fmt.Fprintln(g.Stderr, "banger: giving up on the guest command")
					cancel()
					return
				}
				if ss, ok := s.(syscall.Signal); ok {
					select {
					case sigs <- ss:
					default:
					}
				}
			}
		}()
	}
	code, err := agentclient.Exec(ctx, stream, req, stdio)
	if err != nil && ctx.Err() != nil {
		return &ExitError{Code: 130}
	}
	if err != nil {
		if errors.Is(err, agentproto.ErrCommandNotFound) {
			fmt.Fprintf(g.Stderr, "banger: %v\n", err)
			return &ExitError{Code: 127}
		}
		return fmt.Errorf("exec in vm %s: %w (%s)", o.VM, err, id)
	}
	if code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// RunOptions are vm run's options.
type RunOptions struct {
	Create CreateOptions
	Exec   ExecOptions
	Remove bool // --rm
	// Diff ("-": stdout) receives a patch of what the command changed in the workspace.
	Diff string
	// Outs are --out GUESTPATH[:HOSTDIR] copies made after the command.
	Outs []string
}

// Run creates and boots a VM, runs the command (or a shell) in it and, with Remove,
// deletes the VM afterwards — also when interrupted.
func Run(ctx context.Context, g *Globals, o RunOptions) error {
	ctx, _ = opid.Ensure(ctx)
	if o.Diff != "" && o.Create.Workspace.Spec == "" {
		return errdefs.InvalidArgument("--diff", o.Diff, "needs --workspace")
	}
	for _, spec := range o.Outs {
		if _, _, err := parseOut(spec, wsPathOf(o.Create.Workspace.Spec)); err != nil {
			return err
		}
	}
	mounts, err := parseMounts(o.Create.MountSpecs)
	if err != nil {
		return err
	}
	// The first Ctrl-C during create cancels it; cleanup still runs.
	createCtx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	params := o.Create.VMCreateParams
	params.Mounts = mounts
	// The daemon owns --rm: it removes the VM even if this process dies.
	params.AutoRemove = o.Remove
	var ws *workspaceUpload
	if o.Create.Workspace.Spec != "" {
		var err error
		if ws, err = uploadWorkspace(createCtx, g, o.Create.Workspace, o.Create.Quiet); err != nil {
			interrupted := createCtx.Err() != nil
			stop()
			if interrupted {
				fmt.Fprintln(g.Stderr, "banger: interrupted while preparing the workspace; nothing was created")
				return &ExitError{Code: 130}
			}
			return err
		}
		defer ws.Close()
		params.Workspace = &ws.params
		if o.Exec.Cwd == "" {
			o.Exec.Cwd = ws.params.Path
		}
	}
	vm, opID, name, err := create(createCtx, g, params, o.Create.Quiet)
	interrupted := createCtx.Err() != nil
	stop()
	if opID == "" {
		return err
	}
	if interrupted && o.Remove {
		// The daemon keeps creating; wait for it to settle, then delete what it made.
		fmt.Fprintln(g.Stderr, "banger: interrupted; removing the VM being created")
		cleanupCtx := context.WithoutCancel(ctx)
		if st2, err2 := g.client().FollowCreate(cleanupCtx, opID, nil); err2 == nil && st2.VM != nil {
			removeVM(cleanupCtx, g, st2.VM.ID)
		}
		return &ExitError{Code: 130}
	}
	if interrupted {
		fmt.Fprintf(g.Stderr, "banger: interrupted; bangerd finishes creating the VM (operation %s); "+
			"`banger vm ls` shows it and `banger vm rm -f NAME` removes it\n", opID)
		return &ExitError{Code: 130}
	}
	if err != nil {
		return lostVM(ctx, g, err, "vm run", name)
	}
	// The create claimed the upload; the stream has no more use.
	ws.Close()
	o.Exec.VM = vm.ID
	var dw diffWatch
	if o.Diff != "" || len(o.Outs) > 0 {
		// With --rm the daemon deletes the VM when its last vm.agent stream ends; this one
		// stays open (idle) until the diff and the copies are done.
		if anchor, err := agentStream(ctx, g, vm.ID); err == nil {
			defer anchor.Close()
		}
	}
	if o.Diff != "" {
		if dw, err = startDiffWatch(ctx, g, vm.ID, ws.params.Path); err != nil {
			if o.Remove {
				removeVM(context.WithoutCancel(ctx), g, vm.ID)
			}
			return fmt.Errorf("--diff: reading the guest's clock before the command: %w", err)
		}
	}
	execErr := Exec(ctx, g, o.Exec)
	var after error
	if o.Diff != "" && ctx.Err() == nil {
		after = workspaceDiff(ctx, g, vm.ID, ws, dw, o.Diff)
	}
	for _, spec := range o.Outs {
		if after != nil || ctx.Err() != nil {
			break
		}
		gp, hd, _ := parseOut(spec, ws.pathOrEmpty())
		after = getFromGuest(ctx, g, vm.ID, gp, hd)
	}
	if after != nil {
		fmt.Fprintf(g.Stderr, "banger: %v\n", after)
		if execErr == nil {
			execErr = &ExitError{Code: 1}
		}
	}
	if o.Remove {
		removeVM(context.WithoutCancel(ctx), g, vm.ID)
	}
	return execErr
}

// removeVM deletes the VM and waits for it; the daemon may already be removing it (the
// run's stream ended), in which case it is simply gone.
func removeVM(ctx context.Context, g *Globals, id string) {
	_, err := g.client().VMDelete(ctx, api.VMDeleteParams{VM: id, Force: true})
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		fmt.Fprintf(g.Stderr, "banger: removing vm %s: %v\n", shortID(id), err)
	}
}

// Logs prints a VM's console log, following it with follow until interrupted.
func Logs(ctx context.Context, g *Globals, ref string, follow bool) error {
	stream, err := g.client().VMLogs(ctx, api.VMLogsParams{VM: ref, Follow: follow})
	if err != nil {
		return err
	}
	defer stream.Close()
	go func() {
		<-ctx.Done()
		stream.Close()
	}()
	_, err = io.Copy(g.Stdout, stream)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
