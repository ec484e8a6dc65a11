package rpc

import (
	"context"
	"errors"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// errClientHungUp is the cause of a request context cancelled because its client went away.
var errClientHungUp = errors.New("client hung up")

// cancelOnHangup returns a context that is cancelled when the peer closes its end of c
// completely, so a handler stops work (hashing an import, say) nobody will read the result
// of. Only a full close counts: poll reports POLLHUP for a unix socket once both directions
// are shut, while a client that half-closes after its request (socat does) only makes the
// socket readable, which is not watched. stop releases the watcher; call it before the
// connection is used again. Connections without a file descriptor are not watched.
func cancelOnHangup(ctx context.Context, c net.Conn) (context.Context, func()) {
	cctx, cancel := context.WithCancelCause(ctx)
	sc, ok := c.(syscall.Conn)
	if !ok {
		return cctx, func() { cancel(nil) }
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return cctx, func() { cancel(nil) }
	}
	// Poll a duplicate of the descriptor: holding the connection's own one (RawConn.Control)
	// for the whole call would make a concurrent Close wait for the call to end. The
	// duplicate keeps the socket open until stop, which the caller runs when the call ends.
	sock := -1
	raw.Control(func(fd uintptr) { sock, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if err != nil || sock < 0 {
		return cctx, func() { cancel(nil) }
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(sock)
		return cctx, func() { cancel(nil) }
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(sock)}, {Fd: int32(wake), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err == nil && fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				cancel(errClientHungUp)
			}
			return
		}
	}()
	return cctx, func() {
		unix.Write(wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		<-done
		unix.Close(wake)
		unix.Close(sock)
		cancel(nil)
	}
}
