package guest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"banger/internal/errdefs"
)

func TestFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	if err := fw.write(FrameStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := fw.writeInt32(FrameExit, 143); err != nil {
		t.Fatal(err)
	}
	want := []byte{FrameStdout, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', FrameExit, 0, 0, 0, 4, 0, 0, 0, 143}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("wire bytes %v, want %v", buf.Bytes(), want)
	}
	kind, p, err := readFrame(&buf)
	if err != nil || kind != FrameStdout || string(p) != "hello" {
		t.Fatalf("first frame %d %q %v", kind, p, err)
	}
	kind, p, err = readFrame(&buf)
	if v, perr := payloadInt32(kind, p); err != nil || perr != nil || kind != FrameExit || v != 143 {
		t.Fatalf("second frame %d %v %v", kind, p, err)
	}
	if _, _, err := readFrame(&buf); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameRejectsHugeAndTruncated(t *testing.T) {
	hdr := make([]byte, 5)
	hdr[0] = FrameData
	binary.BigEndian.PutUint32(hdr[1:], MaxFramePayload+1)
	if _, _, err := readFrame(bytes.NewReader(hdr)); err == nil || !strings.Contains(err.Error(), "claims") {
		t.Errorf("oversized frame: %v", err)
	}
	binary.BigEndian.PutUint32(hdr[1:], 10)
	if _, _, err := readFrame(bytes.NewReader(append(hdr, 1, 2))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated payload: %v, want ErrUnexpectedEOF", err)
	}
	if _, _, err := readFrame(bytes.NewReader(hdr[:3])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated header: %v, want ErrUnexpectedEOF", err)
	}
}

func TestJSONLineLimit(t *testing.T) {
	long := append(bytes.Repeat([]byte{'a'}, maxHeaderLine+10), '\n')
	var r Request
	if err := readJSONLine(bufio.NewReader(bytes.NewReader(long)), &r); err == nil {
		t.Error("accepted a header line over the limit")
	}
}

func TestRemoteErrorKinds(t *testing.T) {
	for _, kind := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrPermissionDenied, errdefs.ErrUnavailable, errdefs.ErrConflict} {
		sent := errdefs.New(kind, "something")
		back := errorReply(sent).err()
		if !errors.Is(back, kind) || back.Error() != "something" {
			t.Errorf("%v: came back as %v (%q)", kind, back, back.Error())
		}
	}
}

// TestAgentBinary guards what the initrd needs, a binary with no interpreter, and runs
// the binary's serve mode end to end.
func TestAgentBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent binary")
	}
	requireCommand(t, "go")
	out := filepath.Join(t.TempDir(), "banger-agent")
	cmd := exec.Command("go", "build", "-o", out, "banger/cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the agent binary has an ELF interpreter; it would not run in the initrd")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the agent binary links %v", libs)
	}
	fi, _ := os.Stat(out)
	t.Logf("agent binary: %d bytes", fi.Size())

	// The debugging mode: serve on a unix socket, answer a ping and an exec, stop on SIGTERM.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv := exec.Command(out, "serve", "--listen-unix", sock)
	var logs bytes.Buffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent socket never appeared: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sess, err := NewClientSessionLogger(conn, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := Ping(testCtx(t), openStream(t, sess), ""); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	code, err := Exec(testCtx(t), openStream(t, sess), ExecRequest{Argv: []string{"echo", "from", "binary"}, OpID: "op-binarytest"}, ExecIO{Stdout: &stdout})
	if err != nil || code != 0 || stdout.String() != "from binary\n" {
		t.Fatalf("exec: code %d err %v output %q", code, err, stdout.String())
	}
	if err := Shutdown(testCtx(t), openStream(t, sess), ""); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("shutdown on a host: %v, want ErrUnavailable", err)
	}
	_ = srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Errorf("agent exit after SIGTERM: %v\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), `"op_id":"op-binarytest"`) {
		t.Errorf("agent logs lack the op_id:\n%s", logs.String())
	}
}
