package workspace

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Upload sends the image at path on an accepted workspace.upload stream and reads
// bangerd's one-line verdict. The stream stays open: the upload lives while it does,
// until a create claims it. ctx ending mid-send returns ctx's error.
func Upload(ctx context.Context, stream io.ReadWriter, path string) error {
	sendErr := SendImage(ctx, stream, path)
	if sendErr != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	// A refusing daemon answers and stops reading, so a failed send still has its reason.
	line, err := bufio.NewReader(io.LimitReader(stream, 64<<10)).ReadString('\n')
	if err != nil && sendErr != nil {
		return fmt.Errorf("uploading the workspace: %w", sendErr)
	}
	if err != nil {
		return fmt.Errorf("uploading the workspace: no answer from bangerd: %w", err)
	}
	var reply struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(line), &reply); err != nil || !reply.OK {
		if reply.Error == "" {
			reply.Error = strings.TrimSpace(line)
		}
		return fmt.Errorf("uploading the workspace: bangerd refused it: %s", reply.Error)
	}
	return nil
}

// MakeImage packs tree (entries files, directories and other inodes) into a new sparse
// ext4 image of size bytes at out with `mkfs.ext4 -d`, which keeps what the tree holds:
// owners, modes, device nodes, FIFOs, hard links, extended attributes. out must not exist.
func MakeImage(ctx context.Context, tree, out string, size, entries int64) error {
	return mkfs(ctx, tree, out, size, entries)
}
