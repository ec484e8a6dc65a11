package daemon

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"banger/internal/api"
	"banger/internal/rpc"
)

func TestMetricsCountVMsAndCalls(t *testing.T) {
	td := startDaemon(t, t.TempDir(), "172.30.0.1/24")
	td.addImage(t, "img")
	for _, name := range []string{"m1", "m2"} {
		if _, err := td.create(api.VMCreateParams{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	rpc.Call(context.Background(), td.cfg.Socket, api.MethodVMShow, api.VMRef{VM: "nope"}, nil)

	rec := httptest.NewRecorder()
	td.d.metrics.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`banger_vms{state="stopped"} 2`,
		`banger_vms{state="running"} 0`,
		`banger_rpc_requests_total{code="",method="vm.create"} 2`,
		`banger_rpc_requests_total{code="not_found",method="vm.show"} 1`,
		`banger_rpc_request_duration_seconds_count{method="vm.create"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}
