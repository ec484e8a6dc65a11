package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"banger/internal/errdefs"
	"banger/internal/model"
)

const snapshotColumns = `id, name, vm_id, vm_name, image_id, image_name, vcpu, memory_mib,
	system_overlay_bytes, work_disk_bytes, nat, guest_ip, mac, vmm, accel, machine, boot_args,
	dir, size_bytes, created_at, pool`

const snapshotOrder = ` ORDER BY created_at, name`

// InsertSnapshot stores a snapshot whose files are complete. A taken id or name is
// ErrAlreadyExists; an ImageID with no stored image is ErrNotFound.
func (s *Store) InsertSnapshot(ctx context.Context, sn *model.Snapshot) error {
	switch {
	case sn.ID == "":
		return errdefs.InvalidArgument("id", sn.ID, "must not be empty")
	case sn.Name == "":
		return errdefs.InvalidArgument("name", sn.Name, "must not be empty")
	case sn.Dir == "":
		return errdefs.InvalidArgument("dir", sn.Dir, "must not be empty")
	case sn.VMM == "":
		return errdefs.InvalidArgument("vmm", sn.VMM, "must not be empty")
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		sn.ID, sn.Name, sn.VMID, sn.VMName, sn.ImageID, sn.ImageName, sn.VCPU, sn.MemoryMiB,
		sn.SystemOverlayBytes, sn.WorkDiskBytes, boolInt(sn.NAT), sn.GuestIP, sn.MAC, sn.VMM, sn.Accel,
		sn.Machine, sn.BootArgs, sn.Dir, sn.SizeBytes, formatTime(sn.CreatedAt), sn.Pool)
	if err != nil {
		if col, ok := violatedColumn(err); ok {
			if col == "name" {
				return errdefs.New(errdefs.ErrAlreadyExists, "snapshot name %q already exists", sn.Name)
			}
			return errdefs.New(errdefs.ErrAlreadyExists, "snapshot %s %q already exists", col, sn.ID)
		}
		if isForeignKeyViolation(err) {
			return errdefs.NotFound("image", sn.ImageID)
		}
		return fmt.Errorf("inserting snapshot %q: %w", sn.Name, err)
	}
	return nil
}

// DeleteSnapshot removes the snapshot row. Unless force, a snapshot that VMs were restored
// from is ErrConflict naming them; the check and the delete share one transaction.
func (s *Store) DeleteSnapshot(ctx context.Context, id string, force bool) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("deleting snapshot %s: %w", id, err)
	}
	defer tx.Rollback()
	if !force {
		users, err := names(ctx, tx.QueryContext, `SELECT name FROM vms WHERE snapshot_id = ?`+vmOrder, id)
		if err != nil {
			return fmt.Errorf("deleting snapshot %s: finding its vms: %w", id, err)
		}
		if len(users) > 0 {
			return errdefs.WithHint(
				errdefs.New(errdefs.ErrConflict, "snapshot %s has %d vm(s) restored from it: %s", id, len(users), strings.Join(users, ", ")),
				"delete those vms first, or remove it anyway with --force (the vms keep running on their own copies)")
		}
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("deleting snapshot %s: %w", id, err)
	}
	if err := expectOneRow(res, "snapshot", id); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("deleting snapshot %s: committing: %w", id, err)
	}
	return nil
}

// GetSnapshot returns the snapshot with exactly this id.
func (s *Store) GetSnapshot(ctx context.Context, id string) (*model.Snapshot, error) {
	return s.getSnapshot(ctx, "id", id)
}

// ListSnapshots returns all snapshots, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots`+snapshotOrder)
}

// ResolveSnapshot finds a snapshot by full id, exact name or unique id prefix.
func (s *Store) ResolveSnapshot(ctx context.Context, ref string) (*model.Snapshot, error) {
	return resolve(ctx, "snapshot", ref,
		func(ctx context.Context, id string) (*model.Snapshot, error) { return s.getSnapshot(ctx, "id", id) },
		func(ctx context.Context, name string) (*model.Snapshot, error) {
			return s.getSnapshot(ctx, "name", name)
		},
		func(ctx context.Context, prefix string) ([]model.Snapshot, error) {
			bound, ok := prefixUpperBound(prefix)
			if !ok {
				return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id >= ?`+snapshotOrder, prefix)
			}
			return s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id >= ? AND id < ?`+snapshotOrder, prefix, bound)
		},
		func(sn *model.Snapshot) string { return sn.Name })
}

// VMsFromSnapshot returns the VMs restored from the snapshot.
func (s *Store) VMsFromSnapshot(ctx context.Context, id string) ([]model.VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmColumns+` FROM vms WHERE snapshot_id = ?`+vmOrder, id)
}

// names runs a query whose rows are one name each.
func names(ctx context.Context, query func(context.Context, string, ...any) (*sql.Rows, error), q string, args ...any) ([]string, error) {
	rows, err := query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

func (s *Store) getSnapshot(ctx context.Context, column, value string) (*model.Snapshot, error) {
	list, err := s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE `+column+` = ?`, value)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, errdefs.NotFound("snapshot", value)
	}
	return &list[0], nil
}

func (s *Store) querySnapshots(ctx context.Context, query string, args ...any) ([]model.Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	defer rows.Close()
	out := []model.Snapshot{}
	for rows.Next() {
		var (
			sn      model.Snapshot
			nat     int
			created string
		)
		if err := rows.Scan(&sn.ID, &sn.Name, &sn.VMID, &sn.VMName, &sn.ImageID, &sn.ImageName, &sn.VCPU, &sn.MemoryMiB,
			&sn.SystemOverlayBytes, &sn.WorkDiskBytes, &nat, &sn.GuestIP, &sn.MAC, &sn.VMM, &sn.Accel,
			&sn.Machine, &sn.BootArgs, &sn.Dir, &sn.SizeBytes, &created, &sn.Pool); err != nil {
			return nil, fmt.Errorf("listing snapshots: %w", err)
		}
		sn.NAT = nat != 0
		if sn.CreatedAt, err = parseTime("created_at", created); err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	return out, nil
}
