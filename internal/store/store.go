// Package store persists banger's VM and image records in a SQLite database.
//
// The daemon is the only writer, but it writes from many goroutines at once, so the database
// runs in WAL mode with a busy timeout: readers never block the writer and concurrent writers
// wait for each other instead of failing. UNIQUE and FOREIGN KEY constraints in the schema are
// the last line of defence behind the daemon's own checks; their violations come back as
// errdefs kinds (ErrAlreadyExists, ErrNotFound, ErrConflict) with messages a user can act on.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"banger/internal/errdefs"
)

// busyTimeoutMS bounds how long a statement waits for another connection's write lock before
// failing with SQLITE_BUSY. Writes here take microseconds, so five seconds only runs out when
// something is badly wrong.
const busyTimeoutMS = 5000

// maxOpenConns caps the connection pool. SQLite admits one writer at a time anyway; more
// connections than this only add lock contention and file descriptors.
const maxOpenConns = 8

// Store is a handle on the banger database. It is safe for concurrent use.
type Store struct {
	db   *sql.DB
	path string
}

// Open opens (creating if needed) the database at path, creating its parent directory with
// mode 0700, and applies any schema migrations the file does not have yet.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errdefs.InvalidArgument("database path", path, "must not be empty")
	}
	// The driver splits the DSN at the first '?', so a path containing one would be cut short
	// and silently open a different file.
	if strings.ContainsRune(path, '?') {
		return nil, errdefs.InvalidArgument("database path", path, "must not contain '?'")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating database directory: %w", err)
	}
	// SQLite would create the file with the process umask (usually world-readable) and gives
	// its -wal and -shm files the same mode as the main file, so creating it 0600 first keeps
	// all three private.
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("creating database file: %w", err)
	}

	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", path, err)
	}
	db.SetMaxOpenConns(maxOpenConns)
	db.SetMaxIdleConns(maxOpenConns)

	s := &Store{db: db, path: path}
	if err := s.checkJournalMode(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := migrate(ctx, db, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating database %s: %w", path, err)
	}
	return s, nil
}

// Close releases the database. SQLite checkpoints the WAL into the main file when the last
// connection closes.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("closing database %s: %w", s.path, err)
	}
	return nil
}

// dsn builds the driver's connection string. Pragmas in the DSN run on every new pooled
// connection, which matters because foreign_keys and busy_timeout are per-connection settings.
// _txlock=immediate makes every transaction take the write lock at BEGIN: a deferred
// transaction that reads and then writes can hit SQLITE_BUSY without the busy handler ever
// being consulted, when another writer committed in between.
func dsn(path string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode()
}

func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// checkJournalMode fails if WAL could not be enabled (some filesystems refuse it), because the
// concurrency the daemon relies on would then silently degrade to lock errors.
func (s *Store) checkJournalMode(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("opening database %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("opening database %s: journal mode is %q, want wal (is the filesystem local?)", s.path, mode)
	}
	return nil
}

// Times are stored as UTC text with a fixed nine-digit fraction. It is still RFC 3339 (it
// parses with time.RFC3339Nano), but unlike RFC3339Nano's formatting, which trims trailing
// zeros, it sorts lexically in time order, so ORDER BY created_at is correct.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// formatTime encodes t for storage; the zero time is stored as "" so "never" stays distinct.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(timeLayout)
}

func parseTime(column, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("decoding %s %q: %w", column, s, err)
	}
	return t, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// uniqueColumn extracts "table.column" from SQLite's constraint message, e.g.
// "UNIQUE constraint failed: vms.name".
var uniqueColumn = regexp.MustCompile(`UNIQUE constraint failed: (\w+)\.(\w+)`)

// sqliteCode returns the extended result code of a driver error, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// violatedColumn reports which column a UNIQUE or PRIMARY KEY violation is about.
func violatedColumn(err error) (column string, ok bool) {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
	default:
		return "", false
	}
	m := uniqueColumn.FindStringSubmatch(err.Error())
	if m == nil {
		return "", false
	}
	return m[2], true
}

// isForeignKeyViolation reports a broken foreign key. SQLite uses two codes for it: an insert
// or update pointing nowhere is SQLITE_CONSTRAINT_FOREIGNKEY, while ON DELETE RESTRICT fires
// as an action and reports SQLITE_CONSTRAINT_TRIGGER with the same message.
func isForeignKeyViolation(err error) bool {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return true
	case sqlite3.SQLITE_CONSTRAINT_TRIGGER:
		return strings.Contains(err.Error(), "FOREIGN KEY constraint failed")
	}
	return false
}

// scanner is what *sql.Row and *sql.Rows have in common.
type scanner interface {
	Scan(dest ...any) error
}

// prefixUpperBound returns the smallest string greater than every string that starts with
// prefix, so that "id >= prefix AND id < bound" is an index range scan. ok is false when no
// such bound exists (prefix is all 0xff bytes).
func prefixUpperBound(prefix string) (bound string, ok bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// resolve implements the lookup order shared by VMs and images: exact id, exact name, then a
// unique id prefix. what is the object kind for messages ("vm", "image").
func resolve[T any](ctx context.Context, what, ref string,
	byID, byName func(context.Context, string) (*T, error),
	byPrefix func(ctx context.Context, prefix string) ([]T, error),
	nameOf func(*T) string,
) (*T, error) {
	if ref == "" {
		return nil, errdefs.InvalidArgument(what, ref, "must not be empty")
	}
	if v, err := byID(ctx, ref); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return v, err
	}
	// A name wins over an id prefix: a user who typed a full name means that object, even if
	// the name happens to be hex and prefixes someone else's id.
	if v, err := byName(ctx, ref); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return v, err
	}
	matches, err := byPrefix(ctx, ref)
	if err != nil {
		return nil, err
	}
	switch len(matches) {
	case 0:
		return nil, errdefs.NotFound(what, ref)
	case 1:
		return &matches[0], nil
	}
	names := make([]string, len(matches))
	for i := range matches {
		names[i] = nameOf(&matches[i])
	}
	return nil, errdefs.WithHint(
		errdefs.New(errdefs.ErrAmbiguous, "%s %q is ambiguous: it prefixes the ids of %s", what, ref, strings.Join(names, ", ")),
		fmt.Sprintf("use the full name or a longer id prefix of the %s", what))
}
