package oplog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"banger/internal/opid"
	"banger/internal/oplog"
)

func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// TestOpIDComesFromTheContext: a logger attached once logs whichever op id the context
// carries at the call, so a background pass minting a fresh id never logs the parent's.
func TestOpIDComesFromTheContext(t *testing.T) {
	var buf bytes.Buffer
	ctx := oplog.With(context.Background(), slog.New(slog.NewJSONHandler(&buf, nil)))
	oplog.G(opid.With(ctx, "op-aaaaaaaaaaaa")).Info("first")
	oplog.G(opid.With(ctx, "op-bbbbbbbbbbbb")).Info("second")
	oplog.G(ctx).Info("none")
	recs := records(t, &buf)
	if len(recs) != 3 {
		t.Fatalf("got %d records: %s", len(recs), buf.String())
	}
	for i, want := range []any{"op-aaaaaaaaaaaa", "op-bbbbbbbbbbbb", nil} {
		if recs[i]["op_id"] != want {
			t.Errorf("record %d op_id = %v, want %v", i, recs[i]["op_id"], want)
		}
	}
}

func TestStageLogsNameAttrsAndElapsed(t *testing.T) {
	var buf bytes.Buffer
	ctx := oplog.With(opid.With(context.Background(), "op-cccccccccccc"), slog.New(slog.NewJSONHandler(&buf, nil)))
	oplog.Stage(ctx, "no_start")
	oplog.Stage(oplog.Began(ctx, time.Now().Add(-time.Second)), "disks_ready", "vm", "a")
	recs := records(t, &buf)
	if _, ok := recs[0]["elapsed_ms"]; ok {
		t.Errorf("stage without a start time has elapsed_ms: %v", recs[0])
	}
	r := recs[1]
	if r["msg"] != "operation stage" || r["stage"] != "disks_ready" || r["vm"] != "a" || r["op_id"] != "op-cccccccccccc" {
		t.Errorf("stage record %v", r)
	}
	if ms, _ := r["elapsed_ms"].(float64); ms < 1000 {
		t.Errorf("elapsed_ms = %v, want ≥ 1000", r["elapsed_ms"])
	}
}

// TestWithAttrsNamesTheOpIDOnce: narrowing a context's logger keeps one op_id per record
// (a logger that baked the id in logged it twice, and a later op id not at all).
func TestWithAttrsNamesTheOpIDOnce(t *testing.T) {
	var buf bytes.Buffer
	ctx := oplog.With(opid.With(context.Background(), "op-aaaaaaaaaaaa"), slog.New(slog.NewJSONHandler(&buf, nil)))
	ctx = oplog.WithAttrs(ctx, "pool", "p1")
	oplog.G(ctx).Info("filled")
	oplog.G(opid.With(ctx, "op-bbbbbbbbbbbb")).Info("next pass")
	line := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if n := strings.Count(line[0], `"op_id"`); n != 1 {
		t.Fatalf("op_id %d times in %s", n, line[0])
	}
	recs := records(t, &buf)
	if recs[0]["pool"] != "p1" || recs[1]["op_id"] != "op-bbbbbbbbbbbb" || recs[1]["pool"] != "p1" {
		t.Fatalf("records: %v", recs)
	}
}
