package workspace

import "syscall"

// syscallNoFollow makes an open fail on a symlink: the walk saw a regular file, and a
// swap for a symlink meanwhile must not make the copy read elsewhere.
const syscallNoFollow = syscall.O_NOFOLLOW
