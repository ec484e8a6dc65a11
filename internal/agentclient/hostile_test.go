package agentclient

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// hostileGuest stands in for a compromised guest: a yamux server that answers every get
// with ok and then whatever serve writes (typically a crafted archive as data frames).
// It returns the host's client session.
func hostileGuest(t *testing.T, serve func(st io.ReadWriteCloser)) *yamux.Session {
	t.Helper()
	return hostileGuestReplying(t, agentproto.Reply{OK: true}, serve)
}

// hostileGuestReplying is hostileGuest answering every request with reply.
func hostileGuestReplying(t *testing.T, reply agentproto.Reply, serve func(st io.ReadWriteCloser)) *yamux.Session {
	t.Helper()
	host, guestEnd := socketPair(t)
	srv, err := yamux.Server(guestEnd, agentproto.YamuxConfig(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			st, err := srv.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				var req agentproto.Request
				if err := agentproto.ReadJSONLine(bufio.NewReader(st), &req); err != nil {
					return
				}
				if err := agentproto.WriteJSONLine(st, reply); err != nil {
					return
				}
				serve(st)
			}()
		}
	}()
	cli, err := NewClientSessionLogger(host, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
	})
	return cli
}

// sendArchive is a hostile serve function that sends b as a complete archive.
func sendArchive(b []byte) func(io.ReadWriteCloser) {
	return func(st io.ReadWriteCloser) {
		dw := agentproto.DataWriter{FW: &agentproto.FrameWriter{W: st}}
		if _, err := dw.Write(b); err != nil {
			return
		}
		_ = dw.Close()
	}
}

// rawTar builds an archive from full headers, so tests can set any mode, size or type.
func rawTar(t testing.TB, hdrs []*tar.Header, bodies ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if i < len(bodies) && bodies[i] != "" {
			if _, err := tw.Write([]byte(bodies[i])); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// copyOut is `vm cp VM:src dst` against session s.
func copyOut(t *testing.T, s *yamux.Session, src, dst string, opts CopyOptions) error {
	t.Helper()
	return Get(testCtx(t), openStream(t, s), "", src, dst, opts)
}

// copyIn is `vm cp src VM:dst` against session s.
func copyIn(t *testing.T, s *yamux.Session, src, dst string, opts CopyOptions) error {
	t.Helper()
	return Put(testCtx(t), openStream(t, s), "", src, dst, opts)
}

// entriesOf lists dir's tree (relative names), to show nothing else appeared.
func entriesOf(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGetRefusesOtherTopLevelName(t *testing.T) {
	// Asked for /root/out.log, the guest answers with .bashrc (and a .ssh tree): nothing of
	// it may land in the destination directory, and the user's own files stay as they were.
	for _, c := range []struct {
		name    string
		archive []*tar.Header
		bodies  []string
	}{
		{"bashrc", []*tar.Header{{Name: ".bashrc", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6}}, []string{"pwned\n"}},
		{"ssh", []*tar.Header{
			{Name: ".ssh/", Typeflag: tar.TypeDir, Mode: 0o700},
			{Name: ".ssh/authorized_keys", Typeflag: tar.TypeReg, Mode: 0o600, Size: 6},
		}, []string{"", "pwned\n"}},
		{"right then wrong", []*tar.Header{
			{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3},
			{Name: ".bashrc", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6},
		}, []string{"ok\n", "pwned\n"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := hostileGuest(t, sendArchive(rawTar(t, c.archive, c.bodies...)))
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, ".bashrc"), []byte("mine\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := copyOut(t, s, "/root/out.log", dir, CopyOptions{})
			if err == nil || !strings.Contains(err.Error(), `"out.log"`) {
				t.Fatalf("err %v, want a refusal naming the requested name out.log", err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, ".bashrc")); string(b) != "mine\n" {
				t.Errorf(".bashrc is now %q", b)
			}
			for _, e := range entriesOf(t, dir) {
				if e != ".bashrc" && e != "out.log" {
					t.Errorf("%s appeared in the destination", e)
				}
			}
		})
	}
}

func TestGetRefusesOtherNameIntoNewPath(t *testing.T) {
	// Renaming to a new destination still checks the name: the guest was asked for out.log.
	s := hostileGuest(t, sendArchive(rawTar(t, []*tar.Header{{Name: "other", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}}, "x")))
	dir := t.TempDir()
	err := copyOut(t, s, "/root/out.log", filepath.Join(dir, "new.log"), CopyOptions{})
	if err == nil || !strings.Contains(err.Error(), `"out.log"`) {
		t.Fatalf("err %v, want a refusal naming out.log", err)
	}
	if e := entriesOf(t, dir); len(e) != 0 {
		t.Errorf("left behind: %v", e)
	}
}

func TestGetMasksModesAndKeepsExistingDirs(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	s := hostileGuest(t, sendArchive(rawTar(t, []*tar.Header{
		{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o777 | syscall.S_ISVTX},
		{Name: "out/suid", Typeflag: tar.TypeReg, Mode: 0o4777, Size: 2},
		{Name: "out/sgid", Typeflag: tar.TypeReg, Mode: 0o2775, Size: 2},
		{Name: "out/new/", Typeflag: tar.TypeDir, Mode: 0o2777},
	}, "", "#!", "#!")))
	dir := t.TempDir()
	// The user's own directory of that name exists with its own mode: it must keep it.
	if err := os.Mkdir(filepath.Join(dir, "out"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "out"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := copyOut(t, s, "/root/out", dir, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]fs.FileMode{
		"out":      fs.ModeDir | 0o750,
		"out/suid": 0o755,
		"out/sgid": 0o755,
		"out/new":  fs.ModeDir | 0o755,
	} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
}

func TestGetRefusesHostileEntryTypes(t *testing.T) {
	for _, c := range []struct {
		name string
		hdrs []*tar.Header
	}{
		{"hardlink", []*tar.Header{
			{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "out/h", Typeflag: tar.TypeLink, Linkname: "out/../../etc/passwd"},
		}},
		{"hardlink inside", []*tar.Header{
			{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "out/a", Typeflag: tar.TypeReg, Mode: 0o644},
			{Name: "out/h", Typeflag: tar.TypeLink, Linkname: "out/a"},
		}},
		{"fifo", []*tar.Header{{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "out/f", Typeflag: tar.TypeFifo, Mode: 0o644}}},
		{"device", []*tar.Header{{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "out/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8}}},
		{"top-level symlink", []*tar.Header{{Name: "out", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := hostileGuest(t, sendArchive(rawTar(t, c.hdrs)))
			dir := t.TempDir()
			err := copyOut(t, s, "/root/out", dir, CopyOptions{})
			if err == nil {
				t.Fatalf("a %s from the guest was accepted: %v", c.name, entriesOf(t, dir))
			}
			last := c.hdrs[len(c.hdrs)-1]
			if fi, err := os.Lstat(filepath.Join(dir, last.Name)); err == nil {
				t.Errorf("%s was created (%v)", last.Name, fi.Mode())
			}
			t.Logf("refused: %v", err)
		})
	}
}

func TestGetNeverWritesThroughSymlinks(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name string
		hdrs []*tar.Header
		body []string
	}{
		{"own symlink then file through it", []*tar.Header{
			{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "out/l", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "out/l/evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		}, []string{"", "", "pwned"}},
		{"dir entry through own symlink", []*tar.Header{
			{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "out/l", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "out/l/", Typeflag: tar.TypeDir, Mode: 0o777},
		}, nil},
		{"relative symlink up", []*tar.Header{
			{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "out/l", Typeflag: tar.TypeSymlink, Linkname: "../.."},
			{Name: "out/l/evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		}, []string{"", "", "pwned"}},
		{"dotdot", []*tar.Header{{Name: "out/../evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}}, []string{"pwned"}},
		{"absolute", []*tar.Header{{Name: filepath.Join(outside, "evil"), Typeflag: tar.TypeReg, Mode: 0o644, Size: 5}}, []string{"pwned"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := hostileGuest(t, sendArchive(rawTar(t, c.hdrs, c.body...)))
			dir := t.TempDir()
			before, err := os.Stat(outside)
			if err != nil {
				t.Fatal(err)
			}
			if err := copyOut(t, s, "/root/out", dir, CopyOptions{}); err == nil {
				t.Fatal("accepted")
			}
			if e := entriesOf(t, outside); len(e) != 0 {
				t.Errorf("written outside the destination: %v", e)
			}
			if fi, err := os.Stat(outside); err != nil || fi.Mode() != before.Mode() {
				t.Errorf("outside dir mode changed: %v %v", fi.Mode(), err)
			}
		})
	}
}

func TestGetDoesNotFollowHostSymlinkAtTarget(t *testing.T) {
	// The destination already holds a symlink by the requested name: a file replaces the
	// link itself; the file it pointed at is untouched.
	s := hostileGuest(t, sendArchive(rawTar(t, []*tar.Header{{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4}}, "new\n")))
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "out.log")); err != nil {
		t.Fatal(err)
	}
	if err := copyOut(t, s, "/root/out.log", dir, CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Errorf("the symlink's target was written: %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "out.log")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("out.log: %v %v, want a regular file", fi, err)
	}
}

func TestGetCapsSizeAndRemovesPartialFile(t *testing.T) {
	// The guest claims 1 TiB and sends a little before stopping: refused up front, nothing left.
	huge := func(st io.ReadWriteCloser) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 40})
		_, _ = tw.Write(bytes.Repeat([]byte("x"), 64<<10))
		dw := agentproto.DataWriter{FW: &agentproto.FrameWriter{W: st}}
		_, _ = dw.Write(buf.Bytes())
	}
	s := hostileGuest(t, huge)
	dir := t.TempDir()
	err := copyOut(t, s, "/root/out.log", dir, CopyOptions{})
	if err == nil || !strings.Contains(err.Error(), "4G") {
		t.Fatalf("err %v, want the size limit (4G) named", err)
	}
	if e := entriesOf(t, dir); len(e) != 0 {
		t.Errorf("left behind: %v", e)
	}

	// Within a small cap, but the stream is cut mid-file: the partial file is removed.
	s = hostileGuest(t, func(st io.ReadWriteCloser) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 20})
		_, _ = tw.Write(bytes.Repeat([]byte("x"), 100<<10))
		dw := agentproto.DataWriter{FW: &agentproto.FrameWriter{W: st}}
		_, _ = dw.Write(buf.Bytes())
		_ = (&agentproto.FrameWriter{W: st}).Write(agentproto.FrameError, []byte("disk on fire"))
	})
	if err := copyOut(t, s, "/root/out.log", dir, CopyOptions{}); err == nil {
		t.Fatal("a cut-short archive succeeded")
	}
	if e := entriesOf(t, dir); len(e) != 0 {
		t.Errorf("left behind after a failed copy: %v", e)
	}

	// The cap counts the whole archive, many small files included.
	var hdrs []*tar.Header
	var bodies []string
	hdrs = append(hdrs, &tar.Header{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755})
	bodies = append(bodies, "")
	for i := range 20 {
		hdrs = append(hdrs, &tar.Header{Name: "out/f" + string(rune('a'+i)), Typeflag: tar.TypeReg, Mode: 0o644, Size: 1024})
		bodies = append(bodies, strings.Repeat("y", 1024))
	}
	s = hostileGuest(t, sendArchive(rawTar(t, hdrs, bodies...)))
	err = copyOut(t, s, "/root/out", filepath.Join(dir, "small"), CopyOptions{MaxBytes: 16 << 10})
	if err == nil || !strings.Contains(err.Error(), "16K") {
		t.Fatalf("err %v, want the 16K limit named", err)
	}
}

func TestGetTrailingDataIsCapped(t *testing.T) {
	// After a valid archive the guest keeps streaming data frames forever: the copy must end.
	s := hostileGuest(t, func(st io.ReadWriteCloser) {
		dw := agentproto.DataWriter{FW: &agentproto.FrameWriter{W: st}}
		if _, err := dw.Write(rawTar(t, []*tar.Header{{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1}}, "x")); err != nil {
			return
		}
		junk := make([]byte, 32<<10)
		for {
			if _, err := dw.Write(junk); err != nil {
				return
			}
		}
	})
	err := copyOut(t, s, "/root/out.log", t.TempDir(), CopyOptions{MaxBytes: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "1M") {
		t.Fatalf("err %v, want the 1M limit named", err)
	}
}

func TestGetIdleTimeout(t *testing.T) {
	// A guest that answers ok and then sends nothing: the copy fails after the idle timeout,
	// naming the path and the timeout, instead of waiting forever.
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	s := hostileGuest(t, func(st io.ReadWriteCloser) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		_ = tw.WriteHeader(&tar.Header{Name: "out.log", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1 << 20})
		_, _ = tw.Write(bytes.Repeat([]byte("z"), 1024))
		dw := agentproto.DataWriter{FW: &agentproto.FrameWriter{W: st}}
		// Some progress first, then silence: the timer restarts on progress.
		for chunk := range slices.Chunk(buf.Bytes(), 512) {
			time.Sleep(150 * time.Millisecond)
			if _, err := dw.Write(chunk); err != nil {
				return
			}
		}
		<-stall
	})
	start := time.Now()
	err := copyOut(t, s, "/root/out.log", t.TempDir(), CopyOptions{IdleTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "300ms") || !strings.Contains(err.Error(), "/root/out.log") {
		t.Fatalf("err %v, want an idle timeout naming 300ms and the path", err)
	}
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("err %v is not unavailable", err)
	}
	if d := time.Since(start); d < 3*150*time.Millisecond {
		t.Errorf("gave up after %v although the guest made progress every 150ms", d)
	}
}

func TestPutIdleTimeout(t *testing.T) {
	// A guest that never reads what the host sends: Put gives up too.
	stall := make(chan struct{})
	t.Cleanup(func() { close(stall) })
	s := hostileGuest(t, func(io.ReadWriteCloser) { <-stall })
	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	err := copyIn(t, s, src, "/root/big", CopyOptions{IdleTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "300ms") {
		t.Fatalf("err %v, want an idle timeout naming 300ms", err)
	}
}

func TestHostRefusesGuestInitiatedStreams(t *testing.T) {
	// The host never accepts streams; a guest that opens them must not pin host memory.
	// The session is torn down on the first one.
	host, guestEnd := socketPair(t)
	srv, err := yamux.Server(guestEnd, agentproto.YamuxConfig(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := NewClientSessionLogger(host, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opened := make(chan int, 1)
	go func() {
		n := 0
		defer func() { opened <- n }()
		for n < 1000 && ctx.Err() == nil {
			st, err := srv.OpenStream()
			if err != nil {
				return
			}
			n++
			go func() { _, _ = st.Write(make([]byte, 200<<10)) }()
		}
	}()
	select {
	case <-cli.CloseChan():
	case <-ctx.Done():
		t.Fatalf("the host session is still open after the guest opened streams for 10s")
	}
	srv.Close()
	t.Logf("session closed after %d guest streams", <-opened)
}

func TestGuestTextIsMadeSafe(t *testing.T) {
	// Strings the guest sends end up in terminals, progress lines and stored errors: no
	// escape sequences, and a bounded length.
	evil := "web\x1b]0;owned\x07\x1b[2J" + strings.Repeat("A", 1<<17)
	s := hostileGuestReplying(t, agentproto.Reply{OK: true, Hostname: evil, Kernel: evil, AgentVersion: evil, Protocol: agentproto.ProtocolVersion}, func(io.ReadWriteCloser) {})
	info, err := Ping(testCtx(t), openStream(t, s), "")
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{"hostname": info.Hostname, "kernel": info.Kernel, "agent_version": info.AgentVersion} {
		if strings.ContainsAny(v, "\x1b\x07") || len(v) > 260 || !strings.HasPrefix(v, "web") {
			t.Errorf("%s: %.40q… (%d bytes)", name, v, len(v))
		}
	}
	s = hostileGuestReplying(t, agentproto.Reply{OK: false, Error: evil}, func(io.ReadWriteCloser) {})
	err = copyOut(t, s, "/root/out", t.TempDir(), CopyOptions{})
	if err == nil || strings.ContainsAny(err.Error(), "\x1b\x07") || len(err.Error()) > 5000 {
		t.Errorf("error from the guest not made safe: %.80q (%d bytes)", err, len(err.Error()))
	}
	s = hostileGuest(t, func(st io.ReadWriteCloser) {
		_ = (&agentproto.FrameWriter{W: st}).Write(agentproto.FrameError, []byte(evil))
	})
	err = copyOut(t, s, "/root/out", t.TempDir(), CopyOptions{})
	if err == nil || strings.ContainsAny(err.Error(), "\x1b\x07") || len(err.Error()) > 5000 {
		t.Errorf("error frame from the guest not made safe: %.80q (%d bytes)", err, len(err.Error()))
	}
}

// TestPingRefusesAnotherProtocol: an agent reporting another protocol version (or none, as
// agents before versioning did) is a conflict naming both versions, with its own text made safe.
func TestPingRefusesAnotherProtocol(t *testing.T) {
	for _, p := range []int{0, agentproto.ProtocolVersion + 1} {
		s := hostileGuestReplying(t, agentproto.Reply{OK: true, Hostname: "web", AgentVersion: "v\x1b[2J", Protocol: p}, func(io.ReadWriteCloser) {})
		_, err := Ping(testCtx(t), openStream(t, s), "")
		if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), fmt.Sprintf("speaks protocol %d, this banger speaks %d", p, agentproto.ProtocolVersion)) {
			t.Errorf("agent of protocol %d: %v, want a conflict naming both versions", p, err)
		}
		if strings.Contains(err.Error(), "\x1b") {
			t.Errorf("agent text reached the error unescaped: %q", err)
		}
	}
}
