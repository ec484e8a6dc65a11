package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

func openTest(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "banger.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

// ipFor gives every index a distinct guest IP inside 10.0.0.0/8.
func ipFor(i int) string {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
}

func testImage(name string) *model.Image {
	return &model.Image{
		ID:         model.NewID() + model.NewID(),
		Name:       name,
		Version:    "1.2.3",
		Arch:       "amd64",
		Dir:        "/var/lib/banger/images/" + name,
		KernelArgs: "console=ttyS0 quiet",
		Files: []model.File{
			{Role: model.RoleKernel, Name: "vmlinuz", Size: 12345, SHA256: strings.Repeat("a", 64)},
			{Role: model.RoleRootfs, Name: "rootfs.ext4", Size: 1 << 30, SHA256: strings.Repeat("b", 64)},
		},
		Source:    "builder:tiny",
		CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC),
	}
}

func mustImage(t testing.TB, s *Store, name string) *model.Image {
	t.Helper()
	im := testImage(name)
	if err := s.InsertImage(context.Background(), im); err != nil {
		t.Fatalf("InsertImage(%s): %v", name, err)
	}
	return im
}

func testVM(name string, i int, im *model.Image) *model.VM {
	ip := netip.MustParseAddr(ipFor(i))
	id := model.NewID()
	return &model.VM{
		ID:                 id,
		Name:               name,
		ImageID:            im.ID,
		ImageName:          im.Name,
		State:              model.VMCreated,
		VCPU:               2,
		MemoryMiB:          512,
		SystemOverlayBytes: 4 << 30,
		WorkDiskBytes:      8 << 30,
		NAT:                true,
		GuestIP:            ip.String(),
		MAC:                model.MACForIP(ip),
		CID:                model.CIDForIP(ip),
		Tap:                model.TapForID(id),
		Dir:                "/var/lib/banger/vms/" + id,
		VMM:                "qemu",
		Accel:              "tcg",
	}
}

func mustVM(t testing.TB, s *Store, vm *model.VM) {
	t.Helper()
	if err := s.InsertVM(context.Background(), vm); err != nil {
		t.Fatalf("InsertVM(%s): %v", vm.Name, err)
	}
}

// sameVM compares records field by field, times by instant (the store returns UTC).
func sameVM(t *testing.T, got, want *model.VM) {
	t.Helper()
	for _, p := range []struct {
		name     string
		got, exp time.Time
	}{{"CreatedAt", got.CreatedAt, want.CreatedAt}, {"UpdatedAt", got.UpdatedAt, want.UpdatedAt}, {"StartedAt", got.StartedAt, want.StartedAt}} {
		if !p.got.Equal(p.exp) || p.got.IsZero() != p.exp.IsZero() {
			t.Errorf("%s = %v, want %v", p.name, p.got, p.exp)
		}
	}
	g, w := *got, *want
	g.CreatedAt, g.UpdatedAt, g.StartedAt = time.Time{}, time.Time{}, time.Time{}
	w.CreatedAt, w.UpdatedAt, w.StartedAt = time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("vm mismatch:\n got %+v\nwant %+v", g, w)
	}
}

func TestOpenCreatesPrivateFilesAndSetsPragmas(t *testing.T) {
	s, path := openTest(t)
	ctx := context.Background()

	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %o, want %o", p, got, want)
		}
	}

	// Pragmas like foreign_keys are per connection, so check several pooled connections held
	// at the same time, not just whichever one the pool hands out first.
	conns := make([]interface{ Close() error }, 0, 3)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 3 {
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		var mode string
		var fk, busy, sync int
		if err := c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "PRAGMA foreign_keys").Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || fk != 1 || busy != busyTimeoutMS || sync != 1 {
			t.Errorf("conn %d: journal_mode=%s foreign_keys=%d busy_timeout=%d synchronous=%d; want wal 1 %d 1",
				i, mode, fk, busy, sync, busyTimeoutMS)
		}
	}
}

func TestOpenRejectsBadPath(t *testing.T) {
	for _, p := range []string{"", filepath.Join(t.TempDir(), "x?mode=ro")} {
		if _, err := Open(context.Background(), p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, want ErrInvalidArgument", p, err)
		}
	}
}

func TestVMRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")

	berlin := time.FixedZone("CET", 3600)
	vm := testVM("alpha", 5, im)
	vm.State = model.VMRunning
	vm.CID = ^uint32(0) // top of the range must survive the signed INTEGER column
	vm.PID = 4242
	vm.LastError = "earlier boot timed out"
	vm.CreatedAt = time.Date(2025, 6, 7, 8, 9, 10, 123456789, berlin)
	vm.UpdatedAt = time.Date(2025, 6, 7, 8, 9, 11, 0, time.UTC)
	vm.StartedAt = time.Date(2025, 6, 7, 8, 9, 12, 5, time.UTC)
	want := *vm
	mustVM(t, s, vm)

	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameVM(t, got, &want)

	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("ListVMs returned %d vms, want 1", len(list))
	}
	sameVM(t, &list[0], &want)

	// A never-started VM keeps a zero StartedAt and false NAT through the round trip.
	fresh := testVM("beta", 6, im)
	fresh.NAT = false
	mustVM(t, s, fresh)
	if fresh.CreatedAt.IsZero() || !fresh.UpdatedAt.Equal(fresh.CreatedAt) {
		t.Errorf("InsertVM did not default times: created %v updated %v", fresh.CreatedAt, fresh.UpdatedAt)
	}
	got, err = s.GetVM(ctx, fresh.ID)
	if err != nil {
		t.Fatal(err)
	}
	sameVM(t, got, fresh)
	if !got.StartedAt.IsZero() || got.NAT {
		t.Errorf("fresh vm: StartedAt=%v NAT=%v, want zero and false", got.StartedAt, got.NAT)
	}
}

func TestUpdateVM(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	vm := testVM("alpha", 1, im)
	vm.CreatedAt = time.Now().Add(-time.Hour)
	vm.UpdatedAt = vm.CreatedAt
	mustVM(t, s, vm)
	created := vm.CreatedAt

	before := time.Now()
	vm.State = model.VMStopped
	vm.Name = "renamed"
	vm.VCPU = 4
	vm.StartedAt = time.Now().Add(-time.Minute)
	vm.CreatedAt = time.Now() // must be ignored
	if err := s.UpdateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	if vm.UpdatedAt.Before(before) {
		t.Errorf("UpdatedAt %v not bumped past %v", vm.UpdatedAt, before)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := *vm
	want.CreatedAt = created
	sameVM(t, got, &want)

	missing := testVM("ghost", 2, im)
	if err := s.UpdateVM(ctx, missing); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("UpdateVM(missing) = %v, want ErrNotFound", err)
	}

	if err := s.UpdateVMState(ctx, vm.ID, model.VMError, 0, "qemu exited with status 1"); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != model.VMError || got.PID != 0 || got.LastError != "qemu exited with status 1" ||
		got.UpdatedAt.Before(vm.UpdatedAt) {
		t.Errorf("after UpdateVMState: state=%s pid=%d err=%q updated=%v", got.State, got.PID, got.LastError, got.UpdatedAt)
	}
	if err := s.UpdateVMState(ctx, "nope", model.VMRunning, 1, ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("UpdateVMState(missing) = %v, want ErrNotFound", err)
	}
}

func TestImageRoundTrip(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := testImage("tiny")
	want := *im
	if err := s.InsertImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, im.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("CreatedAt = %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	got.CreatedAt, want.CreatedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("image mismatch:\n got %+v\nwant %+v", *got, want)
	}

	dup := testImage("tiny")
	if err := s.InsertImage(ctx, dup); !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), `image name "tiny"`) {
		t.Errorf("duplicate image name: %v, want ErrAlreadyExists naming it", err)
	}
	dupID := testImage("other")
	dupID.ID = im.ID
	if err := s.InsertImage(ctx, dupID); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate image id: %v, want ErrAlreadyExists", err)
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListImages = %d images, %v; want 1", len(list), err)
	}
}

func TestVMConstraints(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	foo := testVM("foo", 5, im)
	mustVM(t, s, foo)

	sameName := testVM("foo", 6, im)
	err := s.InsertVM(ctx, sameName)
	if !errors.Is(err, errdefs.ErrAlreadyExists) || err.Error() != `vm name "foo" already exists` {
		t.Errorf("same name: %v", err)
	}

	sameIP := testVM("bar", 5, im)
	err = s.InsertVM(ctx, sameIP)
	if !errors.Is(err, errdefs.ErrAlreadyExists) || err.Error() != "guest ip 10.0.0.5 already in use" {
		t.Errorf("same guest ip: %v", err)
	}

	sameID := testVM("baz", 7, im)
	sameID.ID = foo.ID
	if err := s.InsertVM(ctx, sameID); !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), foo.ID) {
		t.Errorf("same id: %v", err)
	}

	sameTap := testVM("qux", 8, im)
	sameTap.Tap = foo.Tap
	if err := s.InsertVM(ctx, sameTap); !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), "tap") {
		t.Errorf("same tap: %v", err)
	}

	// Renaming onto a taken name is caught by the same constraint.
	other := testVM("other", 9, im)
	mustVM(t, s, other)
	other.Name = "foo"
	if err := s.UpdateVM(ctx, other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("rename onto taken name: %v", err)
	}

	noImage := testVM("orphan", 10, im)
	noImage.ImageID = "does-not-exist"
	if err := s.InsertVM(ctx, noImage); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "does-not-exist") {
		t.Errorf("unknown image: %v, want ErrNotFound naming the image", err)
	}

	for _, bad := range []string{"", "10.0.0", "fd00::1", "010.0.0.1"} {
		vm := testVM("badip", 11, im)
		vm.GuestIP = bad
		if err := s.InsertVM(ctx, vm); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("guest ip %q: %v, want ErrInvalidArgument", bad, err)
		}
	}

	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Errorf("%d vms stored after rejected inserts, want 2", len(list))
	}
}

func TestResolveVM(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")

	a := testVM("alpha", 1, im)
	a.ID = "abc1" + a.ID[4:]
	b := testVM("beta", 2, im)
	b.ID = "abc2" + b.ID[4:]
	// A VM named like a prefix of alpha's and beta's ids.
	c := testVM("abc", 3, im)
	c.ID = "ffff" + c.ID[4:]
	// A VM named exactly like alpha's full id: the id is tried first.
	d := testVM(a.ID, 4, im)
	d.ID = "eeee" + d.ID[4:]
	for _, vm := range []*model.VM{a, b, c, d} {
		mustVM(t, s, vm)
	}

	cases := []struct {
		ref  string
		want string // vm name, or "" for an error
		kind error
	}{
		{ref: a.ID, want: "alpha"}, // full id beats exact name
		{ref: d.ID, want: a.ID},
		{ref: "beta", want: "beta"},
		{ref: "abc", want: "abc"}, // exact name beats id prefix
		{ref: "abc1", want: "alpha"},
		{ref: "f", want: "abc"}, // one-character unique prefix
		{ref: "ab", kind: errdefs.ErrAmbiguous},
		{ref: "0", kind: errdefs.ErrNotFound},
		{ref: "gamma", kind: errdefs.ErrNotFound},
		{ref: "%", kind: errdefs.ErrNotFound},
		{ref: "", kind: errdefs.ErrInvalidArgument},
	}
	for _, tc := range cases {
		got, err := s.ResolveVM(ctx, tc.ref)
		if tc.kind != nil {
			if !errors.Is(err, tc.kind) {
				t.Errorf("ResolveVM(%q) = %v, %v; want %v", tc.ref, got, err, tc.kind)
			}
			continue
		}
		if err != nil || got.Name != tc.want {
			t.Errorf("ResolveVM(%q) = %v, %v; want %s", tc.ref, got, err, tc.want)
		}
	}

	_, err := s.ResolveVM(ctx, "ab")
	if err == nil || !strings.Contains(err.Error(), "alpha") || !strings.Contains(err.Error(), "beta") {
		t.Errorf("ambiguous error should list the matching names: %v", err)
	}
	if errdefs.HintOf(err) == "" {
		t.Errorf("ambiguous error carries no hint: %v", err)
	}
	_, err = s.ResolveVM(ctx, "gamma")
	if err == nil || err.Error() != `vm "gamma" not found` {
		t.Errorf("not found message: %v", err)
	}
}

func TestResolveImage(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	x := testImage("x")
	x.ID = "aa11" + x.ID[4:]
	y := testImage("y")
	y.ID = "aa22" + y.ID[4:]
	for _, im := range []*model.Image{x, y} {
		if err := s.InsertImage(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.ResolveImage(ctx, "y"); err != nil || got.ID != y.ID {
		t.Errorf("ResolveImage(y) = %v, %v", got, err)
	}
	if got, err := s.ResolveImage(ctx, "aa1"); err != nil || got.Name != "x" {
		t.Errorf("ResolveImage(aa1) = %v, %v", got, err)
	}
	if _, err := s.ResolveImage(ctx, "aa"); !errors.Is(err, errdefs.ErrAmbiguous) {
		t.Errorf("ResolveImage(aa) = %v, want ErrAmbiguous", err)
	}
	if _, err := s.ResolveImage(ctx, "zz"); !errors.Is(err, errdefs.ErrNotFound) || err.Error() != `image "zz" not found` {
		t.Errorf("ResolveImage(zz) = %v, want image not found", err)
	}
}

func TestConcurrentInserts(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")

	const distinct = 50
	var wg sync.WaitGroup
	errs := make([]error, distinct)
	for i := range distinct {
		wg.Go(func() {
			errs[i] = s.InsertVM(ctx, testVM(fmt.Sprintf("vm-%d", i), 100+i, im))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("insert %d: %v", i, err)
		}
	}
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != distinct {
		t.Fatalf("%d vms stored, want %d", len(list), distinct)
	}

	const racers = 20
	errs = make([]error, racers)
	for i := range racers {
		wg.Go(func() {
			errs[i] = s.InsertVM(ctx, testVM("contested", 1000+i, im))
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, errdefs.ErrAlreadyExists):
			t.Errorf("racer %d: %v, want ErrAlreadyExists", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d racers inserted name %q, want exactly 1", won, "contested")
	}
}

func TestReopenKeepsDataAndSkipsMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	im := mustImage(t, s, "tiny")
	vm := testVM("keeper", 1, im)
	mustVM(t, s, vm)
	before := appliedMigrations(t, s)
	if len(before) != len(migrations) {
		t.Fatalf("%d migrations recorded, want %d", len(before), len(migrations))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.ResolveVM(ctx, "keeper")
	if err != nil {
		t.Fatal(err)
	}
	sameVM(t, got, vm)
	if _, err := s.GetImage(ctx, im.ID); err != nil {
		t.Fatal(err)
	}
	if after := appliedMigrations(t, s); !reflect.DeepEqual(after, before) {
		t.Errorf("migrations changed on reopen: before %v after %v", before, after)
	}
}

// appliedMigrations maps version to applied_at.
func appliedMigrations(t *testing.T, s *Store) map[int]string {
	t.Helper()
	rows, err := s.db.Query(`SELECT version, applied_at FROM schema_migrations`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[int]string{}
	for rows.Next() {
		var v int
		var at string
		if err := rows.Scan(&v, &at); err != nil {
			t.Fatal(err)
		}
		m[v] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMigrateAppliesOnlyMissing(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	before := appliedMigrations(t, s)

	// A later release adds a migration; the existing ones must not run again (re-running
	// CREATE TABLE vms would fail outright).
	next := append(append([]migration(nil), migrations...),
		migration{version: migrations[len(migrations)-1].version + 1, sql: `CREATE TABLE extra (x INTEGER); INSERT INTO extra VALUES (7);`})
	if err := migrate(ctx, s.db, next); err != nil {
		t.Fatalf("migrate with a new migration: %v", err)
	}
	after := appliedMigrations(t, s)
	if len(after) != len(next) {
		t.Fatalf("%d migrations recorded, want %d", len(after), len(next))
	}
	for v, at := range before {
		if after[v] != at {
			t.Errorf("migration %d re-applied: %s -> %s", v, at, after[v])
		}
	}
	var x int
	if err := s.db.QueryRow(`SELECT x FROM extra`).Scan(&x); err != nil || x != 7 {
		t.Errorf("new migration not applied: x=%d err=%v", x, err)
	}

	// A failing migration leaves nothing behind: not its tables, not its version row.
	broken := append(next, migration{version: next[len(next)-1].version + 1, sql: `CREATE TABLE half (x INTEGER); SELECT * FROM no_such_table;`})
	if err := migrate(ctx, s.db, broken); err == nil {
		t.Fatal("broken migration succeeded")
	}
	if got := appliedMigrations(t, s); len(got) != len(next) {
		t.Errorf("broken migration recorded: %v", got)
	}
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name = 'half'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("broken migration left table behind (n=%d, err=%v)", n, err)
	}

	if err := migrate(ctx, s.db, []migration{{version: 2}, {version: 1}}); err == nil {
		t.Error("out-of-order migrations accepted")
	}
}

func TestDeleteImageInUse(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	spare := mustImage(t, s, "spare")
	a := testVM("alpha", 1, im)
	b := testVM("beta", 2, im)
	mustVM(t, s, a)
	mustVM(t, s, b)

	users, err := s.VMsUsingImage(ctx, im.ID)
	if err != nil || len(users) != 2 {
		t.Fatalf("VMsUsingImage = %d vms, %v; want 2", len(users), err)
	}
	if users, err := s.VMsUsingImage(ctx, spare.ID); err != nil || len(users) != 0 {
		t.Errorf("VMsUsingImage(spare) = %v, %v; want none", users, err)
	}

	err = s.DeleteImage(ctx, im.ID)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "alpha") || !strings.Contains(err.Error(), "beta") {
		t.Errorf("DeleteImage(in use) = %v, want ErrConflict naming alpha and beta", err)
	}
	if _, err := s.GetImage(ctx, im.ID); err != nil {
		t.Errorf("image gone after refused delete: %v", err)
	}

	// The foreign key holds on its own, independent of the store's pre-check.
	if _, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, im.ID); !isForeignKeyViolation(err) {
		t.Errorf("raw delete of used image: %v, want foreign key violation", err)
	}

	for _, vm := range []*model.VM{a, b} {
		if err := s.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteVM(ctx, a.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteVM twice = %v, want ErrNotFound", err)
	}
	if err := s.DeleteImage(ctx, im.ID); err != nil {
		t.Fatalf("DeleteImage(unused) = %v", err)
	}
	if err := s.DeleteImage(ctx, im.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("DeleteImage twice = %v, want ErrNotFound", err)
	}
	if _, err := s.GetImage(ctx, im.ID); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetImage(deleted) = %v, want ErrNotFound", err)
	}
}

func TestUsedGuestIPs(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	// Inserted out of order; 10.0.0.10 sorts before 10.0.0.9 as text but not as an address.
	for i, idx := range []int{10, 9, 256} {
		mustVM(t, s, testVM(fmt.Sprintf("vm%d", i), idx, im))
	}
	ips, err := s.UsedGuestIPs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.0.10"), netip.MustParseAddr("10.0.1.0")}
	if !reflect.DeepEqual(ips, want) {
		t.Errorf("UsedGuestIPs = %v, want %v", ips, want)
	}
}

func TestListVMsOrder(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "tiny")
	base := time.Date(2025, 1, 1, 0, 0, 5, 0, time.UTC)
	// Whole seconds against fractions: RFC3339Nano text would sort "…05Z" after "…05.5Z".
	for i, tc := range []struct {
		name string
		at   time.Time
	}{{"late", base.Add(time.Second)}, {"b-tie", base}, {"half", base.Add(500 * time.Millisecond)}, {"a-tie", base}} {
		vm := testVM(tc.name, i+1, im)
		vm.CreatedAt = tc.at
		mustVM(t, s, vm)
	}
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, vm := range list {
		names = append(names, vm.Name)
	}
	if want := []string{"a-tie", "b-tie", "half", "late"}; !reflect.DeepEqual(names, want) {
		t.Errorf("ListVMs order = %v, want %v", names, want)
	}
}

func TestPrefixUpperBound(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{{"abc", "abd", true}, {"a\xff", "b", true}, {"\xff\xff", "", false}, {"9", ":", true}} {
		got, ok := prefixUpperBound(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("prefixUpperBound(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func BenchmarkInsertVM(b *testing.B) {
	s, _ := openTest(b)
	im := mustImage(b, s, "tiny")
	ctx := context.Background()
	vms := make([]*model.VM, b.N)
	for i := range vms {
		vms[i] = testVM(fmt.Sprintf("vm-%d", i), i+1, im)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := s.InsertVM(ctx, vms[i]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolveVM(b *testing.B) {
	s, _ := openTest(b)
	im := mustImage(b, s, "tiny")
	ctx := context.Background()
	const n = 1000
	vms := make([]*model.VM, n)
	for i := range vms {
		vms[i] = testVM(fmt.Sprintf("vm-%d", i), i+1, im)
		mustVM(b, s, vms[i])
	}
	for _, bc := range []struct {
		name string
		ref  func(*model.VM) string
	}{
		{"id", func(vm *model.VM) string { return vm.ID }},
		{"name", func(vm *model.VM) string { return vm.Name }},
		{"prefix8", func(vm *model.VM) string { return vm.ID[:8] }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for i := range b.N {
				vm := vms[i%n]
				got, err := s.ResolveVM(ctx, bc.ref(vm))
				if err != nil || got.ID != vm.ID {
					b.Fatalf("ResolveVM: %v, %v", got, err)
				}
			}
		})
	}
}

func TestSetVMBoot(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	im := mustImage(t, s, "base")
	vm := testVM("web", 1, im)
	mustVM(t, s, vm)
	if got, _ := s.GetVM(ctx, vm.ID); got.Boot != nil {
		t.Fatalf("a new VM has a boot timeline: %+v", got.Boot)
	}
	boot := &model.BootTimeline{
		At:    time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC),
		Host:  []model.BootStage{{Name: "vmm_launched", MS: 12}, {Name: "agent_ready", MS: 2780}},
		Guest: []model.BootStage{{Name: model.GuestStageInit, MS: 860}, {Name: model.GuestStageAgentServing, MS: 1150}},
	}
	if err := s.SetVMBoot(ctx, vm.ID, boot); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Boot, boot) {
		t.Errorf("boot = %+v, want %+v", got.Boot, boot)
	}
	if !got.UpdatedAt.Equal(vm.UpdatedAt) {
		t.Errorf("recording a timeline changed updated_at: %v -> %v", vm.UpdatedAt, got.UpdatedAt)
	}
	// Other writes keep it.
	got.LastError = "x"
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetVM(ctx, vm.ID); !reflect.DeepEqual(again.Boot, boot) {
		t.Errorf("UpdateVM lost the timeline: %+v", again.Boot)
	}

	// Bad timelines are refused, naming the field, and change nothing.
	many := make([]model.BootStage, model.MaxBootStages+1)
	for i := range many {
		many[i] = model.BootStage{Name: "s", MS: int64(i)}
	}
	for _, bad := range []*model.BootTimeline{
		{Host: many},
		{Guest: []model.BootStage{{Name: "Bad Name", MS: 1}}},
		{Guest: []model.BootStage{{Name: "init", MS: -1}}},
		{Guest: []model.BootStage{{Name: "init", MS: model.MaxBootStageMS + 1}}},
	} {
		err := s.SetVMBoot(ctx, vm.ID, bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "boot") {
			t.Errorf("SetVMBoot(%+v) = %v, want an invalid boot", bad, err)
		}
	}
	if again, _ := s.GetVM(ctx, vm.ID); !reflect.DeepEqual(again.Boot, boot) {
		t.Errorf("a refused timeline changed the stored one: %+v", again.Boot)
	}
	if err := s.SetVMBoot(ctx, "nope", boot); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("SetVMBoot of a missing VM = %v, want not found", err)
	}
	if err := s.SetVMBoot(ctx, vm.ID, nil); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetVM(ctx, vm.ID); again.Boot != nil {
		t.Errorf("clearing left %+v", again.Boot)
	}
}

// A pool's ready VM is claimed once: the compare-and-set gives it to one create, with the
// create's name, auto-remove and the creating mark; a second claim, or one of a VM that is
// not ready (running, or another pool's), is a conflict; a taken name is already_exists.
func TestClaimPoolVM(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	img := mustImage(t, s, "tiny")
	vm := testVM("pool-p-aaaaaa", 1, img)
	vm.Pool, vm.State = "p", model.VMPaused
	mustVM(t, s, vm)
	mustVM(t, s, testVM("taken", 2, img))
	if err := s.ClaimPoolVM(ctx, vm.ID, "q", PoolClaim{Name: "web"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("claim from another pool: %v", err)
	}
	if err := s.ClaimPoolVM(ctx, vm.ID, "p", PoolClaim{Name: "taken"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("claim with a taken name: %v", err)
	}
	if err := s.ClaimPoolVM(ctx, vm.ID, "p", PoolClaim{Name: "web", AutoRemove: true, NAT: true}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Pool != "" || got.Name != "web" || !got.AutoRemove || !got.NAT || !got.Creating || got.State != model.VMPaused {
		t.Fatalf("claimed row: %+v", got)
	}
	if err := s.ClaimPoolVM(ctx, vm.ID, "p", PoolClaim{Name: "web2"}); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second claim: %v", err)
	}
}
