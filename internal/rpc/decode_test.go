package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"banger/internal/errdefs"
	"banger/internal/rpc"
)

type innerParams struct {
	Path string `json:"path"`
	Mode int    `json:"mode,omitempty"`
}

type Embedded struct {
	Promoted string `json:"promoted,omitempty"`
}

type strictParams struct {
	Embedded
	Name    string            `json:"name"`
	Count   int               `json:"count,omitempty"`
	Inner   innerParams       `json:"inner,omitempty"`
	List    []innerParams     `json:"list,omitempty"`
	Ptr     *innerParams      `json:"ptr,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Raw     json.RawMessage   `json:"raw,omitempty"`
	Free    any               `json:"free,omitempty"`
	When    time.Time         `json:"when,omitempty"`
	Skipped string            `json:"-"`
	NoTag   string
}

func TestDecodeStrictRefuses(t *testing.T) {
	tests := []struct {
		name, in, field string
	}{
		{"case variant key", `{"name":"a","Name":"b"}`, "Name"},
		{"case variant only", `{"NAME":"b"}`, "NAME"},
		{"duplicate key", `{"name":"a","name":"b"}`, `"name"`},
		{"unknown field", `{"name":"a","bridge":"eth0"}`, "bridge"},
		{"skipped field", `{"Skipped":"x"}`, "Skipped"},
		{"nested case variant", `{"inner":{"Path":"/x"}}`, "inner.Path"},
		{"nested duplicate", `{"inner":{"path":"/x","path":"/y"}}`, "inner.path"},
		{"nested unknown", `{"inner":{"path":"/x","owner":0}}`, "inner.owner"},
		{"pointer nested", `{"ptr":{"PATH":"/x"}}`, "ptr.PATH"},
		{"in a slice", `{"list":[{"path":"/a"},{"Path":"/b"}]}`, "list[1].Path"},
		{"map duplicate", `{"labels":{"a":"1","a":"2"}}`, "labels.a"},
		{"raw duplicate", `{"raw":{"x":1,"x":2}}`, "raw.x"},
		{"free-form duplicate", `{"free":[{"k":1,"k":2}]}`, "k"},
		{"promoted case variant", `{"Promoted":"x"}`, "Promoted"},
		{"trailing data", `{"name":"a"} {"name":"b"}`, "trailing"},
		{"trailing brace", `{"name":"a"}}`, "trailing"},
		{"a string", `"x"`, "must be a JSON object"},
		{"null", `null`, "must be a JSON object"},
		{"an array", `[{"name":"a"}]`, "must be a JSON object"},
		{"wrong type", `{"name":1}`, "name"},
		{"wrong nested type", `{"inner":{"mode":"rw"}}`, "inner.mode"},
		{"malformed", `{"name":`, "malformed"},
		{"deep nesting", `{"free":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`, "nested deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p strictParams
			err := rpc.DecodeStrict([]byte(tt.in), &p)
			var er *rpc.ErrorResponse
			if !errors.As(err, &er) || er.Code != rpc.CodeBadRequest {
				t.Fatalf("DecodeStrict(%s) = %v, want a bad_request error", tt.in, err)
			}
			if !strings.Contains(er.Message, tt.field) {
				t.Errorf("message %q does not name %q", er.Message, tt.field)
			}
			if p.Name != "" {
				t.Errorf("a refused decode still set name to %q", p.Name)
			}
		})
	}
}

func TestDecodeStrictAccepts(t *testing.T) {
	in := `{"name":"a","count":2,"inner":{"path":"/x","mode":4},"list":[{"path":"/l"}],"ptr":{"path":"/p"},` +
		`"labels":{"A":"1","a":"2"},"raw":{"Any":1,"any":2},"free":{"K":[1,{"k":2}]},"when":"2025-01-31T10:04:05Z",` +
		`"promoted":"up","NoTag":"t"}` + " \r\n"
	var p strictParams
	if err := rpc.DecodeStrict([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	if p.Name != "a" || p.Count != 2 || p.Inner.Mode != 4 || p.List[0].Path != "/l" || p.Ptr.Path != "/p" ||
		p.Labels["A"] != "1" || p.Labels["a"] != "2" || p.Promoted != "up" || p.NoTag != "t" || p.When.Year() != 2025 {
		t.Fatalf("decoded %+v", p)
	}
}

func TestDecodeParamsAndNoParams(t *testing.T) {
	var p strictParams
	for _, raw := range []string{``, `null`, ` null `} {
		if err := rpc.DecodeParams(json.RawMessage(raw), &p); err != nil {
			t.Errorf("DecodeParams(%q) = %v, want defaults", raw, err)
		}
	}
	for _, raw := range []string{``, `null`, `{}`, ` { } `} {
		if err := rpc.NoParams(json.RawMessage(raw)); err != nil {
			t.Errorf("NoParams(%q) = %v, want nil", raw, err)
		}
	}
	for _, raw := range []string{`"x"`, `1`, `[]`, `{"vm":"web"}`, `{}{}`} {
		err := rpc.NoParams(json.RawMessage(raw))
		var er *rpc.ErrorResponse
		if !errors.As(err, &er) || er.Code != rpc.CodeBadRequest || !strings.Contains(er.Message, raw) {
			t.Errorf("NoParams(%q) = %v, want bad_request naming the params", raw, err)
		}
	}
}

// TestRequestEnvelope covers the protocol as documented: a bare null is a bad request, a
// non-string op id is replaced by a fresh one, envelope keys are exact-case and unique,
// and a method without params refuses any.
func TestRequestEnvelope(t *testing.T) {
	ts := startServer(t, func(s *rpc.Server) {
		s.Handle("test.none", func(ctx context.Context, p json.RawMessage) (any, error) {
			if err := rpc.NoParams(p); err != nil {
				return nil, err
			}
			return "ok", nil
		})
		s.Handle("test.named", func(ctx context.Context, p json.RawMessage) (any, error) {
			var np struct {
				Name string `json:"name"`
			}
			if err := rpc.DecodeParams(p, &np); err != nil {
				return nil, err
			}
			return np.Name, nil
		})
	})
	for _, tt := range []struct{ name, line, code, in string }{
		{"null line", `null`, rpc.CodeBadRequest, "object"},
		{"case variant method", `{"version":1,"Method":"test.none"}`, rpc.CodeBadRequest, "Method"},
		{"duplicate method", `{"version":1,"method":"test.none","method":"test.named"}`, rpc.CodeBadRequest, "method"},
		{"unknown envelope field", `{"version":1,"method":"test.none","parms":{}}`, rpc.CodeBadRequest, "parms"},
		{"params on a method without", `{"version":1,"method":"test.none","params":"x"}`, rpc.CodeBadRequest, `"x"`},
		{"object params on a method without", `{"version":1,"method":"test.none","params":{"vm":"a"}}`, rpc.CodeBadRequest, "vm"},
		{"string params", `{"version":1,"method":"test.named","params":"x"}`, rpc.CodeBadRequest, "params"},
		{"wrong type in params", `{"version":1,"method":"test.named","params":{"name":7}}`, rpc.CodeBadRequest, "params.name"},
		{"case variant param", `{"version":1,"method":"test.named","params":{"name":"a","Name":"b"}}`, rpc.CodeBadRequest, "params.Name"},
		{"duplicate param", `{"version":1,"method":"test.named","params":{"name":"a","name":"b"}}`, rpc.CodeBadRequest, "params.name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRaw(t, ts.socket)
			rc.send(tt.line + "\n")
			resp := rc.response()
			if resp.Error == nil || resp.Error.Code != tt.code || !strings.Contains(resp.Error.Message, tt.in) {
				t.Fatalf("%s: got %+v %s, want %s naming %q", tt.line, resp.Error, resp.Result, tt.code, tt.in)
			}
		})
	}
	for _, tt := range []struct{ line, want string }{
		{`{"version":1,"method":"test.none","op_id":5}`, `"ok"`},
		{`{"version":1,"method":"test.none","op_id":{"a":1}}`, `"ok"`},
		{`{"version":1,"method":"test.none","params":{}}`, `"ok"`},
		{`{"version":1,"method":"test.named","params":{"name":"a"}}`, `"a"`},
	} {
		rc := dialRaw(t, ts.socket)
		rc.send(tt.line + "\n")
		resp := rc.response()
		if resp.Error != nil || string(resp.Result) != tt.want {
			t.Errorf("%s: got %+v %s, want result %s", tt.line, resp.Error, resp.Result, tt.want)
		}
	}
}

// TestContextErrorsHaveTheirOwnCodes: a cancelled or timed-out call is neither internal
// nor mistaken for another kind, and the code maps back on the client.
func TestContextErrorsHaveTheirOwnCodes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code string
	}{
		{context.Canceled, rpc.CodeCanceled},
		{fmt.Errorf("pulling: %w", context.Canceled), rpc.CodeCanceled},
		{fmt.Errorf("booting: %w", context.DeadlineExceeded), rpc.CodeDeadlineExceeded},
		// A classified error keeps its kind though it wraps a context error.
		{errdefs.New(errdefs.ErrUnavailable, "agent not ready: %w", context.DeadlineExceeded), rpc.CodeUnavailable},
		{errors.New("plain"), rpc.CodeInternal},
	} {
		w := rpc.ToWire(tt.err, "op-abcdefgh")
		if w.Code != tt.code {
			t.Errorf("ToWire(%v).Code = %q, want %q", tt.err, w.Code, tt.code)
		}
		if k := rpc.KindOf(tt.code); k != nil && !errors.Is(w, k) {
			t.Errorf("wire error %q does not match its kind %v on the client", w.Code, k)
		}
	}
}
