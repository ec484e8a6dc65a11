package agentproto

import (
	"path"
	"strings"
)

// ListEntry is one entry of a list reply: a file system entry under the listed path, as
// lstat saw it. Nothing is followed: a symlink is listed with its target.
type ListEntry struct {
	Path  string `json:"p"`           // relative to the listed path, slash separated; "." is the path itself
	Mode  uint32 `json:"m"`           // st_mode: type and permission bits
	Size  int64  `json:"s"`           // bytes (regular files, symlinks)
	MTime int64  `json:"mt"`          // modification time, ns since the epoch
	CTime int64  `json:"ct"`          // status change time, ns: any write or chmod moves it
	Ino   uint64 `json:"i"`           // inode number: a replaced file is a new inode
	Link  string `json:"l,omitempty"` // symlink target
}

// ValidListPath reports whether p is "." or a clean relative slash path with no ".."
// element and no NUL.
func ValidListPath(p string) bool {
	if p == "." {
		return true
	}
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p && p != ".." &&
		!strings.HasPrefix(p, "../") && !strings.ContainsRune(p, 0)
}
