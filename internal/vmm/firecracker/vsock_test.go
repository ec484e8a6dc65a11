package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hybridServer accepts one connection on a fresh socket, checks the CONNECT line and
// answers with reply (written in one piece, so any payload after the OK line arrives in
// the same segment as it).
func hybridServer(t *testing.T, reply string, closeAfter bool) (string, <-chan string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, err := readLine(c)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- line
		if reply != "" {
			io.WriteString(c, reply)
		}
		if !closeAfter {
			// Hold the connection open and echo until the client closes it.
			io.Copy(c, c)
		}
	}()
	return sock, got
}

func TestDialVsockKeepsBytesAfterOK(t *testing.T) {
	sock, got := hybridServer(t, "OK 1073741824\nfirst bytes from the guest", false)
	conn, err := DialVsock(t.Context(), sock, 1024)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if line := <-got; line != "CONNECT 1024" {
		t.Fatalf("server got %q", line)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len("first bytes from the guest"))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "first bytes from the guest" {
		t.Fatalf("payload after OK: %q, %v", buf, err)
	}
}

func TestDialVsockErrors(t *testing.T) {
	cases := []struct {
		name, reply string
		close       bool
		want        string
	}{
		{"closed without reply", "", true, "closed the connection"},
		{"error reply", "FAILURE no listener\n", true, `unexpected CONNECT reply "FAILURE no listener"`},
		{"bad port", "OK nope\n", true, "unexpected CONNECT reply"},
		{"partial line", "OK 12", true, "connection closed after"},
		{"endless line", strings.Repeat("x", 100), false, "reply longer than"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sock, _ := hybridServer(t, c.reply, c.close)
			_, err := DialVsock(t.Context(), sock, 1024)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestDialVsockTimesOut(t *testing.T) {
	sock, _ := hybridServer(t, "", false) // never answers
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := DialVsock(ctx, sock, 1024)
	if err == nil || time.Since(began) > 2*time.Second {
		t.Fatalf("got %v after %v, want a timeout near 200ms", err, time.Since(began))
	}
	if !strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("error %v does not say it timed out", err)
	}
}

func TestDialVsockMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
	defer cancel()
	_, err := DialVsock(ctx, filepath.Join(t.TempDir(), "absent.sock"), 1024)
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("got %v", err)
	}
}

// TestDialEndedSaysWhatThePathIs: a dial cut short by the context reports why the socket
// could not be reached, not only "i/o timeout" (under load the context can end mid-dial).
func TestDialEndedSaysWhatThePathIs(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := dialEnded(ctx, filepath.Join(t.TempDir(), "absent.sock"), os.ErrDeadlineExceeded)
	if !strings.Contains(err.Error(), "no such file") || !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want the context's error and the missing path", err)
	}
}
