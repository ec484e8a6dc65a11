package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"banger/internal/errdefs"
)

func guestPath(field, p string) error {
	if p == "" || !filepath.IsAbs(p) {
		return errdefs.InvalidArgument(field, p, "must be an absolute guest path")
	}
	return nil
}

// handlePut receives an archive and extracts it at req.Path.
func (a *Agent) handlePut(conn io.Writer, br *bufio.Reader, req Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, Reply{}, err)
	}
	// Refuse a directory aimed at an existing file before any data moves.
	if req.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		if fi, err := os.Stat(req.Path); err == nil && !fi.IsDir() {
			return reply(conn, Reply{}, errdefs.New(errdefs.ErrConflict, "cannot copy a directory onto the file %s", req.Path))
		}
	}
	dr := &dataReader{r: br}
	// The host is trusted here: modes are kept as sent, setuid included, and there is no
	// size cap beyond the guest's disk.
	if err := extractTar(dr, req.Path, extractPolicy{}); err != nil {
		return reply(conn, Reply{}, fmt.Errorf("extracting into %s: %w", req.Path, err))
	}
	return reply(conn, Reply{}, nil)
}

// handleGet sends req.Path as an archive.
func (a *Agent) handleGet(conn io.Writer, req Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, Reply{}, err)
	}
	if _, err := os.Stat(req.Path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return reply(conn, Reply{}, errdefs.NotFound("guest path", req.Path))
		}
		return reply(conn, Reply{}, fmt.Errorf("reading %s: %w", req.Path, err))
	}
	if err := reply(conn, Reply{}, nil); err != nil {
		return err
	}
	fw := &frameWriter{w: conn}
	dw := dataWriter{fw: fw}
	if err := writeTar(dw, req.Path); err != nil {
		// The ok was already sent; an error frame is the only way left to fail the copy.
		_ = fw.write(FrameError, []byte(err.Error()))
		return err
	}
	if err := dw.Close(); err != nil {
		return fmt.Errorf("sending the end of the archive: %w", err)
	}
	return nil
}
