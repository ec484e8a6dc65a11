package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"banger/internal/errdefs"
	"banger/internal/hostnet"
	"banger/internal/model"
	"banger/internal/opid"
	"banger/internal/rpc"
)

// Config configures the helper.
type Config struct {
	// Socket is the unix socket path to listen on.
	Socket string
	// SocketGroup owns the socket (mode 0660) so its members can connect; -1 leaves the
	// group alone (root only).
	SocketGroup int
	// AllowUIDs and AllowGIDs are the callers admitted besides root. A GID matches the
	// caller's primary or any supplementary group.
	AllowUIDs []int
	AllowGIDs []int
	// Net is the network the helper manages; the bridge name never comes from a caller.
	Net hostnet.Net
	// TapOwnerUID and TapOwnerGID own every tap, so the daemon's VMMs can open them. The
	// kernel requires a non-root opener to match both.
	TapOwnerUID, TapOwnerGID int
	Logger                   *slog.Logger
	// Limits bound the helper's clients (connections, request line and idle deadlines);
	// zero fields take rpc.DefaultLimits, except MaxConns, which defaults to
	// DefaultMaxConns: the daemon needs a handful at once.
	Limits rpc.Limits
}

// DefaultMaxConns caps the helper's concurrent connections unless Config.Limits says
// otherwise; the daemon opens one per call and makes few calls at once.
const DefaultMaxConns = 32

// Server is the root helper's RPC server.
type Server struct {
	cfg Config
	log *slog.Logger
	rpc *rpc.Server
}

// NewServer checks cfg and registers the helper's methods.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Socket == "" {
		return nil, errdefs.InvalidArgument("socket", cfg.Socket, "must be a path")
	}
	if err := cfg.Net.Validate(); err != nil {
		return nil, fmt.Errorf("helper network config: %w", err)
	}
	if cfg.TapOwnerUID < 0 {
		return nil, errdefs.InvalidArgument("tap_owner_uid", cfg.TapOwnerUID, "must be the daemon user's uid")
	}
	if cfg.TapOwnerGID < 0 {
		return nil, errdefs.InvalidArgument("tap_owner_gid", cfg.TapOwnerGID, "must be a group the daemon's VMMs run with")
	}
	if cfg.SocketGroup < -1 {
		return nil, errdefs.InvalidArgument("socket_group", cfg.SocketGroup, "must be a group id or -1")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	rs := rpc.NewServer(log)
	// The helper writes exactly one record per call itself (see wrap).
	rs.QuietOperations = true
	s := &Server{cfg: cfg, log: log, rpc: rs}
	rs.Authorize = s.authorize
	rs.Limits = cfg.Limits
	if rs.Limits.MaxConns <= 0 {
		rs.Limits.MaxConns = DefaultMaxConns
	}

	s.wrap(MethodPing, func(_ context.Context, raw json.RawMessage) (any, error) {
		if err := rpc.NoParams(raw); err != nil {
			return nil, err
		}
		return PingResult{PID: os.Getpid(), Bridge: cfg.Net.Bridge, Prefix: cfg.Net.Prefix.String()}, nil
	})
	s.wrap(MethodEnsureBridge, func(ctx context.Context, raw json.RawMessage) (any, error) {
		if err := noParams(raw); err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.EnsureBridge(ctx)
	})
	s.wrap(MethodCreateTap, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := s.tapParams(raw, true)
		if err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.CreateTap(ctx, p.Tap, cfg.TapOwnerUID, cfg.TapOwnerGID, p.MAC)
	})
	s.wrap(MethodDeleteTap, func(ctx context.Context, raw json.RawMessage) (any, error) {
		p, err := s.tapParams(raw, false)
		if err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.DeleteTap(ctx, p.Tap, cfg.TapOwnerUID, cfg.TapOwnerGID)
	})
	s.wrap(MethodEnableNAT, func(ctx context.Context, raw json.RawMessage) (any, error) {
		ip, err := s.natParams(raw)
		if err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.EnableNAT(ctx, ip)
	})
	s.wrap(MethodDisableNAT, func(ctx context.Context, raw json.RawMessage) (any, error) {
		ip, err := s.natParams(raw)
		if err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.DisableNAT(ctx, ip)
	})
	s.wrap(MethodCleanup, func(ctx context.Context, raw json.RawMessage) (any, error) {
		if err := noParams(raw); err != nil {
			return nil, err
		}
		return struct{}{}, cfg.Net.Cleanup(ctx, cfg.TapOwnerUID, cfg.TapOwnerGID)
	})
	s.wrap(MethodState, func(ctx context.Context, raw json.RawMessage) (any, error) {
		if err := noParams(raw); err != nil {
			return nil, err
		}
		taps, ips, err := cfg.Net.State(ctx, cfg.TapOwnerUID, cfg.TapOwnerGID)
		if err != nil {
			return nil, err
		}
		if taps == nil {
			taps = []string{}
		}
		if ips == nil {
			ips = []netip.Addr{}
		}
		return StateResult{Bridge: cfg.Net.Bridge, Taps: taps, NATIPs: ips}, nil
	})
	return s, nil
}

// Serve listens on the socket and serves until ctx ends. The socket is root:SocketGroup
// mode 0660 from the moment it is reachable (rpc.ListenUnix). A stale socket from an
// earlier run is replaced; any other file at that path is an error.
func (s *Server) Serve(ctx context.Context) error {
	path := s.cfg.Socket
	l, err := rpc.ListenUnix(path, 0o660, s.cfg.SocketGroup)
	if err != nil {
		return fmt.Errorf("serving the helper socket: %w", err)
	}
	defer l.Close()
	s.log.Info("helper listening", "socket", path, "bridge", s.cfg.Net.Bridge, "prefix", s.cfg.Net.Prefix.String(),
		"socket_group", s.cfg.SocketGroup, "allow_uids", s.cfg.AllowUIDs, "allow_gids", s.cfg.AllowGIDs)
	return s.rpc.Serve(ctx, l)
}

// authorize admits root, the allowed uids and members of the allowed groups. The socket's
// file mode is only a first filter: a caller must pass this check too.
func (s *Server) authorize(cred *unix.Ucred) error {
	if cred.Uid == 0 || slices.Contains(s.cfg.AllowUIDs, int(cred.Uid)) {
		return nil
	}
	if len(s.cfg.AllowGIDs) > 0 {
		if slices.Contains(s.cfg.AllowGIDs, int(cred.Gid)) {
			return nil
		}
		// SO_PEERCRED carries the primary group only; the supplementary groups are read
		// from the connecting process while its connection is still open.
		groups, err := processGroups(int(cred.Pid))
		if err == nil && slices.ContainsFunc(groups, func(g int) bool { return slices.Contains(s.cfg.AllowGIDs, g) }) {
			return nil
		}
	}
	return fmt.Errorf("uid %d (gid %d, pid %d) is not allowed to use the banger root helper", cred.Uid, cred.Gid, cred.Pid)
}

// processGroups reads the supplementary groups of pid from /proc.
func processGroups(pid int) ([]int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var out []int
		for _, f := range strings.Fields(rest) {
			g, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("parsing groups of pid %d: %w", pid, err)
			}
			out = append(out, g)
		}
		return out, nil
	}
	return nil, fmt.Errorf("no Groups line for pid %d", pid)
}

// wrap registers h under method and writes the call's one log record, which carries the
// op id the daemon sent so the daemon's and the helper's logs join on it.
func (s *Server) wrap(method string, h rpc.HandlerFunc) {
	s.rpc.Handle(method, func(ctx context.Context, raw json.RawMessage) (result any, err error) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("helper rpc panic", "op_id", opid.From(ctx), "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				result, err = nil, fmt.Errorf("%s: internal error: %v", method, p)
			}
			attrs := []any{"op_id", opid.From(ctx), "method", method, "duration_ms", time.Since(start).Milliseconds()}
			if len(raw) > 0 && string(raw) != "null" {
				attrs = append(attrs, "params", truncate(string(raw), 256))
			}
			if err != nil {
				code := rpc.CodeOf(err)
				s.log.Log(ctx, rpc.LogLevel(code), "helper rpc failed", append(attrs, "code", code, "error", err.Error())...)
			} else {
				s.log.Info("helper rpc completed", attrs...)
			}
		}()
		return h(ctx, raw)
	})
}

// decodeParams decodes a required params object strictly (rpc.DecodeParams): unknown
// fields are refused, so a caller cannot believe it chose something (a bridge, an owner)
// that the helper ignores.
func decodeParams(raw json.RawMessage, v any, shape string) error {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return errdefs.InvalidArgument("params", "", "must be an object "+shape)
	}
	return rpc.DecodeParams(raw, v)
}

// noParams refuses parameters for methods that take none.
func noParams(raw json.RawMessage) error { return rpc.NoParams(raw) }

func (s *Server) tapParams(raw json.RawMessage, allowMAC bool) (TapParams, error) {
	var p TapParams
	if err := decodeParams(raw, &p, `{"tap": "`+model.TapPrefix+`…"}`); err != nil {
		return p, err
	}
	if err := ValidateTap(p.Tap); err != nil {
		return p, err
	}
	if p.MAC != "" {
		if !allowMAC {
			return p, errdefs.InvalidArgument("mac", p.MAC, "is only accepted by "+MethodCreateTap)
		}
		hw, err := hostnet.ValidMAC("mac", p.MAC)
		if err != nil {
			return p, err
		}
		p.MAC = hw.String()
	}
	return p, nil
}

func (s *Server) natParams(raw json.RawMessage) (netip.Addr, error) {
	var p NATParams
	if err := decodeParams(raw, &p, `{"ip": "A.B.C.D"}`); err != nil {
		return netip.Addr{}, err
	}
	return ValidateGuestIP(s.cfg.Net, p.IP)
}

// ValidateTap checks a tap name: model.TapPrefix and 1-12 lowercase hex digits.
func ValidateTap(name string) error {
	if !hostnet.ValidTapName(name) {
		return errdefs.InvalidArgument("tap", name, "must be "+model.TapPrefix+" followed by 1-12 lowercase hex digits")
	}
	return nil
}

// ValidateGuestIP parses s and checks that it is a guest address on n.
func ValidateGuestIP(n hostnet.Net, s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, errdefs.InvalidArgument("ip", s, "must be an IPv4 address")
	}
	if err := n.ValidGuestIP("ip", ip); err != nil {
		return netip.Addr{}, err
	}
	return ip, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
