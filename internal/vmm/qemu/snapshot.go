package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/vmm"
)

// A snapshot is QEMU's migration stream written to a file: the guest's RAM (zero pages as
// flags only) and every device's state. QEMU 7.2 has no file: migration URI, so the daemon
// opens the file itself and hands QEMU the descriptor over QMP (getfd, SCM_RIGHTS); a
// restore passes the file as fd 3 to a new QEMU started with -incoming fd:3. Nothing runs
// a shell, and the daemon owns the file's creation (O_EXCL, mode 0600).

var (
	_ vmm.Snapshotter = (*Machine)(nil)
	_ vmm.Restorer    = (*Driver)(nil)
)

// snapshotTimeout bounds a migration when the caller's context allows longer: a paused
// guest's RAM goes in one pass at disk speed.
const snapshotTimeout = 5 * time.Minute

// migrateFD is the name the stream's descriptor gets in QEMU's monitor.
const migrateFD = "bangersnap"

// Snapshot writes the paused guest's state to memPath.
func (m *Machine) Snapshot(ctx context.Context, memPath string) (vmm.RestoreInfo, error) {
	// A VM restored with file-backed RAM names its backend on -machine; the snapshot's
	// machine is the plain one (its stream carries all of RAM, like any other VM's).
	machine, _, _ := strings.Cut(lastArgAfter(m.proc.Cmdline(), "-machine"), ",memory-backend=")
	info := vmm.RestoreInfo{Driver: "qemu", Accel: m.accel, Machine: machine,
		BootArgs: argAfter(m.proc.Cmdline(), "-append")}
	if info.Machine == "" || info.BootArgs == "" {
		return info, fmt.Errorf("snapshotting VM %s: the qemu command line lacks -machine or -append", m.spec.ID)
	}
	if m.proc.Exited() {
		return info, fmt.Errorf("snapshotting VM %s: %w", m.spec.ID, vmm.ErrNotRunning)
	}
	f, err := os.OpenFile(memPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return info, fmt.Errorf("creating snapshot memory file: %w", err)
	}
	defer f.Close()
	err = m.withMonitor(ctx, snapshotTimeout, "snapshotting VM "+m.spec.ID, func(ctx context.Context, q *qmpConn) error {
		return m.migrateTo(ctx, q, f)
	})
	if err != nil {
		return info, err
	}
	if err := f.Sync(); err != nil {
		return info, fmt.Errorf("syncing snapshot memory file: %w", err)
	}
	m.log.Info("vmm state saved", "path", memPath)
	return info, nil
}

// migrateTo streams the paused guest's state into f over q and waits until it is complete.
func (m *Machine) migrateTo(ctx context.Context, q *qmpConn, f *os.File) error {
	var st struct {
		Status string `json:"status"`
	}
	if err := q.call("query-status", nil, &st); err != nil {
		return err
	}
	if st.Status != "paused" {
		// A running guest would keep changing memory the stream has already sent, and
		// the disk copies the caller makes would not match it.
		return errdefs.New(errdefs.ErrConflict, "snapshotting VM %s: qemu state is %q; the guest must be paused", m.spec.ID, st.Status)
	}
	// The default bandwidth cap is meant for live migration over a network.
	if err := q.call("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return err
	}
	if err := q.sendFD(migrateFD, f); err != nil {
		return err
	}
	if err := q.call("migrate", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return err
	}
	m.log.Info("vmm migration started", "vm", m.spec.ID, "path", f.Name())
	if err := q.waitMigration(ctx); err != nil {
		return fmt.Errorf("snapshotting VM %s: %w", m.spec.ID, err)
	}
	return nil
}

// waitMigration polls query-migrate until the stream is complete; a cancelled context
// cancels the migration (the guest stays paused, the caller removes the file).
func (q *qmpConn) waitMigration(ctx context.Context) error {
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.call("query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("qemu migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			_ = q.callNoCtx("migrate_cancel")
			return fmt.Errorf("waiting for the migration stream: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Restore starts a QEMU for spec that loads the state in memPath instead of booting.
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, info vmm.RestoreInfo, memPath string) (vmm.Machine, error) {
	if err := d.validateConfig(); err != nil {
		return nil, err
	}
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	if info.Driver != "qemu" {
		return nil, errdefs.New(errdefs.ErrConflict, "the snapshot was taken by %s; qemu cannot restore it", orUnknown(info.Driver))
	}
	accel, _, err := d.accel()
	if err != nil {
		return nil, err
	}
	if accel != info.Accel {
		return nil, errdefs.New(errdefs.ErrConflict, "the snapshot was taken under %s and qemu runs %s here: the CPU state cannot move between them", info.Accel, accel)
	}
	if want := machineArg(d.cfg.Machine); want != info.Machine {
		return nil, errdefs.New(errdefs.ErrConflict, "the snapshot's machine is %q and qemu is configured for %q", info.Machine, want)
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return nil, errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding qemu binary %q: %w", d.cfg.Binary, err), installHint)
	}
	p := plan{Accel: accel, Machine: d.cfg.Machine, QMPPath: filepath.Join(spec.Dir, QMPSocketName), Append: info.BootArgs}
	// With the shared form prepared (PrepareShared), RAM is the snapshot's RAM file mapped
	// copy-on-write and the stream carries only device state.
	stream := memPath
	ramFile, devFile := SharedFiles(memPath)
	shared := fileExists(ramFile) && fileExists(devFile)
	if shared {
		stream, p.RAMFile = devFile, ramFile
	}
	mem, err := os.Open(stream)
	if err != nil {
		return nil, fmt.Errorf("opening snapshot memory file: %w", err)
	}
	defer mem.Close()
	for _, s := range []string{p.QMPPath, spec.ChannelPath} {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("removing stale socket %s: %w", s, err)
		}
	}
	incoming := "fd:3"
	if shared {
		// The ignore-shared capability must be set before the stream is read.
		incoming = "defer"
	}
	args := append(buildArgs(spec, p), "-incoming", incoming)
	log := d.log.With("vm", spec.ID)
	logOffset := vmm.FileSize(spec.LogPath)
	began := time.Now()
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = []*os.File{mem} // fd 3
	proc, err := vmm.Launch(cmd, spec.LogPath, spec.LogMax, spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("starting qemu to restore VM %s: %w", spec.ID, err)
	}
	if err := spec.Launched(proc); err != nil {
		return nil, fmt.Errorf("starting qemu to restore VM %s: %w", spec.ID, err)
	}
	m := &Machine{proc: proc, spec: spec, accel: accel, qmpPath: p.QMPPath, log: log}
	if shared {
		if err := m.startIncoming(ctx, mem); err != nil {
			_ = proc.Kill()
			<-proc.Done()
			return nil, fmt.Errorf("restoring VM %s: %w", spec.ID, err)
		}
	}
	// The stream carries the source's run state, and a snapshot's source was paused: once
	// loaded, QEMU reports paused, and the guest continues with cont.
	if err := m.waitIncoming(ctx); err != nil {
		_ = proc.Kill()
		<-proc.Done()
		if tail := vmm.LogTail(spec.LogPath, logOffset, 15); tail != "" {
			err = fmt.Errorf("%w; qemu output: %s", err, tail)
		}
		return nil, fmt.Errorf("restoring VM %s: %w", spec.ID, err)
	}
	log.Info("vmm restored", "pid", proc.PID(), "accel", accel, "duration_ms", time.Since(began).Milliseconds())
	return m, nil
}

// waitIncoming waits for the migration stream to be loaded and lets the guest run.
func (m *Machine) waitIncoming(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for {
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		st, err := m.Status(qctx)
		qcancel()
		switch {
		case err == nil && st == "running":
			return nil
		case err == nil && st == "paused":
			// The guest still has the snapshot's address and MAC: it stays off the
			// network until the caller has told it its own (vmm.Linker).
			if m.spec.Net != nil {
				if err := m.SetLink(ctx, false); err != nil {
					return err
				}
			}
			return m.Resume(ctx)
		case err == nil:
			last = fmt.Errorf("qemu state is %q", st)
		default:
			last = err
		}
		select {
		case <-m.proc.Done():
			return errors.New("qemu exited while loading the snapshot")
		case <-ctx.Done():
			return fmt.Errorf("waiting for qemu to load the snapshot: %w (last: %v)", ctx.Err(), last)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// SharedFiles are the files of a snapshot's shared form, next to its memory file: guest RAM
// as a plain image (mapped by restored VMs) and a stream of device state only.
func SharedFiles(memPath string) (ram, dev string) { return memPath + ".ram", memPath + ".dev" }

func fileExists(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// startIncoming starts a deferred incoming migration from f with RAM left to its file.
func (m *Machine) startIncoming(ctx context.Context, f *os.File) error {
	m.qmpMu.Lock()
	defer m.qmpMu.Unlock()
	var q *qmpConn
	var err error
	// QEMU creates the QMP socket while it starts; wait for it as waitRunning does.
	deadline := time.Now().Add(startTimeout)
	for {
		if q, err = dialQMP(ctx, m.qmpPath); err == nil {
			break
		}
		if m.proc.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("connecting to qemu for the incoming snapshot: %w", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	defer q.close()
	if err := q.call("migrate-set-capabilities", ignoreShared, nil); err != nil {
		return err
	}
	if err := q.sendFD(migrateFD, f); err != nil {
		return err
	}
	return q.call("migrate-incoming", map[string]any{"uri": "fd:" + migrateFD}, nil)
}

var _ vmm.SharedPreparer = (*Driver)(nil)

// PrepareShared writes a snapshot's shared form (SharedFiles). It splits the stream itself
// (splitSharedFiles) when it can parse it; otherwise, as before: a QEMU for spec (the
// snapshot's own disk copies; a tap of its own, since the NIC's saved state needs a tap
// backend's vnet header, though no packet ever flows) loads the full stream into a RAM file it maps
// shared, never runs the guest, and saves the device state with ignore-shared, leaving RAM
// in the file. Restores then map that file copy-on-write: N VMs restored from one snapshot
// share every page none of them wrote, where loading the stream gives each a private copy.
func (d *Driver) PrepareShared(ctx context.Context, spec vmm.Spec, info vmm.RestoreInfo, memPath string) error {
	if err := validateSpec(spec); err != nil {
		return err
	}
	if info.Driver != "qemu" {
		return errdefs.New(errdefs.ErrConflict, "the snapshot was taken by %s; qemu cannot restore it", orUnknown(info.Driver))
	}
	accel, _, err := d.accel()
	if err != nil {
		return err
	}
	if accel != info.Accel || machineArg(d.cfg.Machine) != info.Machine {
		return errdefs.New(errdefs.ErrConflict, "the snapshot's accel/machine (%s, %s) do not match this qemu's", info.Accel, info.Machine)
	}
	bin, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return errdefs.WithHint(errdefs.New(errdefs.ErrUnavailable, "finding qemu binary %q: %w", d.cfg.Binary, err), installHint)
	}
	ramFile, devFile := SharedFiles(memPath)
	tmpRAM, tmpDev := ramFile+".tmp", devFile+".tmp"
	os.Remove(tmpRAM)
	os.Remove(tmpDev)
	done := false
	defer func() {
		if !done {
			os.Remove(tmpRAM)
			os.Remove(tmpDev)
		}
	}()
	// Split in Go when the stream parses; a template QEMU otherwise.
	err = splitSharedFiles(memPath, tmpRAM, tmpDev, ramID(d.cfg.Machine), uint64(spec.MemoryMiB)<<20, d.log.With("vm", spec.ID))
	if err == nil {
		if err := publishShared(tmpRAM, ramFile, tmpDev, devFile); err != nil {
			return err
		}
		done = true
		return nil
	}
	d.log.Warn("splitting the snapshot's stream failed; a template QEMU makes its shared form", "vm", spec.ID, "error", err.Error())
	os.Remove(tmpRAM)
	os.Remove(tmpDev)
	mem, err := os.Open(memPath)
	if err != nil {
		return fmt.Errorf("opening snapshot memory file: %w", err)
	}
	defer mem.Close()
	p := plan{Accel: accel, Machine: d.cfg.Machine, QMPPath: filepath.Join(spec.Dir, QMPSocketName), Append: info.BootArgs,
		RAMFile: tmpRAM, RAMShared: true}
	// The stream reaches QEMU through a pipe without its zero pages (stripZeroPages):
	// loading them would fault in, and give page cache to, every page of the RAM file.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("preparing a shared snapshot: %w", err)
	}
	defer pr.Close()
	cmd := exec.Command(bin, append(buildArgs(spec, p), "-incoming", "fd:3")...)
	cmd.ExtraFiles = []*os.File{pr}
	began := time.Now()
	proc, err := vmm.Launch(cmd, spec.LogPath, spec.LogMax, spec.Dir)
	if err != nil {
		pw.Close()
		return fmt.Errorf("starting qemu to prepare a shared snapshot: %w", err)
	}
	pr.Close()
	filtered := make(chan error, 1)
	go func() {
		n, err := stripZeroPages(pw, mem)
		pw.Close()
		m := d.log.With("vm", spec.ID)
		if err == nil {
			m.Info("migration stream filtered for the template", "zero_pages_left_out", n)
		}
		filtered <- err
	}()
	defer func() { _ = proc.Kill(); <-proc.Done() }()
	if err := spec.Launched(proc); err != nil {
		return err
	}
	m := &Machine{proc: proc, spec: spec, accel: accel, qmpPath: p.QMPPath, log: d.log.With("vm", spec.ID)}
	// Loaded means paused (the source was); the guest never runs here.
	err = m.waitState(ctx, "paused")
	if err == nil {
		err = <-filtered
	}
	if err != nil {
		if tail := vmm.LogTail(spec.LogPath, 0, 15); tail != "" {
			err = fmt.Errorf("%w; qemu output: %s", err, tail)
		}
		return fmt.Errorf("preparing a shared snapshot: %w", err)
	}
	loaded := time.Now()
	dev, err := os.OpenFile(tmpDev, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer dev.Close()
	m.qmpMu.Lock()
	err = func() error {
		q, err := dialQMP(ctx, m.qmpPath)
		if err != nil {
			return err
		}
		defer q.close()
		if err := q.call("migrate-set-capabilities", ignoreShared, nil); err != nil {
			return err
		}
		if err := q.call("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
			return err
		}
		if err := q.sendFD(migrateFD, dev); err != nil {
			return err
		}
		if err := q.call("migrate", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
			return err
		}
		return q.waitMigration(ctx)
	}()
	m.qmpMu.Unlock()
	if err != nil {
		return fmt.Errorf("preparing a shared snapshot: %w", err)
	}
	saved := time.Now()
	if err := dev.Sync(); err != nil {
		return err
	}
	// QEMU wrote RAM through its shared mapping; it must be on disk before the rename
	// publishes it.
	if f, err := os.OpenFile(tmpRAM, os.O_RDWR, 0); err == nil {
		f.Sync()
		f.Close()
	}
	if err := publishShared(tmpRAM, ramFile, tmpDev, devFile); err != nil {
		return err
	}
	done = true
	m.log.Info("vmm shared snapshot prepared", "load_ms", loaded.Sub(began).Milliseconds(),
		"save_ms", saved.Sub(loaded).Milliseconds(), "sync_ms", time.Since(saved).Milliseconds())
	return nil
}

// publishShared renames a shared form's staged files into place, the RAM file first
// (Restore uses the form only when both exist).
func publishShared(tmpRAM, ramFile, tmpDev, devFile string) error {
	if err := os.Rename(tmpRAM, ramFile); err != nil {
		return fmt.Errorf("publishing a shared snapshot: %w", err)
	}
	if err := os.Rename(tmpDev, devFile); err != nil {
		os.Remove(ramFile)
		return fmt.Errorf("publishing a shared snapshot: %w", err)
	}
	return nil
}

// splitSharedFiles writes a snapshot's shared form from its stream in memPath without a
// QEMU (splitShared): the guest RAM into ramPath, a sparse file of size bytes, and the
// rest into devPath. A QEMU loading the whole stream into a shared RAM file and saving
// it again took 0.35–1.5 s under TCG here; this is a pass over the file. The files are
// not synced: the shared form is made for vm fork's transient snapshot, which a crash
// removes whole (restores read them through the page cache).
func splitSharedFiles(memPath, ramPath, devPath, block string, size uint64, log *slog.Logger) error {
	began := time.Now()
	mem, err := os.Open(memPath)
	if err != nil {
		return fmt.Errorf("opening snapshot memory file: %w", err)
	}
	defer mem.Close()
	ram, err := os.OpenFile(ramPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer ram.Close()
	if err := ram.Truncate(int64(size)); err != nil {
		return err
	}
	dev, err := os.OpenFile(devPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer dev.Close()
	pages, err := splitShared(dev, ram, mem, block, size)
	if err != nil {
		return err
	}
	if err := errors.Join(ram.Close(), dev.Close()); err != nil {
		return err
	}
	log.Info("vmm shared snapshot split", "pages", pages, "ms", time.Since(began).Milliseconds())
	return nil
}

// waitState polls query-status until QEMU reports want.
func (m *Machine) waitState(ctx context.Context, want string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last string
	for {
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		st, err := m.Status(qctx)
		qcancel()
		if err == nil && st == want {
			return nil
		}
		last = st
		select {
		case <-m.proc.Done():
			return errors.New("qemu exited while loading the snapshot")
		case <-ctx.Done():
			return fmt.Errorf("waiting for qemu state %s: %w (last %q)", want, ctx.Err(), last)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown VMM"
	}
	return s
}

// lastArgAfter returns the argument following the last flag in argv, or "".
func lastArgAfter(argv []string, flag string) string {
	out := ""
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			out = argv[i+1]
		}
	}
	return out
}

// argAfter returns the argument following flag in argv, or "".
func argAfter(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

// qmpConn is one QMP connection kept open for several commands: a descriptor passed with
// getfd belongs to the monitor and the migration that uses it is driven from the same
// connection.
type qmpConn struct {
	ctx  context.Context
	conn *net.UnixConn
	dec  *json.Decoder
	stop func() bool
}

func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connecting to %s: %w", path, err)
	}
	uc := c.(*net.UnixConn)
	q := &qmpConn{ctx: ctx, conn: uc, dec: json.NewDecoder(uc)}
	q.stop = context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Now()) })
	var greeting qmpMessage
	_ = uc.SetReadDeadline(time.Now().Add(qmpTimeout))
	if err := q.dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		q.close()
		return nil, fmt.Errorf("qmp: reading greeting from %s: %v", path, ctxErr(ctx, err))
	}
	if err := q.call("qmp_capabilities", nil, nil); err != nil {
		q.close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) close() {
	q.stop()
	q.conn.Close()
}

// call runs one command; each exchange has its own deadline, so a long migration polled
// with many calls is bounded by the context, not by qmpTimeout.
func (q *qmpConn) call(command string, args, out any) error {
	return q.callFD(command, args, out, nil)
}

func (q *qmpConn) callNoCtx(command string) error {
	_ = q.conn.SetDeadline(time.Now().Add(qmpTimeout))
	b, _ := json.Marshal(map[string]any{"execute": command})
	_, err := q.conn.Write(b)
	return err
}

func (q *qmpConn) callFD(command string, args, out any, f *os.File) error {
	if err := q.ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	_ = q.conn.SetDeadline(time.Now().Add(qmpTimeout))
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: encoding: %w", command, err)
	}
	var oob []byte
	if f != nil {
		oob = unix.UnixRights(int(f.Fd()))
	}
	if _, _, err := q.conn.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("qmp %s: sending: %w", command, ctxErr(q.ctx, err))
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp %s: reading reply: %w", command, ctxErr(q.ctx, err))
		}
		switch {
		case m.Error != nil:
			return &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		case m.Return != nil:
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
			}
			return nil
		}
	}
}

// sendFD gives QEMU's monitor f under name (QMP getfd with the descriptor attached).
func (q *qmpConn) sendFD(name string, f *os.File) error {
	return q.callFD("getfd", map[string]any{"fdname": name}, nil, f)
}
