//go:build cgo

package main

// The agent is PID 1 of an initramfs that holds no dynamic loader and no libc, so it must be
// a static executable however it is built. With CGO_ENABLED=0 (make build) Go links it
// statically by itself; a plain `go build`/`go install` on a host with a C compiler turns cgo
// on, and the net and os/user packages then pull in libc, which would make the binary
// dynamic and every VM panic at boot with "Failed to execute /init (error -2)". Linking with
// -static keeps it self-contained in that case too. (The linker's warning that getaddrinfo in
// a static binary needs glibc's shared libraries does not apply: the agent resolves no names
// through libc.)

// #cgo LDFLAGS: -static
import "C"
