package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"banger/internal/api"
	"banger/internal/client"
	"banger/internal/errdefs"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// serve runs a real rpc server with handlers on a socket in a temp dir.
func serve(t *testing.T, setup func(*rpc.Server)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	srv := rpc.NewServer(slog.New(slog.NewTextHandler(io.Discard, nil)))
	setup(srv)
	l, err := rpc.ListenUnix(sock, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return sock
}

func TestNoDaemonErrorNamesSocketOpIDAndFix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	ctx := opid.With(context.Background(), "op-clienttest01")
	_, err := client.New(sock).Ping(ctx)
	if err == nil {
		t.Fatal("ping of an absent daemon succeeded")
	}
	for _, want := range []string{"bangerd is not running at " + sock, "op-clienttest01"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if errdefs.HintOf(err) == "" {
		t.Errorf("error %q has no hint", err)
	}
	if !client.ConnectionLost(err) {
		t.Errorf("ConnectionLost(%v) = false", err)
	}
	if _, err := client.New(sock).VMAgent(ctx, "web"); err == nil || !strings.Contains(err.Error(), "op-clienttest01") {
		t.Errorf("stream dial error %v does not name the op id", err)
	}
}

// fakeCreate serves vm.create.begin/status: three stages over three polls, then the VM,
// or (name "bad") the operation's typed error.
func fakeCreate(s *rpc.Server) {
	var mu sync.Mutex
	ops := map[string]string{}
	s.Handle(api.MethodVMCreateBegin, func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p api.VMCreateParams
		if err := rpc.DecodeStrict(raw, &p); err != nil {
			return nil, err
		}
		id := opid.From(ctx)
		mu.Lock()
		ops[id] = p.Name
		mu.Unlock()
		return api.BeginResult{OpID: id}, nil
	})
	s.Handle(api.MethodVMCreateStatus, func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p api.OpStatusParams
		if err := rpc.DecodeStrict(raw, &p); err != nil {
			return nil, err
		}
		mu.Lock()
		name := ops[p.OpID]
		mu.Unlock()
		all := []api.Stage{{Name: "validated"}, {Name: "persisted", Message: name + " (abc) 10.0.0.2"}, {Name: "agent_ready"}}
		st := api.OpStatusResult{OpID: p.OpID, Kind: "vm.create", Stages: all[:min(p.After+1, len(all))]}
		if p.After >= len(all) {
			st.Done = true
			if name == "bad" {
				st.Error = rpc.ToWire(errdefs.New(errdefs.ErrAlreadyExists, "vm %q already exists", name), p.OpID)
			} else {
				st.VM = &model.VM{Name: name, State: model.VMRunning}
			}
		}
		return st, nil
	})
}

func TestVMCreateFollowsEveryStageOnce(t *testing.T) {
	c := client.New(serve(t, fakeCreate))
	var seen []string
	vm, err := c.VMCreate(context.Background(), api.VMCreateParams{Name: "web"}, func(s api.Stage, update bool) {
		if !update {
			seen = append(seen, s.Name)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if vm.Name != "web" || vm.State != model.VMRunning {
		t.Errorf("vm %+v", vm)
	}
	if got := strings.Join(seen, ","); got != "validated,persisted,agent_ready" {
		t.Errorf("stages seen %s", got)
	}
}

func TestFailedOperationIsItsTypedError(t *testing.T) {
	c := client.New(serve(t, fakeCreate))
	ctx := opid.With(context.Background(), "op-clienttest02")
	_, err := c.VMCreate(ctx, api.VMCreateParams{Name: "bad"}, nil)
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) || er.Code != rpc.CodeAlreadyExists || er.OpID != "op-clienttest02" {
		t.Fatalf("error %#v, want already_exists under op-clienttest02", err)
	}
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("errors.Is(%v, ErrAlreadyExists) = false", err)
	}
	if client.ConnectionLost(err) {
		t.Errorf("the daemon's answer counted as a lost connection")
	}
}
