package store

import (
	"banger/internal/oplog"
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migration is one schema change. Versions are append-only: a released migration is never
// edited, a new one is added after it, because databases in the field have already run it.
type migration struct {
	version int
	sql     string
}

// migrations is the ordered schema history; Open applies whatever a database lacks.
var migrations = []migration{
	{version: 1, sql: `
CREATE TABLE images (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL,
	version     TEXT NOT NULL DEFAULT '',
	arch        TEXT NOT NULL DEFAULT '',
	dir         TEXT NOT NULL DEFAULT '',
	kernel_args TEXT NOT NULL DEFAULT '',
	files       TEXT NOT NULL DEFAULT '[]',
	source      TEXT NOT NULL DEFAULT '',
	created_at  TEXT NOT NULL,
	UNIQUE (name)
);

CREATE TABLE vms (
	id                   TEXT PRIMARY KEY,
	name                 TEXT NOT NULL,
	image_id             TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
	image_name           TEXT NOT NULL DEFAULT '',
	state                TEXT NOT NULL,
	vcpu                 INTEGER NOT NULL,
	memory_mib           INTEGER NOT NULL,
	system_overlay_bytes INTEGER NOT NULL DEFAULT 0,
	work_disk_bytes      INTEGER NOT NULL DEFAULT 0,
	nat                  INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1)),
	guest_ip             TEXT NOT NULL,
	mac                  TEXT NOT NULL DEFAULT '',
	cid                  INTEGER NOT NULL DEFAULT 0 CHECK (cid BETWEEN 0 AND 4294967295),
	tap                  TEXT NOT NULL DEFAULT '',
	dir                  TEXT NOT NULL DEFAULT '',
	vmm                  TEXT NOT NULL DEFAULT '',
	accel                TEXT NOT NULL DEFAULT '',
	pid                  INTEGER NOT NULL DEFAULT 0,
	last_error           TEXT NOT NULL DEFAULT '',
	created_at           TEXT NOT NULL,
	updated_at           TEXT NOT NULL,
	started_at           TEXT NOT NULL DEFAULT '',
	UNIQUE (name),
	UNIQUE (guest_ip)
);

-- Two VMs sharing a tap would hand one guest's traffic to the other; ids make a clash
-- unlikely, this makes it impossible. Partial, because a record may not have a tap yet.
CREATE UNIQUE INDEX vms_tap ON vms (tap) WHERE tap <> '';

-- Foreign key checks on image delete and VMsUsingImage look VMs up by image.
CREATE INDEX vms_image_id ON vms (image_id);
CREATE INDEX vms_created_at ON vms (created_at, name);
CREATE INDEX images_created_at ON images (created_at, name);
`},
	// Lifecycle intent: the VMM's identity (pid start time) and the in-progress create and
	// --rm flags that reconcile acts on after a crash.
	{version: 2, sql: `
ALTER TABLE vms ADD COLUMN pid_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN creating INTEGER NOT NULL DEFAULT 0 CHECK (creating IN (0, 1));
ALTER TABLE vms ADD COLUMN auto_remove INTEGER NOT NULL DEFAULT 0 CHECK (auto_remove IN (0, 1));
`},
	// Workspaces: the guest path a VM's workspace disk is mounted at ('' = no workspace),
	// so `vm create --workspace` keeps it across stop/start.
	{version: 3, sql: `
ALTER TABLE vms ADD COLUMN workspace TEXT NOT NULL DEFAULT '';
`},
	// The latest boot's timeline (model.BootTimeline as JSON; '' before the first boot).
	{version: 4, sql: `
ALTER TABLE vms ADD COLUMN boot TEXT NOT NULL DEFAULT '';
`},
	// Snapshots: a row is inserted only after its directory (memory, device state, disk
	// copies) is complete and published, and deleted before the directory is removed, so a
	// row always has its files. vms.snapshot_id names the snapshot a VM was restored from
	// (not a foreign key: snapshot rm --force may remove a snapshot VMs came from).
	{version: 5, sql: `
CREATE TABLE snapshots (
	id                   TEXT PRIMARY KEY,
	name                 TEXT NOT NULL,
	vm_id                TEXT NOT NULL DEFAULT '',
	vm_name              TEXT NOT NULL DEFAULT '',
	image_id             TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
	image_name           TEXT NOT NULL DEFAULT '',
	vcpu                 INTEGER NOT NULL,
	memory_mib           INTEGER NOT NULL,
	system_overlay_bytes INTEGER NOT NULL DEFAULT 0,
	work_disk_bytes      INTEGER NOT NULL DEFAULT 0,
	nat                  INTEGER NOT NULL DEFAULT 0 CHECK (nat IN (0, 1)),
	guest_ip             TEXT NOT NULL DEFAULT '',
	mac                  TEXT NOT NULL DEFAULT '',
	vmm                  TEXT NOT NULL,
	accel                TEXT NOT NULL DEFAULT '',
	machine              TEXT NOT NULL DEFAULT '',
	boot_args            TEXT NOT NULL DEFAULT '',
	dir                  TEXT NOT NULL,
	size_bytes           INTEGER NOT NULL DEFAULT 0,
	created_at           TEXT NOT NULL,
	UNIQUE (name)
);
CREATE INDEX snapshots_created_at ON snapshots (created_at, name);
CREATE INDEX snapshots_image_id ON snapshots (image_id);
ALTER TABLE vms ADD COLUMN snapshot_id TEXT NOT NULL DEFAULT '';
CREATE INDEX vms_snapshot_id ON vms (snapshot_id) WHERE snapshot_id <> '';
`},
	// Warm pools: vms.pool names the pool owning a ready (paused) VM until a create claims
	// it; snapshots.pool the pool a snapshot was made for. Start-up removes rows of pools
	// no longer configured, so everything a pool made is in a row.
	{version: 6, sql: `
ALTER TABLE vms ADD COLUMN pool TEXT NOT NULL DEFAULT '';
CREATE INDEX vms_pool ON vms (pool) WHERE pool <> '';
ALTER TABLE snapshots ADD COLUMN pool TEXT NOT NULL DEFAULT '';
`},
	// Shared folders (`vm create --mount`): model.VM.Mounts as JSON ('' = none), so a VM
	// gets them again on every start.
	{version: 7, sql: `
ALTER TABLE vms ADD COLUMN mounts TEXT NOT NULL DEFAULT '';
`},
}

// migrate creates the bookkeeping table and applies each migration in migs that the database
// has not recorded, each in its own transaction together with its schema_migrations row, so a
// crash leaves the database at some whole version. The version check happens inside the
// (immediate, hence write-locked) transaction, so two processes opening the same file at once
// cannot both apply a migration.
func migrate(ctx context.Context, db *sql.DB, migs []migration) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	applied_at TEXT NOT NULL
)`); err != nil {
		return fmt.Errorf("creating schema_migrations: %w", err)
	}
	last := 0
	for _, m := range migs {
		if m.version <= last {
			return fmt.Errorf("migration %d is out of order (after %d)", m.version, last)
		}
		last = m.version
		if err := applyMigration(ctx, db, m); err != nil {
			return err
		}
	}
	return nil
}

func applyMigration(ctx context.Context, db *sql.DB, m migration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migration %d: beginning transaction: %w", m.version, err)
	}
	defer tx.Rollback()

	var applied int
	if err := tx.QueryRowContext(ctx,
		`SELECT count(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&applied); err != nil {
		return fmt.Errorf("migration %d: checking whether applied: %w", m.version, err)
	}
	if applied > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return fmt.Errorf("migration %d: %w", m.version, err)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`,
		m.version, formatTime(time.Now())); err != nil {
		return fmt.Errorf("migration %d: recording: %w", m.version, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migration %d: committing: %w", m.version, err)
	}
	oplog.G(ctx).InfoContext(ctx, "applied schema migration", "version", m.version)
	return nil
}
