package agentclient

import (
	"banger/internal/agentproto"
	"bufio"
	"context"
	"fmt"
	"io"
)

// SetIdentity tells a restored guest's agent who it is now; it returns once applied.
func SetIdentity(ctx context.Context, conn io.ReadWriteCloser, opID string, id agentproto.Identity) error {
	defer conn.Close()
	if _, err := id.Validate(); err != nil {
		return err
	}
	defer agentproto.BindContext(ctx, conn)()
	r, err := roundTrip(ctx, conn, bufio.NewReader(conn), agentproto.Request{Type: agentproto.TypeIdentity, OpID: opID, Identity: &id})
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}
