package guest

import (
	"banger/internal/agentproto"
	"banger/internal/errdefs"
	"io"
	"log/slog"
)

func (a *Agent) handleIdentity(conn io.Writer, req agentproto.Request, log *slog.Logger) error {
	if a.setIdentity == nil {
		return reply(conn, agentproto.Reply{}, errdefs.New(errdefs.ErrUnavailable, "this agent does not run in a banger guest and does not change its identity"))
	}
	if req.Identity == nil {
		return reply(conn, agentproto.Reply{}, errdefs.InvalidArgument("identity", nil, "is required"))
	}
	if _, err := req.Identity.Validate(); err != nil {
		return reply(conn, agentproto.Reply{}, err)
	}
	return reply(conn, agentproto.Reply{}, a.setIdentity(*req.Identity, log))
}
