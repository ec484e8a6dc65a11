package ctl

import (
	"os"
	"path/filepath"

	"banger/internal/errdefs"
	"banger/internal/model"
)

// parseMounts reads --mount values (HOSTDIR:GUESTPATH[:ro|:rw]), resolving a relative
// HOSTDIR against the CLI's working directory and checking that it is a directory here,
// so a typo fails before anything is uploaded or created. The daemon checks again.
func parseMounts(specs []string) ([]model.Mount, error) {
	var out []model.Mount
	for _, v := range specs {
		m, err := model.ParseMount(v)
		if err != nil {
			return nil, err
		}
		if m.HostDir, err = filepath.Abs(m.HostDir); err != nil {
			return nil, errdefs.InvalidArgument(model.MountFlag, v, "resolving HOSTDIR: "+err.Error())
		}
		fi, err := os.Stat(m.HostDir)
		if err != nil {
			return nil, errdefs.InvalidArgument(model.MountFlag, v, "HOSTDIR "+m.HostDir+" is not accessible: "+errReason(err))
		}
		if !fi.IsDir() {
			return nil, errdefs.InvalidArgument(model.MountFlag, v, "HOSTDIR "+m.HostDir+" is not a directory")
		}
		out = append(out, m)
	}
	return out, nil
}

// errReason is an os error without the path it repeats.
func errReason(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}
