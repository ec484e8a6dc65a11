package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// handshakeTimeout bounds the CONNECT/OK exchange when the context has no deadline.
	handshakeTimeout = 5 * time.Second
	// maxReplyLen bounds the reply line: "OK " and a 32-bit port fit with room to spare.
	maxReplyLen = 64
	// dialRetry bounds waiting for Firecracker to create the vsock socket.
	dialRetry = 5 * time.Second
)

// DialVsock opens a stream to guest vsock port through Firecracker's hybrid vsock socket
// at udsPath: connect, send "CONNECT <port>\n", read "OK <host port>\n".
func DialVsock(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	conn, err := dialUnixRetry(ctx, udsPath)
	if err != nil {
		return nil, err
	}
	if err := handshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("vsock port %d via %s: %w", port, udsPath, err)
	}
	return conn, nil
}

func dialUnixRetry(ctx context.Context, path string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialRetry)
	defer cancel()
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, dialEnded(ctx, path, err)
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("dialing vsock socket %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			return nil, dialEnded(ctx, path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dialEnded is the error of a dial whose context ended. The dial that was cut short says
// only "i/o timeout"; what the socket path is (missing, refusing) is the useful part.
func dialEnded(ctx context.Context, path string, last error) error {
	if errors.Is(last, os.ErrDeadlineExceeded) || errors.Is(last, context.DeadlineExceeded) || errors.Is(last, context.Canceled) {
		if _, serr := os.Stat(path); serr != nil {
			last = serr
		} else {
			last = errors.New("the socket exists but did not accept in time")
		}
	}
	return fmt.Errorf("dialing vsock socket %s: %w (last error: %v)", path, ctx.Err(), last)
}

func handshake(ctx context.Context, conn net.Conn, port uint32) error {
	// The context's end interrupts the exchange through AfterFunc, so that ctx.Err() is
	// already set when the read fails; the fixed deadline only guards a silent peer.
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return fmt.Errorf("sending CONNECT: %w", ctxErr(ctx, err))
	}
	line, err := readLine(conn)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("firecracker closed the connection (is the guest listening on that port?)")
		}
		return fmt.Errorf("reading CONNECT reply: %w", ctxErr(ctx, err))
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "OK" {
		return fmt.Errorf("unexpected CONNECT reply %q", line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		return fmt.Errorf("unexpected CONNECT reply %q", line)
	}
	if !stop() {
		return ctx.Err()
	}
	return conn.SetDeadline(time.Time{})
}

// readLine reads the reply one byte at a time. Reading more would swallow the first bytes
// the guest sends right after the reply; the line is short, so this costs a few syscalls.
func readLine(r io.Reader) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < maxReplyLen {
		n, err := r.Read(b)
		if n == 1 {
			if b[0] == '\n' {
				return string(line), nil
			}
			line = append(line, b[0])
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				return "", fmt.Errorf("connection closed after %q", line)
			}
			return "", err
		}
	}
	return "", fmt.Errorf("reply longer than %d bytes: %q", maxReplyLen, line)
}

func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}
