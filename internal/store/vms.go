package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// vmColumns lists the vms columns in the order scanVM and vmValues use.
const vmColumns = `id, name, image_id, image_name, state, vcpu, memory_mib, system_overlay_bytes,
	work_disk_bytes, nat, guest_ip, mac, cid, tap, dir, vmm, accel, pid, last_error,
	created_at, updated_at, started_at, pid_start, creating, auto_remove, workspace, boot, snapshot_id, mounts, pool`

// vmPlaceholders has one placeholder per column of vmColumns, derived so that a new column
// cannot leave the INSERT a placeholder short.
var vmPlaceholders = strings.TrimSuffix(strings.Repeat("?, ", strings.Count(vmColumns, ",")+1), ", ")

const vmOrder = ` ORDER BY created_at, name`

// InsertVM stores a new VM. A zero CreatedAt is set to now and a zero UpdatedAt to CreatedAt,
// on vm itself, so the caller holds what was stored. A taken name, guest IP or tap is
// ErrAlreadyExists; an ImageID with no stored image is ErrNotFound.
func (s *Store) InsertVM(ctx context.Context, vm *model.VM) error {
	if err := validateVM(vm); err != nil {
		return err
	}
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = time.Now()
	}
	if vm.UpdatedAt.IsZero() {
		vm.UpdatedAt = vm.CreatedAt
	}
	_, err := s.db.ExecContext(ctx,
		`INSERT INTO vms (`+vmColumns+`) VALUES (`+vmPlaceholders+`)`,
		vmValues(vm)...)
	if err != nil {
		if cerr := vmConstraintError(err, vm); cerr != nil {
			return cerr
		}
		return fmt.Errorf("inserting vm %q: %w", vm.Name, err)
	}
	return nil
}

// UpdateVM overwrites every field of the VM with vm.ID except CreatedAt, and sets UpdatedAt
// (in the database and on vm) to now. Lifecycle moves go through TransitionVM instead.
func (s *Store) UpdateVM(ctx context.Context, vm *model.VM) error {
	if err := validateVM(vm); err != nil {
		return err
	}
	now := time.Now()
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET
	name = ?, image_id = ?, image_name = ?, state = ?, vcpu = ?, memory_mib = ?,
	system_overlay_bytes = ?, work_disk_bytes = ?, nat = ?, guest_ip = ?, mac = ?, cid = ?,
	tap = ?, dir = ?, vmm = ?, accel = ?, pid = ?, last_error = ?, updated_at = ?, started_at = ?,
	pid_start = ?, creating = ?, auto_remove = ?, workspace = ?, snapshot_id = ?, mounts = ?, pool = ?
WHERE id = ?`,
		vm.Name, vm.ImageID, vm.ImageName, string(vm.State), vm.VCPU, vm.MemoryMiB,
		vm.SystemOverlayBytes, vm.WorkDiskBytes, boolInt(vm.NAT), vm.GuestIP, vm.MAC, int64(vm.CID),
		vm.Tap, vm.Dir, vm.VMM, vm.Accel, vm.PID, vm.LastError, formatTime(now), formatTime(vm.StartedAt),
		int64(vm.PIDStart), boolInt(vm.Creating), boolInt(vm.AutoRemove), vm.Workspace, vm.SnapshotID, mountsJSON(vm.Mounts), vm.Pool,
		vm.ID)
	if err != nil {
		if cerr := vmConstraintError(err, vm); cerr != nil {
			return cerr
		}
		return fmt.Errorf("updating vm %q: %w", vm.Name, err)
	}
	if err := expectOneRow(res, "vm", vm.ID); err != nil {
		return err
	}
	vm.UpdatedAt = now
	return nil
}

// TransitionVM moves the VM with vm.ID from state from to vm.State, writing its lifecycle
// fields (pid, pid start, vmm, accel, last error, started at, creating) in the same
// statement, as a compare-and-set: the row changes only if it is still in from. A move the
// state machine (model.CheckTransition) forbids, or a row no longer in from because another
// operation or a crash moved it, is ErrConflict; a missing row is ErrNotFound.
func (s *Store) TransitionVM(ctx context.Context, vm *model.VM, from model.VMState) error {
	if err := model.CheckTransition(from, vm.State); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	now := time.Now()
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET
	state = ?, pid = ?, pid_start = ?, vmm = ?, accel = ?, last_error = ?, started_at = ?, creating = ?,
	updated_at = ?
WHERE id = ? AND state = ?`,
		string(vm.State), vm.PID, int64(vm.PIDStart), vm.VMM, vm.Accel, vm.LastError,
		formatTime(vm.StartedAt), boolInt(vm.Creating), formatTime(now), vm.ID, string(from))
	if err != nil {
		return fmt.Errorf("moving vm %s from %s to %s: %w", vm.Name, from, vm.State, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("moving vm %s: reading affected rows: %w", vm.Name, err)
	}
	if n == 0 {
		cur, gerr := s.GetVM(ctx, vm.ID)
		if gerr != nil {
			return gerr
		}
		return errdefs.New(errdefs.ErrConflict, "vm %s is %s, not %s: another operation moved it", vm.Name, cur.State, from)
	}
	vm.UpdatedAt = now
	return nil
}

// UpdateVMState records a lifecycle transition: state, VMM pid and last error (pass "" to
// clear it), and bumps updated_at. StartedAt is left alone; set it through UpdateVM.
func (s *Store) UpdateVMState(ctx context.Context, id string, state model.VMState, pid int, lastErr string) error {
	if state == "" {
		return errdefs.InvalidArgument("state", state, "must not be empty")
	}
	res, err := s.db.ExecContext(ctx,
		`UPDATE vms SET state = ?, pid = ?, last_error = ?, updated_at = ? WHERE id = ?`,
		string(state), pid, lastErr, formatTime(time.Now()), id)
	if err != nil {
		return fmt.Errorf("updating state of vm %s: %w", id, err)
	}
	return expectOneRow(res, "vm", id)
}

// SetVMBoot records the timeline of the VM's latest boot (nil clears it). It leaves every
// other column, updated_at included, alone: a timeline is an observation, not a change of
// the VM.
func (s *Store) SetVMBoot(ctx context.Context, id string, boot *model.BootTimeline) error {
	if boot != nil {
		for _, half := range [][]model.BootStage{boot.Host, boot.Guest} {
			if len(half) > model.MaxBootStages {
				return errdefs.InvalidArgument("boot", len(half), fmt.Sprintf("at most %d stages per side", model.MaxBootStages))
			}
			for _, st := range half {
				if err := model.ValidBootStage(st); err != nil {
					return errdefs.InvalidArgument("boot", st.Name, err.Error())
				}
			}
		}
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET boot = ? WHERE id = ?`, bootJSON(boot), id)
	if err != nil {
		return fmt.Errorf("recording the boot timeline of vm %s: %w", id, err)
	}
	return expectOneRow(res, "vm", id)
}

func bootJSON(b *model.BootTimeline) string {
	if b == nil {
		return ""
	}
	j, err := json.Marshal(b)
	if err != nil {
		return "" // plain strings and ints: cannot fail
	}
	return string(j)
}

func mountsJSON(m []model.Mount) string {
	if len(m) == 0 {
		return ""
	}
	j, err := json.Marshal(m)
	if err != nil {
		return "" // plain strings and bools: cannot fail
	}
	return string(j)
}

// DeleteVM removes the VM record with the given id.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("deleting vm %s: %w", id, err)
	}
	return expectOneRow(res, "vm", id)
}

// GetVM returns the VM with exactly this id.
func (s *Store) GetVM(ctx context.Context, id string) (*model.VM, error) {
	return s.getVM(ctx, "id", id)
}

// ListVMs returns all VMs, oldest first (ties by name).
func (s *Store) ListVMs(ctx context.Context) ([]model.VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms`+vmOrder)
}

// VMsUsingImage returns the VMs created from the image with this id, oldest first.
func (s *Store) VMsUsingImage(ctx context.Context, imageID string) ([]model.VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE image_id = ?`+vmOrder, imageID)
}

// ResolveVM finds the VM a user means by ref: an exact id, else an exact name, else the one
// VM whose id starts with ref. Several prefix matches are ErrAmbiguous naming them all.
func (s *Store) ResolveVM(ctx context.Context, ref string) (*model.VM, error) {
	return resolve(ctx, "vm", ref,
		func(ctx context.Context, id string) (*model.VM, error) { return s.getVM(ctx, "id", id) },
		func(ctx context.Context, name string) (*model.VM, error) { return s.getVM(ctx, "name", name) },
		s.vmsWithIDPrefix,
		func(vm *model.VM) string { return vm.Name })
}

// UsedGuestIPs returns every guest IP held by a stored VM, in address order, for the
// allocator to skip.
func (s *Store) UsedGuestIPs(ctx context.Context) ([]netip.Addr, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT guest_ip FROM vms`)
	if err != nil {
		return nil, fmt.Errorf("listing guest ips: %w", err)
	}
	defer rows.Close()
	var ips []netip.Addr
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("listing guest ips: %w", err)
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("listing guest ips: stored address %q: %w", s, err)
		}
		ips = append(ips, ip)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing guest ips: %w", err)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips, nil
}

// getVM looks a VM up by a unique column ("id" or "name"; never user input).
func (s *Store) getVM(ctx context.Context, column, value string) (*model.VM, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+vmColumns+` FROM vms WHERE `+column+` = ?`, value)
	vm, err := scanVM(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.NotFound("vm", value)
	}
	if err != nil {
		return nil, fmt.Errorf("reading vm by %s %q: %w", column, value, err)
	}
	return vm, nil
}

func (s *Store) vmsWithIDPrefix(ctx context.Context, prefix string) ([]model.VM, error) {
	var vms []model.VM
	var err error
	if bound, ok := prefixUpperBound(prefix); ok {
		vms, err = s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE id >= ? AND id < ?`+vmOrder, prefix, bound)
	} else {
		vms, err = s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE id >= ?`+vmOrder, prefix)
	}
	// The range is computed on bytes; re-check so an odd ref can never over-match.
	return slices.DeleteFunc(vms, func(vm model.VM) bool { return !strings.HasPrefix(vm.ID, prefix) }), err
}

func (s *Store) queryVMs(ctx context.Context, query string, args ...any) ([]model.VM, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	defer rows.Close()
	vms := []model.VM{}
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, fmt.Errorf("listing vms: %w", err)
		}
		vms = append(vms, *vm)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing vms: %w", err)
	}
	return vms, nil
}

func vmValues(vm *model.VM) []any {
	return []any{
		vm.ID, vm.Name, vm.ImageID, vm.ImageName, string(vm.State), vm.VCPU, vm.MemoryMiB,
		vm.SystemOverlayBytes, vm.WorkDiskBytes, boolInt(vm.NAT), vm.GuestIP, vm.MAC, int64(vm.CID),
		vm.Tap, vm.Dir, vm.VMM, vm.Accel, vm.PID, vm.LastError,
		formatTime(vm.CreatedAt), formatTime(vm.UpdatedAt), formatTime(vm.StartedAt),
		int64(vm.PIDStart), boolInt(vm.Creating), boolInt(vm.AutoRemove), vm.Workspace, bootJSON(vm.Boot), vm.SnapshotID, mountsJSON(vm.Mounts), vm.Pool,
	}
}

func scanVM(sc scanner) (*model.VM, error) {
	var (
		vm                          model.VM
		state                       string
		nat, creating, autoRemove   int
		pidStart                    int64
		cid                         int64
		created, updated, startedAt string
		boot                        string
		mounts                      string
	)
	if err := sc.Scan(&vm.ID, &vm.Name, &vm.ImageID, &vm.ImageName, &state, &vm.VCPU, &vm.MemoryMiB,
		&vm.SystemOverlayBytes, &vm.WorkDiskBytes, &nat, &vm.GuestIP, &vm.MAC, &cid,
		&vm.Tap, &vm.Dir, &vm.VMM, &vm.Accel, &vm.PID, &vm.LastError,
		&created, &updated, &startedAt, &pidStart, &creating, &autoRemove, &vm.Workspace, &boot, &vm.SnapshotID, &mounts, &vm.Pool); err != nil {
		return nil, err
	}
	vm.State = model.VMState(state)
	vm.NAT = nat != 0
	vm.PIDStart = uint64(pidStart)
	vm.Creating, vm.AutoRemove = creating != 0, autoRemove != 0
	vm.CID = uint32(cid)
	var err error
	if vm.CreatedAt, err = parseTime("created_at", created); err != nil {
		return nil, err
	}
	if vm.UpdatedAt, err = parseTime("updated_at", updated); err != nil {
		return nil, err
	}
	if vm.StartedAt, err = parseTime("started_at", startedAt); err != nil {
		return nil, err
	}
	if boot != "" {
		vm.Boot = new(model.BootTimeline)
		if err := json.Unmarshal([]byte(boot), vm.Boot); err != nil {
			return nil, fmt.Errorf("vm %s: decoding boot timeline: %w", vm.ID, err)
		}
	}
	if mounts != "" {
		if err := json.Unmarshal([]byte(mounts), &vm.Mounts); err != nil {
			return nil, fmt.Errorf("vm %s: decoding mounts: %w", vm.ID, err)
		}
	}
	return &vm, nil
}

// validateVM rejects records the schema would store but the daemon could never use.
func validateVM(vm *model.VM) error {
	switch {
	case vm.ID == "":
		return errdefs.InvalidArgument("id", vm.ID, "must not be empty")
	case vm.Name == "":
		return errdefs.InvalidArgument("name", vm.Name, "must not be empty")
	case vm.ImageID == "":
		return errdefs.InvalidArgument("image_id", vm.ImageID, "must not be empty")
	case vm.State == "":
		return errdefs.InvalidArgument("state", vm.State, "must not be empty")
	}
	ip, err := netip.ParseAddr(vm.GuestIP)
	if err != nil || !ip.Is4() || ip.String() != vm.GuestIP {
		// Requiring the canonical spelling keeps UNIQUE(guest_ip) meaningful.
		return errdefs.InvalidArgument("guest_ip", vm.GuestIP, "must be an IPv4 address in dotted-quad form")
	}
	return nil
}

// vmConstraintError turns a constraint violation from writing vm into the error the user
// should see, or returns nil if err is something else.
func vmConstraintError(err error, vm *model.VM) error {
	if col, ok := violatedColumn(err); ok {
		switch col {
		case "id":
			return errdefs.New(errdefs.ErrAlreadyExists, "vm id %q already exists", vm.ID)
		case "name":
			return errdefs.New(errdefs.ErrAlreadyExists, "vm name %q already exists", vm.Name)
		case "guest_ip":
			return errdefs.New(errdefs.ErrAlreadyExists, "guest ip %s already in use", vm.GuestIP)
		case "tap":
			return errdefs.New(errdefs.ErrAlreadyExists, "tap %q already in use", vm.Tap)
		}
		return errdefs.New(errdefs.ErrAlreadyExists, "vm %s %q already exists", col, vm.Name)
	}
	if isForeignKeyViolation(err) {
		return errdefs.NotFound("image", vm.ImageID)
	}
	return nil
}

// expectOneRow turns "no row matched" into ErrNotFound for what/id.
func expectOneRow(res sql.Result, what, id string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s %s: reading affected rows: %w", what, id, err)
	}
	if n == 0 {
		return errdefs.NotFound(what, id)
	}
	return nil
}

// PoolClaim is what a create asks of the pool VM it claims.
type PoolClaim struct {
	Name       string
	AutoRemove bool
	// NAT is recorded with the claim, before the rule exists, so that a crash between the
	// two still tears the rule down with the VM.
	NAT bool
}

// ClaimPoolVM hands the ready VM id of pool to a create: its pool mark is cleared, it gets
// the claim's name, auto-remove and NAT and is marked creating (the create clears it once
// the VM runs; a crash before that undoes it), as a compare-and-set on the pool mark and
// the paused state, so two creates never get one VM. A VM no longer ready in pool is
// ErrConflict; a taken name ErrAlreadyExists.
func (s *Store) ClaimPoolVM(ctx context.Context, id, pool string, c PoolClaim) error {
	if pool == "" {
		return errdefs.InvalidArgument("pool", pool, "must not be empty")
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET pool = '', name = ?, auto_remove = ?, nat = ?, creating = 1, updated_at = ?
WHERE id = ? AND pool = ? AND state = ? AND creating = 0`,
		c.Name, boolInt(c.AutoRemove), boolInt(c.NAT), formatTime(time.Now()), id, pool, string(model.VMPaused))
	if err != nil {
		if cerr := vmConstraintError(err, &model.VM{ID: id, Name: c.Name}); cerr != nil {
			return cerr
		}
		return fmt.Errorf("claiming vm %s of pool %s: %w", id, pool, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("claiming vm %s of pool %s: %w", id, pool, err)
	}
	if n == 0 {
		return errdefs.New(errdefs.ErrConflict, "vm %s is no longer ready in pool %s", id, pool)
	}
	return nil
}
