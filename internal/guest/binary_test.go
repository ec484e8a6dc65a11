package guest

import (
	"banger/internal/agentclient"
	"banger/internal/errdefs"
	"bytes"
	"debug/elf"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
	sess, err := agentclient.NewClientSessionLogger(conn, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := agentclient.Ping(testCtx(t), openStream(t, sess), ""); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	code, err := agentclient.Exec(testCtx(t), openStream(t, sess), agentclient.ExecRequest{Argv: []string{"echo", "from", "binary"}, OpID: "op-binarytest"}, agentclient.ExecIO{Stdout: &stdout})
	if err != nil || code != 0 || stdout.String() != "from binary\n" {
		t.Fatalf("exec: code %d err %v output %q", code, err, stdout.String())
	}
	if err := agentclient.Shutdown(testCtx(t), openStream(t, sess), ""); !errors.Is(err, errdefs.ErrUnavailable) {
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
