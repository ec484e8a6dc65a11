package guest

import (
	"bufio"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"banger/internal/agentclient"
	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

func goodIdentity() agentproto.Identity {
	return agentproto.Identity{Name: "web-2", Addr: "172.30.0.9/24", Gateway: "172.30.0.1", DNS: []string{"172.30.0.1"},
		MAC: "02:b4:ac:1e:00:09", MachineID: strings.Repeat("ab", 16), UnixNanos: 1, Seed: strings.Repeat("0f", 32)}
}

func TestIdentityValidateNamesTheField(t *testing.T) {
	if _, err := goodIdentity().Validate(); err != nil {
		t.Fatal(err)
	}
	for field, edit := range map[string]func(*agentproto.Identity){
		"identity.name":       func(i *agentproto.Identity) { i.Name = "../etc" },
		"identity.addr":       func(i *agentproto.Identity) { i.Addr = "fe80::1/64" },
		"identity.gateway":    func(i *agentproto.Identity) { i.Gateway = "10.0.0.1" },
		"identity.mac":        func(i *agentproto.Identity) { i.MAC = "01:00:5e:00:00:01" },
		"identity.machine_id": func(i *agentproto.Identity) { i.MachineID = "XYZ" },
		"identity.seed":       func(i *agentproto.Identity) { i.Seed = "00" },
		"identity.unix_nanos": func(i *agentproto.Identity) { i.UnixNanos = 0 },
		"identity.dns":        func(i *agentproto.Identity) { i.DNS = []string{"a", "b", "c", "d"} },
	} {
		id := goodIdentity()
		edit(&id)
		_, err := id.Validate()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

// An agent on a host refuses identity requests; one given an applier gets only valid ones.
func TestIdentityRequest(t *testing.T) {
	_, sess := newTestAgent(t)
	err := agentclient.SetIdentity(testCtx(t), openStream(t, sess), "op-identity1", goodIdentity())
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("host agent: %v, want unavailable", err)
	}
	var (
		mu  sync.Mutex
		got []agentproto.Identity
	)
	a := NewAgent(testLogger(), nil).WithIdentity(func(id agentproto.Identity, _ *slog.Logger) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, id)
		return nil
	})
	sess = startAgent(t, a)
	if err := agentclient.SetIdentity(testCtx(t), openStream(t, sess), "op-identity2", goodIdentity()); err != nil {
		t.Fatal(err)
	}
	// A bad identity sent raw (the client would refuse it) is refused by the agent too.
	st := openStream(t, sess)
	bad := goodIdentity()
	bad.Name = "-bad"
	if err := agentproto.WriteJSONLine(st, agentproto.Request{Type: agentproto.TypeIdentity, Identity: &bad}); err != nil {
		t.Fatal(err)
	}
	var r agentproto.Reply
	if err := agentproto.ReadJSONLine(bufio.NewReader(st), &r); err != nil || r.OK || r.Code != agentproto.CodeInvalidArgument {
		t.Fatalf("bad identity: %+v %v", r, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Name != "web-2" {
		t.Fatalf("applied %+v", got)
	}
}
