package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/opid"
	"banger/internal/rpc"
)

func wantBadRequest(t *testing.T, what string, err error, field string) {
	t.Helper()
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) || er.Code != rpc.CodeBadRequest || !strings.Contains(er.Message, field) {
		t.Errorf("%s: got %v, want bad_request naming %q", what, err, field)
	}
}

// TestEveryMethodDecodesParamsStrictly: case-variant, duplicate and unknown keys and wrong
// types are refused by every method, streaming ones included, and change nothing.
func TestEveryMethodDecodesParamsStrictly(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	ctx := context.Background()
	call := func(method, params string) error {
		return rpc.Call(ctx, td.cfg.Socket, method, json.RawMessage(params), nil)
	}
	wantBadRequest(t, "case variant", call(api.MethodVMCreate, `{"name":"a","Name":"b","image":"img","no_start":true}`), "params.Name")
	wantBadRequest(t, "duplicate", call(api.MethodVMCreate, `{"name":"a","name":"b","image":"img","no_start":true}`), "params.name")
	wantBadRequest(t, "wrong type", call(api.MethodVMCreate, `{"name":"a","image":"img","vcpu":"2"}`), "params.vcpu")
	wantBadRequest(t, "not an object", call(api.MethodVMShow, `"web"`), "params")
	wantBadRequest(t, "vm.agent unknown field", call(api.MethodVMAgent, `{"vm":"a","cmd":"ls"}`), "params.cmd")
	wantBadRequest(t, "vm.logs unknown field", call(api.MethodVMLogs, `{"vm":"a","follw":true}`), "params.follw")
	wantBadRequest(t, "vm.logs case variant", call(api.MethodVMLogs, `{"VM":"a"}`), "params.VM")
	for _, m := range []string{api.MethodPing, api.MethodVMList, api.MethodImageList, api.MethodImageCatalog, api.MethodDoctor} {
		wantBadRequest(t, m+" with params", call(m, `"x"`), `"x"`)
		wantBadRequest(t, m+" with an object", call(m, `{"all":true}`), "all")
		if err := call(m, `{}`); err != nil {
			t.Errorf("%s with {}: %v", m, err)
		}
	}
	var list api.VMListResult
	if err := rpc.Call(ctx, td.cfg.Socket, api.MethodVMList, nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.VMs) != 0 {
		t.Fatalf("refused creates left VMs behind: %+v", list.VMs)
	}
	if _, err := td.create(api.VMCreateParams{Name: "a"}); err != nil {
		t.Fatalf("a well-formed create after the refusals: %v", err)
	}
}

// TestOpWithoutStagesHasEmptyStages: stages is [] on the wire, never null.
func TestOpWithoutStagesHasEmptyStages(t *testing.T) {
	b, err := json.Marshal(newOperation("op-nostages1", "vm.create").status(context.Background(), 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"stages":[]`) {
		t.Fatalf("status %s: want \"stages\":[]", b)
	}
}

// TestReusingAFinishedOpIDIsRefused: a begin under the id of an operation that already ran
// is refused, and the first operation's result stays readable.
func TestReusingAFinishedOpIDIsRefused(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	const id = "op-reusedopid123"
	ctx := opid.With(context.Background(), id)
	begin := func(name string) error {
		return rpc.Call(ctx, td.cfg.Socket, api.MethodVMCreateBegin, api.VMCreateParams{Image: "img", NoStart: true, Name: name}, nil)
	}
	status := func() api.OpStatusResult {
		var st api.OpStatusResult
		for !st.Done {
			if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodOpStatus, api.OpStatusParams{OpID: id, WaitSeconds: 2}, &st); err != nil {
				t.Fatal(err)
			}
		}
		return st
	}
	if err := begin("first"); err != nil {
		t.Fatal(err)
	}
	if st := status(); st.VM == nil || st.VM.Name != "first" {
		t.Fatalf("first operation: %+v", st)
	}
	err := begin("second")
	var er *rpc.ErrorResponse
	if !errors.As(err, &er) || er.Code != rpc.CodeAlreadyExists || !strings.Contains(er.Message, id) {
		t.Fatalf("second begin under %s: %v, want already_exists naming the id", id, err)
	}
	if st := status(); st.VM == nil || st.VM.Name != "first" {
		t.Fatalf("the first operation's result was replaced: %+v", st)
	}
	var show api.VMResult
	if err := rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMShow, api.VMRef{VM: "second"}, &show); err == nil {
		t.Fatalf("the refused begin created a VM: %+v", show.VM)
	}
}
