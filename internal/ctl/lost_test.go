package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/errdefs"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// dyingDaemon answers vm.create.begin, drops the connection of every vm.create.status
// call (as a crashing bangerd does), and answers vm.show with showErr or a stopped VM.
func dyingDaemon(t *testing.T, showErr error) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadBytes('\n')
				if err != nil {
					return
				}
				var req rpc.Request
				json.Unmarshal(line, &req)
				resp := rpc.Response{OpID: req.OpID}
				switch req.Method {
				case api.MethodVMCreateBegin:
					resp.Result, _ = json.Marshal(api.BeginResult{OpID: req.OpID})
				case api.MethodVMShow:
					if showErr != nil {
						resp.Error = rpc.ToWire(showErr, req.OpID)
					} else {
						vm := api.VMResult{}
						vm.VM.Name, vm.VM.State, vm.VM.LastError = "web", "stopped", "start interrupted by a bangerd restart"
						resp.Result, _ = json.Marshal(vm)
					}
				default:
					return // the daemon "crashed": no answer
				}
				b, _ := json.Marshal(resp)
				c.Write(append(b, '\n'))
			}(c)
		}
	}()
	return sock
}

func TestLostConnectionNamesOpAndVM(t *testing.T) {
	for _, tc := range []struct {
		showErr error
		want    string
	}{
		{nil, "it is now stopped (start interrupted by a bangerd restart)"},
		{errdefs.NotFound("vm", "web"), "it no longer exists"},
	} {
		var stderr bytes.Buffer
		g := &Globals{Socket: dyingDaemon(t, tc.showErr), Stdout: &bytes.Buffer{}, Stderr: &stderr}
		ctx := opid.With(context.Background(), "op-lostconn01")
		_, err := CreateVM(ctx, g, CreateOptions{VMCreateParams: api.VMCreateParams{Name: "web"}, Quiet: true})
		if err == nil {
			t.Fatal("create succeeded against a dying daemon")
		}
		msg := FormatError(err)
		for _, want := range []string{"op-lostconn01", "vm web", tc.want, "banger vm show web"} {
			if !strings.Contains(msg, want) {
				t.Errorf("error %q lacks %q", msg, want)
			}
		}
	}
}
