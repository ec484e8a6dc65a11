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

	"banger/internal/agentarchive"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

func guestPath(field, p string) error {
	if p == "" || !filepath.IsAbs(p) {
		return errdefs.InvalidArgument(field, p, "must be an absolute guest path")
	}
	return nil
}

// handlePut receives an archive and extracts it at req.Path.
func (a *Agent) handlePut(conn io.Writer, br *bufio.Reader, req agentproto.Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	// Refuse a directory aimed at an existing file before any data moves.
	if req.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		if fi, err := os.Stat(req.Path); err == nil && !fi.IsDir() {
			return reply(conn, agentproto.Reply{}, errdefs.New(errdefs.ErrConflict, "cannot copy a directory onto the file %s", req.Path))
		}
	}
	dr := &agentproto.DataReader{R: br}
	// The host is trusted here: modes are kept as sent, setuid included, and there is no
	// size cap beyond the guest's disk.
	if err := agentarchive.ExtractTar(dr, req.Path, agentarchive.Policy{}); err != nil {
		return reply(conn, agentproto.Reply{}, fmt.Errorf("extracting into %s: %w", req.Path, err))
	}
	return reply(conn, agentproto.Reply{}, nil)
}

// handleGet sends req.Path as an archive.
func (a *Agent) handleGet(conn io.Writer, req agentproto.Request) error {
	if err := guestPath("path", req.Path); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	if _, err := os.Stat(req.Path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return reply(conn, agentproto.Reply{}, errdefs.NotFound("guest path", req.Path))
		}
		return reply(conn, agentproto.Reply{}, fmt.Errorf("reading %s: %w", req.Path, err))
	}
	if err := reply(conn, agentproto.Reply{}, nil); err != nil {
		return err
	}
	fw := &agentproto.FrameWriter{W: conn}
	dw := agentproto.DataWriter{FW: fw}
	if err := agentarchive.WriteTar(dw, req.Path); err != nil {
		// The ok was already sent; an error frame is the only way left to fail the copy.
		_ = fw.Write(agentproto.FrameError, []byte(err.Error()))
		return err
	}
	if err := dw.Close(); err != nil {
		return fmt.Errorf("sending the end of the archive: %w", err)
	}
	return nil
}
