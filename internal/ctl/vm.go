package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// CreateOptions are vm create's flags.
type CreateOptions struct {
	api.VMCreateParams
	Quiet bool // no stage lines
}

// CreateVM creates a VM through vm.create.begin and shows each stage as it happens.
func CreateVM(ctx context.Context, g *Globals, o CreateOptions) (*model.VM, error) {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := g.call(ctx, api.MethodVMCreateBegin, o.VMCreateParams, &begin); err != nil {
		return nil, err
	}
	name := o.Name
	st, err := Follow(ctx, g, api.MethodVMCreateStatus, begin.OpID, nameOf(&name, createPrinter(g, o.Quiet || g.JSON)))
	if err != nil {
		return nil, lostVM(ctx, g, err, "create", name)
	}
	if st.VM == nil {
		return nil, fmt.Errorf("vm.create finished without a VM (%s)", begin.OpID)
	}
	if g.JSON {
		return st.VM, g.printJSON(st.VM)
	}
	return st.VM, nil
}

// Follow polls an async operation until it ends, calling onStage for each new or updated
// stage, and returns the final status or the operation's typed error.
func Follow(ctx context.Context, g *Globals, method, id string, onStage func(api.Stage, bool)) (*api.OpStatusResult, error) {
	seen := 0
	var last api.Stage
	for {
		var st api.OpStatusResult
		if err := g.call(ctx, method, api.OpStatusParams{OpID: id, After: seen, WaitSeconds: 1}, &st); err != nil {
			return nil, err
		}
		for i := range st.Stages {
			s := st.Stages[i]
			if i >= seen {
				onStage(s, false)
			} else if i == seen-1 && (s.Done != last.Done || s.Total != last.Total) {
				onStage(s, true)
			}
		}
		if len(st.Stages) > 0 {
			last = st.Stages[len(st.Stages)-1]
		}
		seen = len(st.Stages)
		if st.Done {
			if st.Error != nil {
				return nil, &rpc.ErrorResponse{Code: st.Error.Code, Message: st.Error.Message, OpID: st.Error.OpID, Hint: st.Error.Hint}
			}
			return &st, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
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
	var res api.VMListResult
	if err := g.call(ctx, api.MethodVMList, nil, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.VMs)
	}
	tw := tabwriter.NewWriter(g.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tIMAGE\tIP\tVCPU\tMEMORY\tVMM\tAGE")
	for _, vm := range res.VMs {
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
	var res api.VMListResult
	if err := g.call(ctx, api.MethodVMList, nil, &res); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(res.VMs))
	for _, vm := range res.VMs {
		names = append(names, vm.Name)
	}
	return names, nil
}

// ShowVM prints one VM.
func ShowVM(ctx context.Context, g *Globals, ref string) error {
	var res api.VMResult
	if err := g.call(ctx, api.MethodVMShow, api.VMRef{VM: ref}, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.VM)
	}
	printVM(g.Stdout, res.VM)
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

// VMAction runs vm.start, vm.stop, vm.restart or vm.delete and prints the VM's new state.
func VMAction(ctx context.Context, g *Globals, method string, params any) error {
	var res api.VMResult
	if err := g.call(ctx, method, params, &res); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(res.VM)
	}
	verb := map[string]string{api.MethodVMStart: "started", api.MethodVMStop: "stopped",
		api.MethodVMRestart: "restarted", api.MethodVMDelete: "deleted", api.MethodVMRename: "renamed"}[method]
	fmt.Fprintf(g.Stdout, "%s %s\n", res.VM.Name, verb)
	return nil
}
