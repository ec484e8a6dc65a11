package agentclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"banger/internal/agentproto"
	"banger/internal/errdefs"
)

// Watch asks the agent to record changes under guestPath for a later ListWatched, and
// returns the guest's clock at the start. An agent from before watches answers with an
// error that IsUnknownRequest matches.
func Watch(ctx context.Context, conn io.ReadWriteCloser, opID, guestPathArg string) (int64, error) {
	defer conn.Close()
	defer agentproto.BindContext(ctx, conn)()
	r, err := roundTrip(ctx, conn, bufio.NewReader(conn), agentproto.Request{Type: agentproto.TypeWatch, OpID: opID, Path: guestPathArg})
	if err == nil {
		err = r.Err()
	}
	if err != nil {
		return 0, fmt.Errorf("watching guest %s: %w", guestPathArg, err)
	}
	if !r.Watching || r.Now <= 0 {
		return 0, fmt.Errorf("watching guest %s: the agent did not start a watch", guestPathArg)
	}
	return r.Now, nil
}

// ListWatched is List with since, answered from the changes a Watch of guestPath recorded
// when the agent has them (the same listing a walk would make, in time proportional to the
// changes), else by a walk. The reply is checked exactly as List's.
func ListWatched(ctx context.Context, conn io.ReadWriteCloser, opID, guestPathArg string, since int64) ([]agentproto.ListEntry, error) {
	defer conn.Close()
	defer agentproto.BindContext(ctx, conn)()
	what := "listing guest " + guestPathArg
	br := bufio.NewReader(conn)
	r, err := roundTrip(ctx, conn, br, agentproto.Request{Type: agentproto.TypeList, OpID: opID, Path: guestPathArg, Since: since, Watched: true})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return readListing(ctx, br, what)
}

// IsUnknownRequest reports whether err is an agent's refusal of a request type (or of a
// header field) it does not know: the agent predates it.
func IsUnknownRequest(err error) bool {
	re, ok := errors.AsType[*agentproto.RemoteError](err)
	if !ok || !errors.Is(err, errdefs.ErrInvalidArgument) {
		return false
	}
	m := re.Message
	return strings.Contains(m, "type: must be one of") || strings.Contains(m, "unknown field")
}
