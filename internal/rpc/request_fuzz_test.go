package rpc_test

import (
	"encoding/json"
	"testing"

	"banger/internal/opid"
	"banger/internal/rpc"
)

// FuzzDecodeRequest checks the properties every client relies on, whatever bytes arrive:
// no panic, a valid op id always, exactly one of request and error, a known error code,
// and nothing accepted that a strict JSON parser would reject.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"version":1,"method":"daemon.ping"}`,
		`{"version":1,"method":"vm.show","params":{"vm":"web"},"op_id":"op-abcdefgh12"}`,
		`{"version":1,"method":"vm.list","params":null}` + "\n",
		`{"version":2,"method":"daemon.ping","op_id":"op-abcdefgh"}`,
		`{"version":1,"method":""}`,
		`{"version":1,"method":"x","op_id":"op-X!"}`,
		`{"version":1,"method":"x","op_id":5}`,
		`{"version":1,"method":"x"}}`,
		`{"version":1,"method":"x"} junk`,
		`{"version":1,"method":"x"}{"version":1}`,
		`{"version":1,"method":"x"}` + "\v",
		`{"version":1,"method":`,
		`[]`, `null`, `""`, `1`, ``, "\xff\xfe", `{"VERSION":1,"Method":"x"}`,
	} {
		f.Add([]byte(seed))
	}
	codes := map[string]bool{rpc.CodeBadRequest: true, rpc.CodeBadVersion: true}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, id, werr := rpc.DecodeRequest(line)
		if !opid.Valid(id) {
			t.Fatalf("op id %q is not valid", id)
		}
		if (req == nil) == (werr == nil) {
			t.Fatalf("want exactly one of request and error, got %+v and %+v", req, werr)
		}
		// op_id may be any JSON value (a non-string one is replaced by a fresh id), so the
		// reference parse takes it as raw JSON.
		var strict struct {
			rpc.Request
			OpID string          `json:"-"`
			Raw  json.RawMessage `json:"op_id"`
		}
		strictErr := json.Unmarshal(line, &strict)
		json.Unmarshal(strict.Raw, &strict.OpID)
		if werr != nil {
			if !codes[werr.Code] {
				t.Fatalf("unknown error code %q", werr.Code)
			}
			if werr.OpID != id || werr.Message == "" {
				t.Fatalf("error %+v: op id must equal %q and message must be set", werr, id)
			}
			if strictErr == nil && opid.Valid(strict.OpID) && id != strict.OpID {
				t.Fatalf("well-formed op id %q was not adopted (got %q)", strict.OpID, id)
			}
			return
		}
		if strictErr != nil {
			t.Fatalf("accepted a line json.Unmarshal rejects (%v): %q", strictErr, line)
		}
		if req.Version != rpc.Version || req.Method == "" {
			t.Fatalf("accepted request with version %d method %q", req.Version, req.Method)
		}
		if opid.Valid(req.OpID) && id != req.OpID {
			t.Fatalf("well-formed op id %q was not adopted (got %q)", req.OpID, id)
		}
		if !opid.Valid(req.OpID) && id == req.OpID {
			t.Fatalf("malformed op id %q was adopted", req.OpID)
		}
	})
}
