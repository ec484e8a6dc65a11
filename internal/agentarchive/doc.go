// Package agentarchive is the tar format of the agent's put and get copies, shared by
// both ends: WriteTar packs a file or tree, ExtractTar unpacks one confined to its
// destination (no "..", no absolute names, nothing through a symlink, only directories,
// regular files and symlinks) under a Policy saying how far the sender is trusted. The
// guest receiving a put trusts the host (zero Policy); the host receiving a get does not
// trust the guest (agentclient's hostPolicy).
package agentarchive
