// Package agentproto is the protocol between the host and the guest agent: the stream's
// header and reply lines, frames, request types, error codes, the protocol version, the
// channel's names (virtio-serial port, vsock port), the kernel command line the init
// reads, and the shared types both ends encode (Identity, ListEntry).
//
// The host side is internal/agentclient (bangerd, the CLI, the shim); the guest side is
// internal/guest, linked into the static banger-agent binary that is the initrd's /init.
// Both import this package and internal/agentarchive (the put/get archive format); neither
// imports the other.
//
// # Transport
//
// The host reaches the agent over one byte stream: a virtio-serial port named
// agentproto.AgentSerialName under qemu, or AF_VSOCK port agentproto.AgentPort under firecracker. The
// stream is multiplexed with yamux: the guest is the yamux server, the host the yamux
// client, and every request below is one yamux stream. The virtio-serial port outlives
// host connections, so the agent reopens it and starts a fresh yamux server whenever a
// session ends (EOF, garbage, host gone); a host that finds its session dead redials.
//
// # One request on one stream
//
// The client first sends a header: one JSON object on one line ("\n"-terminated):
//
//	{"type":"ping"|"exec"|"put"|"get"|"list"|"shutdown", "op_id":"op-…", …fields of the type}
//
// op_id is optional; the agent tags every log line of the request with it. A reply is one
// JSON line {"ok":true, …} or {"ok":false,"error":"message","code":"kind"}, where code is
// "command_not_found" or one of the daemon protocol's codes from rpc's table
// ("invalid_argument", "not_found", "permission_denied", "unavailable", "conflict", …;
// docs/protocol.md §5), or "" (anything else). Header and reply lines are decoded
// strictly (rpc.DecodeStrict): unknown, case-variant and duplicate keys are refused. After a header or reply the stream
// carries binary frames:
//
//	kind    uint8
//	length  uint32, big endian, at most MaxFramePayload
//	payload length bytes
//
// Frame kinds (value, direction, payload):
//
//	1 stdin     host→guest  bytes for the process's stdin
//	2 stdin_eof host→guest  empty; closes the process's stdin
//	3 stdout    guest→host  bytes (with tty=true all terminal output comes here)
//	4 stderr    guest→host  bytes (only with tty=false)
//	5 exit      guest→host  int32 big endian: exit status, 128+signo if killed by a signal
//	6 signal    host→guest  int32 big endian: signal number, sent to the process group
//	7 resize    host→guest  uint16 rows, uint16 cols, big endian (tty=true only)
//	8 data      both        bytes of a tar archive (put, get)
//	9 data_eof  both        empty; the archive is complete
//	10 error    both        UTF-8 message; the sender aborts the transfer
//
// ping: header {"type":"ping"}. Reply {"ok":true,"hostname":"…","kernel":"6.1.0-…",
// "uptime_seconds":12.5,"agent_version":"…","protocol":1}. The agent then closes the stream.
//
// exec: header fields "argv" (required, non-empty), "env" (["KEY=VAL"], added to a default
// of PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, HOME=/root,
// USER=root, LOGNAME=root, SHELL=/bin/sh and, with tty, TERM), "cwd" (default /root, or /
// when /root is missing; an explicit cwd must exist), "tty", "rows", "cols", "term",
// "root" (an absolute guest directory to chroot the process into; argv[0] and cwd are then
// paths inside it, cwd defaulting to /), "uid", "gid" and "groups" (credentials, default 0 and none).
// The agent resolves argv[0] in the resulting PATH and replies {"ok":true} once the process
// runs, or an error (code "command_not_found" naming the command; the CLI exits 127). Then
// the client sends stdin, stdin_eof, signal and resize frames and the agent sends stdout,
// stderr and finally exactly one exit frame, after all output; the agent closes the stream
// after the exit frame. With tty=true the process runs on a pseudo-terminal as a session
// leader with it as controlling terminal, and stdin_eof writes ^D to the terminal. If the
// stream ends before the exit frame was sent (the client went away) the agent sends SIGHUP
// to the process group, then SIGKILL after a grace period.
//
// put (host→guest copy): header fields "path" (guest destination) and "mode" (the st_mode
// of the source, type and permission bits, so a directory-onto-file mistake is refused
// before any data moves). The client sends a tar archive as data frames and data_eof. Every
// entry name starts with one common first component, the source's base name. If path is an
// existing directory (or ends in "/", which creates it) the archive is extracted into it;
// otherwise that first component is renamed to path, so a single file becomes path and a
// directory becomes path. Entries that would land outside the destination ("..", absolute
// names, or through a symlink) are refused, and so are hard links, devices and fifos.
// Ownership is not preserved (the agent's user owns the files); permission bits and
// modification times are, except that directories that already existed keep theirs. The agent replies one JSON
// line {"ok":true} or an error after data_eof, or earlier on an error, and closes.
//
// get (guest→host copy): header field "path". The agent replies one JSON line, then sends a
// tar archive of path (same naming as put: first component is path's base name) as data
// frames and data_eof, or an error frame if reading fails midway, and closes. The host
// trusts none of it: only path's base name is accepted at the top level, and see
// agentarchive.ExtractTar and agentclient's hostPolicy for the rest (confinement, masked modes, size cap).
//
// list (a workspace's before/after listing): header field "path". The agent replies one
// JSON line, then sends one JSON object per line (ListEntry: relative path, st_mode,
// size, mtime and ctime in ns, inode, symlink target) for path and everything below it,
// lstat'ed, never following a symlink nor entering another mount, as data frames and
// data_eof. The host caps line length and entry count and refuses paths that are not
// clean and relative.
// identity: header {"type":"identity","identity":{"name":"web-2","addr":"172.30.0.9/24",
// "gateway":"172.30.0.1","dns":["172.30.0.1"],"mac":"02:b4:ac:1e:00:09",
// "machine_id":"<32 hex>","unix_nanos":…,"seed":"<64 hex>"}}. Sent by the host to a guest
// restored from a snapshot, which still believes it is the VM the snapshot was taken of.
// The agent validates every field first (nothing changes on bad input), then sets the
// clock, mixes seed into the kernel's entropy pool and forces a CRNG reseed, gives eth0 the
// MAC and only the new address, replaces the default route, sets the hostname and writes
// /etc/hostname, /etc/hosts and /etc/machine-id, and replies {"ok":true}. An agent that
// does not run in a banger guest refuses with code "unavailable".
//
// Only the host opens streams; a stream opened by the guest ends the host's session.
//
// shutdown: header {"type":"shutdown"}. The agent replies {"ok":true} and then, in the
// background, powers the VM off: as PID 1 it prints "guest shutdown" on the console, stops
// all processes (SIGTERM, a short wait, SIGKILL), unmounts or remounts read-only the work
// disk, the overlay root and the system disk, syncs and reboots, which ends the VMM process
// because VMMs run guests with no-reboot semantics. When a rootfs init is PID 1 the agent
// asks it to power off (SIGRTMIN+4 for systemd, SIGUSR2 for busybox init).
package agentproto

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/rpc"
)

// ProtocolVersion is reported by ping; it changes when a change breaks older hosts or agents.
const ProtocolVersion = 1

// Request types.
const (
	TypePing     = "ping"
	TypeExec     = "exec"
	TypePut      = "put"
	TypeGet      = "get"
	TypeShutdown = "shutdown"
	TypeIdentity = "identity"
	TypeList     = "list"
	// TypeWatch starts recording changes under path for a later list with watched.
	TypeWatch = "watch"
)

// Frame kinds; see the package documentation.
const (
	FrameStdin    byte = 1
	FrameStdinEOF byte = 2
	FrameStdout   byte = 3
	FrameStderr   byte = 4
	FrameExit     byte = 5
	FrameSignal   byte = 6
	FrameResize   byte = 7
	FrameData     byte = 8
	FrameDataEOF  byte = 9
	FrameError    byte = 10
)

// MaxFramePayload bounds a frame so a corrupt length cannot make a peer allocate gigabytes.
const MaxFramePayload = 1 << 20

// chunkSize is how much output or file data goes into one frame.
const ChunkSize = 32 << 10

// maxHeaderLine bounds the JSON header and reply lines for the same reason.
const MaxHeaderLine = 1 << 20

// Error codes carried in replies, mapped to errdefs kinds on the host.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeNotFound         = "not_found"
	CodeCommandNotFound  = "command_not_found"
	CodePermissionDenied = "permission_denied"
	CodeUnavailable      = "unavailable"
	CodeConflict         = "conflict"
)

// ErrCommandNotFound is matched (errors.Is) by an exec error whose command does not exist in
// the guest; the CLI exits 127 for it, like a shell.
var ErrCommandNotFound = errors.New("command not found")

// Request is the header line of a stream.
type Request struct {
	Type string `json:"type"`
	OpID string `json:"op_id,omitempty"`

	// exec
	Argv []string `json:"argv,omitempty"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	Term string   `json:"term,omitempty"`
	// Root, when set, is a guest directory the process is chrooted into (a container's
	// rootfs); argv[0] and cwd are then resolved inside it. UID and GID are the
	// credentials the process runs with (0: root, the agent's own).
	Root   string   `json:"root,omitempty"`
	UID    uint32   `json:"uid,omitempty"`
	GID    uint32   `json:"gid,omitempty"`
	Groups []uint32 `json:"groups,omitempty"` // supplementary groups

	// put, get, list
	Path string `json:"path,omitempty"`
	// list: only entries changed at or after this guest time (ns), and the entries of the
	// directories that did; 0 lists everything; a time in the guest's future lists nothing
	// (the reply's now tells the client the guest's clock).
	Since int64 `json:"since,omitempty"`
	// list: use the changes a watch request on path recorded instead of walking, when it
	// has a usable one (the listing is the same either way).
	Watched bool   `json:"watched,omitempty"`
	Mode    uint32 `json:"mode,omitempty"`

	// identity
	Identity *Identity `json:"identity,omitempty"`
}

// Reply is the agent's JSON answer line.
type Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`

	// ping
	Hostname      string  `json:"hostname,omitempty"`
	Kernel        string  `json:"kernel,omitempty"`
	UptimeSeconds float64 `json:"uptime_seconds,omitempty"`
	AgentVersion  string  `json:"agent_version,omitempty"`
	Protocol      int     `json:"protocol,omitempty"`
	// Boot is the guest's boot stages (uptime ms), oldest first.
	Boot []model.BootStage `json:"boot,omitempty"`

	// list, watch: the guest's wall clock (ns) when the listing or watch began
	Now int64 `json:"now,omitempty"`
	// watch: changes are being recorded
	Watching bool `json:"watching,omitempty"`
}

// RemoteError is an error reported by the agent. It matches the errdefs kind of its code and,
// for a missing command, ErrCommandNotFound.
type RemoteError struct {
	Code    string
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Is maps the wire code back to the errdefs kinds (rpc's one code table), so callers never
// compare strings.
func (e *RemoteError) Is(target error) bool {
	if e.Code == CodeCommandNotFound {
		return target == errdefs.ErrNotFound || target == ErrCommandNotFound
	}
	k := rpc.KindOf(e.Code)
	return k != nil && k == target
}

// codeOf picks the wire code for an agent-side error from rpc's code table; an
// unclassified error is "" on this protocol.
func CodeOf(err error) string {
	if errors.Is(err, ErrCommandNotFound) {
		return CodeCommandNotFound
	}
	if c := rpc.CodeOf(err); c != rpc.CodeInternal {
		return c
	}
	return ""
}

func ErrorReply(err error) Reply {
	return Reply{OK: false, Error: err.Error(), Code: CodeOf(err)}
}

// maxPeerMessage bounds an error message from the peer, which ends up in terminals, logs
// and stored errors.
const MaxPeerMessage = 4096

// peerText makes text from the peer safe to print: control characters (terminal escapes
// included) and invalid UTF-8 become U+FFFD, and it is cut at max bytes.
func PeerText(s string, max int) string {
	var b strings.Builder
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) {
			r = utf8.RuneError
		}
		if b.Len()+utf8.RuneLen(r) > max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// err turns a failed reply into a RemoteError.
func (r Reply) Err() error {
	if r.OK {
		return nil
	}
	msg := PeerText(r.Error, MaxPeerMessage)
	if msg == "" {
		msg = "agent reported failure without a message"
	}
	return &RemoteError{Code: r.Code, Message: msg}
}

// writeJSONLine writes v as one line.
func WriteJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// readJSONLine reads one line from br into v with rpc's line reader and strict decoder:
// at most maxHeaderLine bytes, exact-case known keys only, no duplicates, no trailing data.
func ReadJSONLine(br *bufio.Reader, v any) error {
	line, err := rpc.ReadLine(br, MaxHeaderLine)
	if errors.Is(err, rpc.ErrLineTooLong) {
		return fmt.Errorf("json line longer than %d bytes", MaxHeaderLine)
	}
	if err != nil {
		return err
	}
	if line[len(line)-1] != '\n' {
		return io.ErrUnexpectedEOF
	}
	if err := rpc.DecodeStrict(line, v); err != nil {
		// %v: a malformed line from the peer is not a bad request of whoever called us.
		return fmt.Errorf("decoding json line: %v", err)
	}
	return nil
}

// frameWriter serialises frames from several goroutines onto one stream.
type FrameWriter struct {
	mu sync.Mutex
	W  io.Writer
}

func (fw *FrameWriter) Write(kind byte, payload []byte) error {
	if len(payload) > MaxFramePayload {
		return fmt.Errorf("frame payload of %d bytes exceeds %d", len(payload), MaxFramePayload)
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = kind
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	fw.mu.Lock()
	defer fw.mu.Unlock()
	_, err := fw.W.Write(buf)
	return err
}

func (fw *FrameWriter) WriteInt32(kind byte, v int32) error {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(v))
	return fw.Write(kind, b[:])
}

// readFrame reads one frame. io.EOF means the stream ended cleanly between frames.
func ReadFrame(r io.Reader) (kind byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, fmt.Errorf("reading frame header: %w", err)
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > MaxFramePayload {
		return 0, nil, fmt.Errorf("frame of kind %d claims %d bytes, more than %d", hdr[0], n, MaxFramePayload)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("reading frame payload: %w", err)
	}
	return hdr[0], payload, nil
}

func PayloadInt32(kind byte, p []byte) (int32, error) {
	if len(p) != 4 {
		return 0, fmt.Errorf("frame kind %d: payload of %d bytes, want 4", kind, len(p))
	}
	return int32(binary.BigEndian.Uint32(p)), nil
}

// dataWriter turns an io.Writer into data frames; Close sends data_eof.
type DataWriter struct{ FW *FrameWriter }

func (d DataWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), ChunkSize)
		if err := d.FW.Write(FrameData, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

func (d DataWriter) Close() error { return d.FW.Write(FrameDataEOF, nil) }

// dataReader reads data frames as a byte stream until data_eof (io.EOF). An error frame or
// any other kind is an error.
type DataReader struct {
	R    io.Reader
	buf  []byte
	done bool
}

func (d *DataReader) Read(p []byte) (int, error) {
	for len(d.buf) == 0 {
		if d.done {
			return 0, io.EOF
		}
		kind, payload, err := ReadFrame(d.R)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("stream ended before the end of the archive: %w", io.ErrUnexpectedEOF)
			}
			return 0, err
		}
		switch kind {
		case FrameData:
			d.buf = payload
		case FrameDataEOF:
			d.done = true
		case FrameError:
			return 0, fmt.Errorf("peer aborted the transfer: %s", PeerText(string(payload), MaxPeerMessage))
		default:
			return 0, fmt.Errorf("unexpected frame kind %d in an archive stream", kind)
		}
	}
	n := copy(p, d.buf)
	d.buf = d.buf[n:]
	return n, nil
}
