package rpc_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"banger/internal/rpc"
)

// FuzzDecodeStrict checks DecodeStrict against encoding/json, whatever bytes arrive: no
// panic; every refusal is a bad_request with a message; whatever it accepts, encoding/json
// accepts too and decodes to the same value, with only exact-case known keys at the top;
// and what it decoded round-trips through it.
func FuzzDecodeStrict(f *testing.F) {
	for _, seed := range []string{
		`{"name":"a"}`,
		`{"name":"a","Name":"b"}`,
		`{"Name":"b","name":"a"}`,
		`{"NAME":"a"}`,
		`{"name":"a","name":"b"}`,
		`{"inner":{"path":"/x","Path":"/y"}}`,
		`{"inner":{"path":"/x","path":"/y"}}`,
		`{"list":[{"path":"/a"},{"PATH":"/b"}]}`,
		`{"labels":{"a":"1","a":"2"},"raw":{"x":1,"X":2}}`,
		`{"free":{"k":[1,{"k":2,"k":3}]}}`,
		`{"promoted":"p","Promoted":"q"}`,
		`{"name":"a"}}`, `{"name":"a"} x`, `null`, `"x"`, `[]`, `{"name":`, `{"count":1e400}`,
		`{"when":"2025-01-31T10:04:05Z","ptr":null,"count":-3}`,
		"{\"name\":\"\\u004eame\"}", "{\"\\u004eame\":\"b\"}",
	} {
		f.Add([]byte(seed))
	}
	known := map[string]bool{}
	for _, k := range []string{"promoted", "name", "count", "inner", "list", "ptr", "labels", "raw", "free", "when", "NoTag"} {
		known[k] = true
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got strictParams
		err := rpc.DecodeStrict(data, &got)
		if err != nil {
			var er *rpc.ErrorResponse
			if !errors.As(err, &er) || er.Code != rpc.CodeBadRequest || er.Message == "" {
				t.Fatalf("refusal %v is not a bad_request with a message", err)
			}
			return
		}
		var want strictParams
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded %+v, encoding/json %+v", got, want)
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(data, &top); err != nil {
			t.Fatalf("accepted %q, which is not an object: %v", data, err)
		}
		for k := range top {
			if !known[k] {
				t.Fatalf("accepted unknown or case-variant key %q in %q", k, data)
			}
		}
		again, err := json.Marshal(got)
		if err != nil {
			return // e.g. a RawMessage holding a value Marshal re-validates differently
		}
		var back strictParams
		if err := rpc.DecodeStrict(again, &back); err != nil {
			t.Fatalf("refused its own output %s: %v", again, err)
		}
	})
}
