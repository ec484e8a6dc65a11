package agentclient

import (
	"banger/internal/agentproto"
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
)

// List asks the agent for a listing of guestPath (since: see Request.Since) and returns
// it with the guest's clock at the start. The guest is not trusted: lines are capped, the
// count is capped at MaxListEntries, every path must be a clean relative path (no "..",
// no absolute name), and paths must be unique.
func List(ctx context.Context, conn io.ReadWriteCloser, opID, guestPathArg string, since int64) ([]agentproto.ListEntry, int64, error) {
	defer conn.Close()
	defer agentproto.BindContext(ctx, conn)()
	what := "listing guest " + guestPathArg
	br := bufio.NewReader(conn)
	r, err := roundTrip(ctx, conn, br, agentproto.Request{Type: agentproto.TypeList, OpID: opID, Path: guestPathArg, Since: since})
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	if err := r.Err(); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	out, err := readListing(ctx, br, what)
	return out, r.Now, err
}

func readListing(ctx context.Context, br *bufio.Reader, what string) ([]agentproto.ListEntry, error) {
	sc := bufio.NewScanner(&agentproto.DataReader{R: br})
	sc.Buffer(make([]byte, 0, 4096), maxListLine)
	var out []agentproto.ListEntry
	seen := map[string]bool{}
	for sc.Scan() {
		if len(out) >= MaxListEntries {
			return nil, fmt.Errorf("%s: more than %d entries", what, MaxListEntries)
		}
		var e agentproto.ListEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s: bad entry: %w", what, err)
		}
		if !agentproto.ValidListPath(e.Path) || seen[e.Path] {
			return nil, fmt.Errorf("%s: refusing entry %q", what, agentproto.PeerText(e.Path, agentproto.MaxPeerMessage))
		}
		seen[e.Path] = true
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, failure(ctx, what, err)
	}
	return out, nil
}

// Limits of a listing the host accepts: a guest could otherwise send an endless one.
const (
	MaxListEntries = 1 << 20
	maxListLine    = 8 << 10
)
