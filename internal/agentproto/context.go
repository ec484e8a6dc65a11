package agentproto

import (
	"context"
	"io"
	"time"
)

// bindContext closes conn when ctx ends; the returned function detaches it.
// A yamux stream's Close is only a half-close, so reads are cut short with a deadline too.
func BindContext(ctx context.Context, conn io.Closer) func() bool {
	return context.AfterFunc(ctx, func() {
		if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
			_ = d.SetDeadline(time.Now())
		}
		_ = conn.Close()
	})
}
