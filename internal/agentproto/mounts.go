package agentproto

import (
	"strings"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// ParamMounts lists the VM's shared folders: TAG:PATH:ro|rw, comma separated. Each is a
// virtiofs device with that tag, mounted at PATH (read-only for ro; the host enforces it
// as well).
const ParamMounts = "banger.mounts"

// Mount is one shared folder the init mounts.
type Mount struct {
	Tag      string
	Path     string
	ReadOnly bool
}

// MountsParam renders mounts as the ParamMounts argument.
func MountsParam(ms []Mount) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		parts[i] = m.Tag + ":" + m.Path + ":" + mode
	}
	return ParamMounts + "=" + strings.Join(parts, ",")
}

// parseMounts reads a ParamMounts value.
func parseMounts(v string) ([]Mount, error) {
	var out []Mount
	for _, part := range strings.Split(v, ",") {
		f := strings.Split(part, ":")
		if len(f) != 3 || !isMountTag(f[0]) || (f[2] != "ro" && f[2] != "rw") {
			return nil, errdefs.InvalidArgument(ParamMounts, v, "must be comma separated TAG:PATH:ro|rw")
		}
		if err := model.ValidateWorkspacePath(ParamMounts, f[1]); err != nil {
			return nil, err
		}
		out = append(out, Mount{Tag: f[0], Path: f[1], ReadOnly: f[2] == "ro"})
	}
	return out, nil
}

// isMountTag is ^bgr[0-9]{1,2}$ (no regexp in the agent: see model/spell.go).
func isMountTag(s string) bool {
	d, ok := strings.CutPrefix(s, "bgr")
	return ok && model.IsDigits(d, 1, 2)
}
