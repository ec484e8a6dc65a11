package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
)

// CreateOptions are vm create's flags.
type CreateOptions struct {
	api.VMCreateParams
	Quiet     bool // no stage lines
	Workspace WorkspaceOptions
	// MountSpecs are the --mount values, parsed into VMCreateParams.Mounts.
	MountSpecs []string
}

// CreateVM creates a VM through vm.create.begin and shows each stage as it happens.
func CreateVM(ctx context.Context, g *Globals, o CreateOptions) (*model.VM, error) {
	ctx, _ = opid.Ensure(ctx)
	mounts, err := parseMounts(o.MountSpecs)
	if err != nil {
		return nil, err
	}
	o.VMCreateParams.Mounts = mounts
	if o.Workspace.Spec != "" {
		// Ctrl-C while packing or uploading must leave nothing: the upload is dropped.
		wctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		ws, err := uploadWorkspace(wctx, g, o.Workspace, o.Quiet || g.JSON)
		stop()
		if err != nil {
			return nil, err
		}
		// The daemon holds the upload until this stream closes, which is after the
		// create claimed it (or failed).
		defer ws.Close()
		o.VMCreateParams.Workspace = &ws.params
	}
	vm, id, name, err := create(ctx, g, o.VMCreateParams, o.Quiet || g.JSON)
	if err != nil {
		if id == "" {
			return nil, err
		}
		return nil, lostVM(ctx, g, err, "create", name)
	}
	if g.JSON {
		return vm, g.printJSON(vm)
	}
	return vm, nil
}

// create begins vm.create and follows it under ctx, printing its stages. It returns the
// operation's id ("" when the begin itself failed), so a caller can follow it again after
// an interruption, and the VM's name as far as it is known, for errors.
func create(ctx context.Context, g *Globals, p api.VMCreateParams, quiet bool) (vm *model.VM, id, name string, err error) {
	c := g.client()
	if id, err = c.VMCreateBegin(ctx, p); err != nil {
		return nil, "", p.Name, err
	}
	name = p.Name
	st, err := c.FollowCreate(ctx, id, nameOf(&name, createPrinter(g, quiet)))
	if err != nil {
		return nil, id, name, err
	}
	if st.VM == nil {
		return nil, id, name, fmt.Errorf("vm.create finished without a VM (%s)", id)
	}
	return st.VM, id, name, nil
}

// nameOf wraps a stage printer to learn the VM's name from the "persisted" stage (its
// message starts with the name), for errors after a lost connection.
func nameOf(name *string, next func(api.Stage, bool)) func(api.Stage, bool) {
	return func(s api.Stage, update bool) {
		if s.Name == "persisted" && *name == "" {
			*name, _, _ = strings.Cut(s.Message, " ")
		}
		next(s, update)
	}
}

// createPrinter shows create stages, and an auto-pull's download as a progress bar on a
// terminal, as `image pull` does.
func createPrinter(g *Globals, quiet bool) func(api.Stage, bool) {
	if quiet {
		return func(api.Stage, bool) {}
	}
	f, ok := g.Stderr.(*os.File)
	return progressPrinter(g, ok && term.IsTerminal(int(f.Fd())))
}

func stagePrinter(g *Globals, quiet bool) func(api.Stage, bool) {
	start := time.Now()
	return func(s api.Stage, update bool) {
		if quiet {
			return
		}
		if update {
			if s.Total > 0 {
				fmt.Fprintf(g.Stderr, "  … %s\n", s.Message)
			}
			return
		}
		msg := s.Message
		if msg != "" {
			msg = "  " + msg
		}
		fmt.Fprintf(g.Stderr, "[%5.1fs] %-16s%s\n", time.Since(start).Seconds(), s.Name, msg)
	}
}

// ListVMs prints the VMs.
func ListVMs(ctx context.Context, g *Globals) error {
	vms, err := g.client().VMList(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(vms)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tIMAGE\tIP\tVCPU\tMEMORY\tVMM\tAGE")
	for _, vm := range vms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", vm.ID[:12], vm.Name, vm.State, vm.ImageName,
			vm.GuestIP, vm.VCPU, model.FormatSize(int64(vm.MemoryMiB)<<20), vmmLabel(vm), age(vm.CreatedAt))
	}
	return tw.Flush()
}

func vmmLabel(vm model.VM) string {
	if vm.VMM == "" {
		return "-"
	}
	return vm.VMM + "/" + vm.Accel
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// VMNames lists the VMs' names, for shell completion.
func VMNames(ctx context.Context, g *Globals) ([]string, error) {
	vms, err := g.client().VMList(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(vms))
	for _, vm := range vms {
		names = append(names, vm.Name)
	}
	return names, nil
}

// ShowVM prints one VM.
func ShowVM(ctx context.Context, g *Globals, ref string) error {
	vm, err := g.client().VMShow(ctx, ref)
	if err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(vm)
	}
	printVM(g.Stdout, *vm)
	return nil
}

func printVM(w io.Writer, vm model.VM) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("ID", vm.ID)
	row("Name", vm.Name)
	row("State", string(vm.State))
	row("Image", fmt.Sprintf("%s (%s)", vm.ImageName, shortID(vm.ImageID)))
	row("VMM", vmmLabel(vm))
	if vm.PID > 0 {
		row("PID", fmt.Sprint(vm.PID))
	}
	row("vCPU", fmt.Sprint(vm.VCPU))
	row("Memory", model.FormatSize(int64(vm.MemoryMiB)<<20))
	row("System overlay", model.FormatSize(vm.SystemOverlayBytes))
	row("Work disk", model.FormatSize(vm.WorkDiskBytes))
	if vm.Workspace != "" {
		row("Workspace", vm.Workspace)
	}
	for _, m := range vm.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		row("Mount", m.HostDir+" → "+m.GuestPath+" ("+mode+")")
	}
	row("Guest IP", vm.GuestIP)
	row("MAC", vm.MAC)
	row("Tap", vm.Tap)
	row("NAT", fmt.Sprint(vm.NAT))
	row("vsock CID", fmt.Sprint(vm.CID))
	row("Directory", vm.Dir)
	row("Created", vm.CreatedAt.Local().Format(time.RFC3339))
	if !vm.StartedAt.IsZero() {
		row("Started", vm.StartedAt.Local().Format(time.RFC3339))
	}
	if vm.LastError != "" {
		row("Last error", strings.SplitN(vm.LastError, "\n", 2)[0])
	}
	if b := vm.Boot; b != nil {
		summary := b.At.Local().Format(time.RFC3339)
		if n := len(b.Host); n > 0 {
			summary = fmt.Sprintf("%s to %s, %s", fmtMS(b.Host[n-1].MS), b.Host[n-1].Name, summary)
		}
		row("Last boot", summary)
		row("  host (since start)", stageLine(b.Host))
		if len(b.Guest) > 0 {
			row("  guest (uptime)", stageLine(b.Guest))
		}
	}
	tw.Flush()
}

// stageLine prints stages with the time each took after the previous one:
// "init 860ms, modules_loaded 1030ms (+170ms), …".
func stageLine(stages []model.BootStage) string {
	parts := make([]string, 0, len(stages))
	for i, st := range stages {
		p := st.Name + " " + fmtMS(st.MS)
		if i > 0 {
			p += " (+" + fmtMS(st.MS-stages[i-1].MS) + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

func fmtMS(ms int64) string {
	if ms >= 10000 || ms <= -10000 {
		return fmt.Sprintf("%.1fs", float64(ms)/1000)
	}
	return fmt.Sprintf("%dms", ms)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// StartVM is vm start.
func StartVM(ctx context.Context, g *Globals, ref string) error {
	return g.printVMAction(g.client().VMStart(ctx, ref))("started")
}

// StopVM is vm stop; timeout 0 is the daemon's default.
func StopVM(ctx context.Context, g *Globals, ref string, timeoutSeconds float64) error {
	return g.printVMAction(g.client().VMStop(ctx, api.VMStopParams{VM: ref, TimeoutSeconds: timeoutSeconds}))("stopped")
}

// RestartVM is vm restart.
func RestartVM(ctx context.Context, g *Globals, ref string, timeoutSeconds float64) error {
	return g.printVMAction(g.client().VMRestart(ctx, api.VMStopParams{VM: ref, TimeoutSeconds: timeoutSeconds}))("restarted")
}

// DeleteVM is vm rm of one VM.
func DeleteVM(ctx context.Context, g *Globals, ref string, force bool) error {
	return g.printVMAction(g.client().VMDelete(ctx, api.VMDeleteParams{VM: ref, Force: force}))("deleted")
}

// RenameVM is vm rename.
func RenameVM(ctx context.Context, g *Globals, ref, name string) error {
	return g.printVMAction(g.client().VMRename(ctx, api.VMRenameParams{VM: ref, Name: name}))("renamed")
}

// printVMAction prints the VM a lifecycle call returned: as JSON, or its name and verb.
func (g *Globals) printVMAction(vm *model.VM, err error) func(verb string) error {
	return func(verb string) error {
		if err != nil {
			return err
		}
		if g.JSON {
			return g.printJSON(vm)
		}
		fmt.Fprintf(g.Stdout, "%s %s\n", vm.Name, verb)
		return nil
	}
}

// PauseVM is vm pause.
func PauseVM(ctx context.Context, g *Globals, ref string) error {
	return g.printVMAction(g.client().VMPause(ctx, ref))("paused")
}

// ResumeVM is vm resume.
func ResumeVM(ctx context.Context, g *Globals, ref string) error {
	return g.printVMAction(g.client().VMResume(ctx, ref))("resumed")
}
