package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"banger/internal/errdefs"
	"banger/internal/model"
)

const imageColumns = `id, name, version, arch, dir, kernel_args, files, source, created_at`

const imageOrder = ` ORDER BY created_at, name`

// InsertImage stores a new image. A zero CreatedAt is set to now, on im itself. A taken id or
// name is ErrAlreadyExists.
func (s *Store) InsertImage(ctx context.Context, im *model.Image) error {
	switch {
	case im.ID == "":
		return errdefs.InvalidArgument("id", im.ID, "must not be empty")
	case im.Name == "":
		return errdefs.InvalidArgument("name", im.Name, "must not be empty")
	}
	files := im.Files
	if files == nil {
		files = []model.File{}
	}
	filesJSON, err := json.Marshal(files)
	if err != nil {
		return fmt.Errorf("inserting image %q: encoding files: %w", im.Name, err)
	}
	if im.CreatedAt.IsZero() {
		im.CreatedAt = time.Now()
	}
	_, err = s.db.ExecContext(ctx,
		`INSERT INTO images (`+imageColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		im.ID, im.Name, im.Version, im.Arch, im.Dir, im.KernelArgs, string(filesJSON), im.Source,
		formatTime(im.CreatedAt))
	if err != nil {
		if col, ok := violatedColumn(err); ok {
			switch col {
			case "id":
				return errdefs.New(errdefs.ErrAlreadyExists, "image id %s already exists", im.ID)
			case "name":
				return errdefs.New(errdefs.ErrAlreadyExists, "image name %q already exists", im.Name)
			}
		}
		return fmt.Errorf("inserting image %q: %w", im.Name, err)
	}
	return nil
}

// DeleteImage removes the image record with this id. While any VM still uses the image it is
// ErrConflict naming those VMs.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	// The check and the delete share one write-locked transaction so no VM can start using
	// the image in between; the foreign key would still refuse, but with a worse message.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("deleting image %s: %w", id, err)
	}
	defer tx.Rollback()

	rows, err := tx.QueryContext(ctx, `SELECT name FROM vms WHERE image_id = ?`+vmOrder, id)
	if err != nil {
		return fmt.Errorf("deleting image %s: finding its vms: %w", id, err)
	}
	var users []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("deleting image %s: finding its vms: %w", id, err)
		}
		users = append(users, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("deleting image %s: finding its vms: %w", id, err)
	}
	if len(users) > 0 {
		return imageInUse(id, users)
	}
	snaps, err := names(ctx, tx.QueryContext, `SELECT name FROM snapshots WHERE image_id = ?`+snapshotOrder, id)
	if err != nil {
		return fmt.Errorf("deleting image %s: finding its snapshots: %w", id, err)
	}
	if len(snaps) > 0 {
		return errdefs.WithHint(
			errdefs.New(errdefs.ErrConflict, "image %s is used by %d snapshot(s): %s", id, len(snaps), strings.Join(snaps, ", ")),
			"delete those snapshots first (banger snapshot rm)")
	}

	res, err := tx.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id)
	if err != nil {
		if isForeignKeyViolation(err) {
			return errdefs.New(errdefs.ErrConflict, "image %s is used by vms", id)
		}
		return fmt.Errorf("deleting image %s: %w", id, err)
	}
	if err := expectOneRow(res, "image", id); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("deleting image %s: committing: %w", id, err)
	}
	return nil
}

func imageInUse(id string, vmNames []string) error {
	return errdefs.WithHint(
		errdefs.New(errdefs.ErrConflict, "image %s is used by %d vm(s): %s", id, len(vmNames), strings.Join(vmNames, ", ")),
		"delete those vms first")
}

// GetImage returns the image with exactly this id.
func (s *Store) GetImage(ctx context.Context, id string) (*model.Image, error) {
	return s.getImage(ctx, "id", id)
}

// ListImages returns all images, oldest first (ties by name).
func (s *Store) ListImages(ctx context.Context) ([]model.Image, error) {
	return s.queryImages(ctx, `SELECT `+imageColumns+` FROM images`+imageOrder)
}

// ResolveImage finds the image a user means by ref, with the same rules as ResolveVM.
func (s *Store) ResolveImage(ctx context.Context, ref string) (*model.Image, error) {
	return resolve(ctx, "image", ref,
		func(ctx context.Context, id string) (*model.Image, error) { return s.getImage(ctx, "id", id) },
		func(ctx context.Context, name string) (*model.Image, error) { return s.getImage(ctx, "name", name) },
		s.imagesWithIDPrefix,
		func(im *model.Image) string { return im.Name })
}

// getImage looks an image up by a unique column ("id" or "name"; never user input).
func (s *Store) getImage(ctx context.Context, column, value string) (*model.Image, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+imageColumns+` FROM images WHERE `+column+` = ?`, value)
	im, err := scanImage(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errdefs.NotFound("image", value)
	}
	if err != nil {
		return nil, fmt.Errorf("reading image by %s %q: %w", column, value, err)
	}
	return im, nil
}

func (s *Store) imagesWithIDPrefix(ctx context.Context, prefix string) ([]model.Image, error) {
	var ims []model.Image
	var err error
	if bound, ok := prefixUpperBound(prefix); ok {
		ims, err = s.queryImages(ctx, `SELECT `+imageColumns+` FROM images WHERE id >= ? AND id < ?`+imageOrder, prefix, bound)
	} else {
		ims, err = s.queryImages(ctx, `SELECT `+imageColumns+` FROM images WHERE id >= ?`+imageOrder, prefix)
	}
	return slices.DeleteFunc(ims, func(im model.Image) bool { return !strings.HasPrefix(im.ID, prefix) }), err
}

func (s *Store) queryImages(ctx context.Context, query string, args ...any) ([]model.Image, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	defer rows.Close()
	ims := []model.Image{}
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("listing images: %w", err)
		}
		ims = append(ims, *im)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	return ims, nil
}

func scanImage(sc scanner) (*model.Image, error) {
	var im model.Image
	var files, created string
	if err := sc.Scan(&im.ID, &im.Name, &im.Version, &im.Arch, &im.Dir, &im.KernelArgs,
		&files, &im.Source, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(files), &im.Files); err != nil {
		return nil, fmt.Errorf("decoding files of image %s: %w", im.ID, err)
	}
	var err error
	if im.CreatedAt, err = parseTime("created_at", created); err != nil {
		return nil, err
	}
	return &im, nil
}
