package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

func TestPing(t *testing.T) {
	_, s := newTestAgent(t)
	info, err := agentclient.Ping(testCtx(t), openStream(t, s), "op-pingtest1")
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	if info.Hostname != host || info.Kernel != unix.ByteSliceToString(uts.Release[:]) {
		t.Errorf("ping = %+v, want hostname %q kernel %q", info, host, unix.ByteSliceToString(uts.Release[:]))
	}
	if info.AgentVersion != Version || info.UptimeSeconds <= 0 {
		t.Errorf("ping = %+v, want version %q and a positive uptime", info, Version)
	}
}

func TestExecSeparatesStdoutAndStderr(t *testing.T) {
	_, s := newTestAgent(t)
	var out, errOut bytes.Buffer
	code, err := agentclient.Exec(testCtx(t), openStream(t, s),
		agentclient.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}, OpID: "op-exectest1"},
		agentclient.ExecIO{Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Errorf("code %d stdout %q stderr %q, want 3 %q %q", code, out.String(), errOut.String(), "out\n", "err\n")
	}
}

func TestExecEnvAndCwd(t *testing.T) {
	_, s := newTestAgent(t)
	dir := t.TempDir()
	var out bytes.Buffer
	code, err := agentclient.Exec(testCtx(t), openStream(t, s),
		agentclient.ExecRequest{Argv: []string{"sh", "-c", `echo "$FOO|$HOME|$PATH"; pwd`}, Env: []string{"FOO=bar baz", "HOME=/elsewhere"}, Cwd: dir},
		agentclient.ExecIO{Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	want := "bar baz|/elsewhere|" + DefaultPath + "\n" + dir + "\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}

	_, err = agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"true"}, Cwd: filepath.Join(dir, "missing")}, agentclient.ExecIO{})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing cwd: err %v, want a not-found error naming it", err)
	}
	_, err = agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"true"}, Env: []string{"NOEQUALS"}}, agentclient.ExecIO{})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "NOEQUALS") {
		t.Errorf("bad env: err %v, want an invalid-argument error naming it", err)
	}
}

func TestExecStreamsStdinUntilEOF(t *testing.T) {
	_, s := newTestAgent(t)
	// Larger than the stdin queue, the pipe buffer and the yamux window together, so flow
	// control is exercised.
	in := bytes.Repeat([]byte("0123456789abcdef\n"), 200_000)
	var out bytes.Buffer
	code, err := agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"cat"}},
		agentclient.ExecIO{Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Errorf("cat returned %d bytes, want the %d sent", out.Len(), len(in))
	}

	// A nil stdin is an immediate EOF: cat must end at once.
	out.Reset()
	code, err = agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"cat"}}, agentclient.ExecIO{Stdout: &out})
	if err != nil || code != 0 || out.Len() != 0 {
		t.Errorf("cat with nil stdin: code %d err %v output %q", code, err, out.String())
	}
}

func TestExecCommandNotFound(t *testing.T) {
	_, s := newTestAgent(t)
	_, err := agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"no-such-command-xyz"}}, agentclient.ExecIO{})
	if !errors.Is(err, agentproto.ErrCommandNotFound) || !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("err %v, want agentproto.ErrCommandNotFound", err)
	}
	if !strings.Contains(err.Error(), "no-such-command-xyz") {
		t.Errorf("error %q does not name the command", err)
	}
	_, err = agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"/no/such/path"}}, agentclient.ExecIO{})
	if !errors.Is(err, agentproto.ErrCommandNotFound) {
		t.Errorf("absolute path: err %v, want agentproto.ErrCommandNotFound", err)
	}
	_, err = agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{}, agentclient.ExecIO{})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty argv: err %v, want invalid argument", err)
	}
}

func TestExecSignal(t *testing.T) {
	_, s := newTestAgent(t)
	sigs := make(chan syscall.Signal, 1)
	sigs <- syscall.SIGTERM
	start := time.Now()
	code, err := agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{Argv: []string{"sleep", "30"}}, agentclient.ExecIO{Signals: sigs})
	if err != nil {
		t.Fatal(err)
	}
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit code %d, want %d", code, 128+int(syscall.SIGTERM))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s; the signal did not end sleep", d)
	}
}

func TestExecTTY(t *testing.T) {
	requireCommand(t, "stty")
	_, s := newTestAgent(t)
	out := &notifyBuffer{}
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer inR.Close()
	defer inW.Close()
	resize := make(chan [2]uint16, 1)
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, err := agentclient.Exec(testCtx(t), openStream(t, s), agentclient.ExecRequest{
			Argv: []string{"sh", "-c", `tty; echo "term=$TERM"; stty size; read x; stty size; echo to-stderr >&2; exit 7`},
			TTY:  true, Rows: 33, Cols: 101, Term: "vt100",
		}, agentclient.ExecIO{Stdin: inR, Stdout: out, Resize: resize})
		res <- result{code, err}
	}()
	select {
	case <-out.waitFor("33 101"):
	case r := <-res:
		t.Fatalf("exec ended early: %+v, output %q", r, out.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("no initial size in output %q", out.String())
	}
	resize <- [2]uint16{40, 120}
	// The resize frame and the input travel on one stream in order, so the second stty
	// sees the new size.
	time.Sleep(100 * time.Millisecond)
	if _, err := inW.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-res:
	case <-time.After(10 * time.Second):
		t.Fatalf("exec did not finish; output %q", out.String())
	}
	if r.err != nil || r.code != 7 {
		t.Fatalf("code %d err %v", r.code, r.err)
	}
	got := out.String()
	for _, want := range []string{"/dev/pts/", "term=vt100", "33 101", "40 120", "to-stderr"} {
		if !strings.Contains(got, want) {
			t.Errorf("tty output %q lacks %q", got, want)
		}
	}
}

func TestExecCancelClosesStream(t *testing.T) {
	_, s := newTestAgent(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(testCtx(t))
	res := make(chan error, 1)
	go func() {
		_, err := agentclient.Exec(ctx, openStream(t, s), agentclient.ExecRequest{Argv: []string{"sh", "-c", `echo $$ > "$0"; exec sleep 30`, pidFile}}, agentclient.ExecIO{})
		res <- err
	}()
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if time.Now().After(deadline) {
			t.Fatal("the command never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agentclient.Exec did not return after cancel")
	}
	// The agent sees the stream end and hangs the process up.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs after the client went away", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPingCancelled(t *testing.T) {
	// A session whose server never answers: the call must return on ctx, not hang.
	host, guest := socketPair(t)
	defer guest.Close()
	cli, err := agentclient.NewClientSessionLogger(host, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := openStream(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = agentclient.Ping(ctx, st, "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want DeadlineExceeded", err)
	}
}

func TestShutdown(t *testing.T) {
	_, s := newTestAgent(t)
	err := agentclient.Shutdown(testCtx(t), openStream(t, s), "")
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("shutdown on an agent that cannot power off: err %v, want ErrUnavailable", err)
	}

	var calls atomic.Int32
	called := make(chan struct{}, 2)
	a := NewAgent(testLogger(), func(*slog.Logger) {
		calls.Add(1)
		called <- struct{}{}
	})
	s2 := startAgent(t, a)
	for range 2 {
		if err := agentclient.Shutdown(testCtx(t), openStream(t, s2), "op-shutdown1"); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("power-off never ran")
	}
	time.Sleep(300 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("power-off ran %d times, want once", n)
	}
}

func TestUnknownRequestType(t *testing.T) {
	_, s := newTestAgent(t)
	st := openStream(t, s)
	defer st.Close()
	if err := agentproto.WriteJSONLine(st, agentproto.Request{Type: "reboot-now"}); err != nil {
		t.Fatal(err)
	}
	var r agentproto.Reply
	if err := agentproto.ReadJSONLine(bufio.NewReader(st), &r); err != nil {
		t.Fatal(err)
	}
	if err := r.Err(); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "reboot-now") {
		t.Errorf("reply %+v, want an invalid-argument error naming the type", r)
	}
}
